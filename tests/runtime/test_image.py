"""Image resolution for `moor run`: reference normalisation (as transfer stores names) and
untrusted documents (bounded, digest-checked, typed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.errdefs import InvalidArgument, NotFound
from moorage.services.runtime import image


@pytest.mark.parametrize("ref", ["busybox", "busybox:1.36", "library/busybox", "docker.io/busybox",
                                 "ghcr.io/x/y:v1", "localhost:5000/a/b", "localhost/a",
                                 "registry:5000/x", "quay.io/a/b/c:t"])
def test_normalize_matches_transfer(ref: str) -> None:
    from moorage.services.transfer.reference import parse

    assert image.normalize(ref) == str(parse(ref))


def d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeClient:
    """images.v1 Get and content.v1 Read over a dict of blobs. Like the blocking client it
    only serializes requests and parses responses (resolve sends moorage.cli.wire messages):
    the bytes are checked against containerd's generated messages."""

    def __init__(self, blobs: dict[str, bytes], target: str, media_type: str) -> None:
        self.blobs = blobs
        self.target = target
        self.media_type = media_type

    def unary(self, svc: str, method: str, req: Any, resp: Any, **kw: Any) -> Any:
        from moorage.api.containerd.services.images.v1 import images_pb2 as ipb

        assert (svc, method) == (image.IMAGES, "Get")
        name = ipb.GetImageRequest.FromString(req.SerializeToString()).name
        if name != "docker.io/library/busybox:latest":
            raise NotFound("image not found")
        r = ipb.GetImageResponse()
        r.image.name = name
        r.image.labels["k"] = "v"
        r.image.target.digest = self.target
        r.image.target.media_type = self.media_type
        return resp.FromString(r.SerializeToString())

    def server_stream(self, svc: str, method: str, req: Any, resp: Any, **kw: Any) -> Iterator[Any]:
        from moorage.api.containerd.services.content.v1 import content_pb2 as cpb

        assert (svc, method) == (image.CONTENT, "Read")
        data = self.blobs[cpb.ReadContentRequest.FromString(req.SerializeToString()).digest]
        for i in range(0, len(data), 3):
            r = cpb.ReadContentResponse(offset=i, data=data[i:i + 3])
            yield resp.FromString(r.SerializeToString())


def make(config: dict[str, Any], tamper: bool = False) -> FakeClient:
    cfg = json.dumps(config).encode()
    man = json.dumps({"schemaVersion": 2, "config": {"digest": d(cfg), "mediaType": "x"},
                      "layers": []}).encode()
    idx = json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": d(b"other"), "platform": {"os": "linux", "architecture": "s390x"}},
        {"digest": d(man), "platform": {"os": "linux", "architecture": image.host_arch()}}]}).encode()
    blobs = {d(cfg): cfg + (b" " if tamper else b""), d(man): man, d(idx): idx}
    return FakeClient(blobs, d(idx), image.INDEX_TYPES[0])


DIFF = "sha256:" + "a" * 64


def test_resolve_through_index() -> None:
    c = make({"config": {"Cmd": ["sh"]}, "rootfs": {"diff_ids": [DIFF, "sha256:" + "b" * 64]}})
    r = image.resolve(c, {}, "busybox", None)
    assert r.config.cmd == ("sh",)
    assert r.labels == {"k": "v"}
    expect = "sha256:" + hashlib.sha256(f"{DIFF} sha256:{'b' * 64}".encode()).hexdigest()
    assert r.chain_id == expect


def test_missing_image_says_pull() -> None:
    c = make({"rootfs": {"diff_ids": [DIFF]}})
    with pytest.raises(NotFound, match="pull"):
        image.resolve(c, {}, "nosuch", None)


def test_tampered_blob_rejected() -> None:
    c = make({"rootfs": {"diff_ids": [DIFF]}}, tamper=True)
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        image.resolve(c, {}, "busybox", None)


@pytest.mark.parametrize("ids", [[], ["sha256:../../x"], ["md5:abc"], "notalist"])
def test_bad_diff_ids(ids: Any) -> None:
    with pytest.raises(InvalidArgument):
        image.resolve(make({"rootfs": {"diff_ids": ids}}), {}, "busybox", None)


def test_cache_saves_the_reads_and_is_checked(tmp_path: Path) -> None:
    c = make({"config": {"Cmd": ["sh"]}, "rootfs": {"diff_ids": [DIFF]}})
    reads: list[str] = []
    stream = c.server_stream

    def counting(svc: str, method: str, req: Any, resp: Any, **kw: Any) -> Iterator[Any]:
        reads.append(method)
        return stream(svc, method, req, resp, **kw)

    c.server_stream = counting  # type: ignore[method-assign]
    cache = tmp_path / "cache"
    first = image.resolve(c, {}, "busybox", None, cache=str(cache))
    assert len(reads) == 3 and oct(cache.stat().st_mode & 0o777) == "0o700"
    assert image.resolve(c, {}, "busybox", None, cache=str(cache)) == first
    assert len(reads) == 3  # index, manifest and config came from the cache
    kept = sorted(cache.iterdir())
    kept[0].write_bytes(b"tampered")
    assert image.resolve(c, {}, "busybox", None, cache=str(cache)) == first
    assert len(reads) == 4  # the changed copy was read again, and kept again
    assert all(d(p.read_bytes()) == "sha256:" + p.name for p in kept)
