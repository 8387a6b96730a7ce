"""Bad input from registries (reliability.md §1b, §1c, §4 cases 9-14): each refused with a
clear error, bounded memory, nothing stored that was not verified, credentials never sent
off their host nor shown in errors."""

from __future__ import annotations

import base64
import os
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.transfer import oci, reference
from moorage.services.transfer.pull import PullOptions, pull
from moorage.services.transfer.registry.auth import CredentialStore, Credentials, check_realm, load_credentials_file
from moorage.services.transfer.registry.resolver import Resolver, ResolverOptions, verify_stream

from .fakeregistry import FakeRegistry, endless

SECRET = "hunter2-DO-NOT-LEAK"


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    f = FakeRegistry().start()
    try:
        yield f
    finally:
        f.stop()


def ok(body: bytes, ctype: str, extra: dict[str, str] | None = None) -> Any:
    return lambda h: (200, {"Content-Type": ctype, **(extra or {})}, body)


def manifest_doc(layers: list[oci.Descriptor], config: oci.Descriptor) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config.to_json(),
                       "layers": [d.to_json() for d in layers]}).encode()


def image_in(fake: FakeRegistry, layer: bytes, served_layer: bytes | None = None) -> tuple[str, oci.Descriptor]:
    """Serve a 1-layer image at /v2/bad/app; the layer endpoint serves `served_layer`."""
    import gzip
    import io
    import tarfile
    ld = oci.Descriptor(oci.OCI_LAYER_GZIP, oci.digest_of(layer), len(layer))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        ti = tarfile.TarInfo("f")
        t.addfile(ti)
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [oci.digest_of(gzip.decompress(layer)) if layer[:2] == b"\x1f\x8b" else oci.digest_of(layer)]}}).encode()
    cd = oci.Descriptor(oci.OCI_CONFIG, oci.digest_of(cfg), len(cfg))
    m = manifest_doc([ld], cd)
    fake.routes["/v2/bad/app/manifests/latest"] = ok(m, oci.OCI_MANIFEST)
    fake.routes[f"/v2/bad/app/blobs/{cd.digest}"] = ok(cfg, "application/octet-stream")
    fake.routes[f"/v2/bad/app/blobs/{ld.digest}"] = ok(served_layer if served_layer is not None else layer,
                                                       "application/octet-stream")
    return f"{fake.host}/bad/app:latest", ld


def resolver(ref: str, **kw: Any) -> Resolver:
    return Resolver(reference.parse(ref), ResolverOptions(**kw))


# ---- case 10: sizes -------------------------------------------------------------------------

async def test_oversized_manifest_content_length(fake: FakeRegistry) -> None:
    fake.routes["/v2/big/manifests/latest"] = lambda h: (200, {"Content-Type": oci.OCI_MANIFEST,
                                                               "Content-Length": str(1 << 30)}, b"")
    async with resolver(f"{fake.host}/big:latest") as res:
        with pytest.raises(errdefs.ResourceExhausted, match="limit"):
            await res.resolve()


async def test_endless_chunked_manifest_stopped_at_limit(fake: FakeRegistry) -> None:
    fake.routes["/v2/big/manifests/latest"] = lambda h: (200, {"Content-Type": oci.OCI_MANIFEST}, endless())
    async with resolver(f"{fake.host}/big:latest") as res:
        with pytest.raises(errdefs.ResourceExhausted, match="limit"):
            await res.resolve()
    assert fake.bytes_sent < oci.MAX_MANIFEST_SIZE + 64 * (1 << 20)  # stopped, not read to the end


async def test_huge_error_body_bounded(fake: FakeRegistry) -> None:
    fake.routes["/v2/err/manifests/latest"] = lambda h: (500, {"Content-Type": "application/json"}, endless())
    async with resolver(f"{fake.host}/err:latest") as res:
        with pytest.raises(errdefs.Unavailable, match="500"):
            await res.resolve()


async def test_huge_401_body_bounded(fake: FakeRegistry) -> None:
    fake.routes["/v2/err/manifests/latest"] = lambda h: (401, {"WWW-Authenticate": 'Basic realm="x"'}, endless())
    async with resolver(f"{fake.host}/err:latest") as res:
        with pytest.raises(errdefs.ResourceExhausted, match="limit"):
            await res.resolve()


async def test_huge_token_body_bounded(fake: FakeRegistry) -> None:
    fake.routes["/v2/tok/manifests/latest"] = lambda h: (
        401, {"WWW-Authenticate": f'Bearer realm="http://{fake.host}/token",service="s"'}, b"")
    fake.routes["/token"] = lambda h: (200, {"Content-Type": "application/json"}, endless(b'{"token":"' + b"a" * 65536))
    async with resolver(f"{fake.host}/tok:latest") as res:
        with pytest.raises(errdefs.ResourceExhausted, match="limit"):
            await res.resolve()


# ---- case 11: blobs that do not match their descriptor ---------------------------------------

@pytest.mark.parametrize("how", ["longer", "shorter", "altered"])
async def test_blob_mismatch_nothing_stored(how: str, fake: FakeRegistry, content: Any, images: Any) -> None:
    import gzip
    layer = gzip.compress(os.urandom(20000))
    served = {"longer": layer + b"extra", "shorter": layer[:-10],
              "altered": layer[:100] + bytes([layer[100] ^ 1]) + layer[101:]}[how]
    ref, ld = image_in(fake, layer, served)
    async with resolver(ref) as res:
        with pytest.raises((errdefs.DataLoss, errdefs.FailedPrecondition)):
            await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
    with pytest.raises(errdefs.NotFound):
        await content.info(ld.digest)
    assert await content.list_statuses() == []  # ingest aborted: a later pull refetches
    with pytest.raises(errdefs.NotFound):
        await images.get(ref)
    # the registry is fixed: the next pull succeeds and stores verified content
    fake.routes[f"/v2/bad/app/blobs/{ld.digest}"] = ok(layer, "application/octet-stream")
    async with resolver(ref) as res:
        img = await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
    assert (await content.info(ld.digest)).size == len(layer)
    assert img.name == ref


async def test_manifest_not_matching_pinned_digest(fake: FakeRegistry) -> None:
    body = manifest_doc([], oci.Descriptor(oci.OCI_CONFIG, "sha256:" + "1" * 64, 2))
    pinned = "sha256:" + "2" * 64
    fake.routes[f"/v2/pin/manifests/{pinned}"] = ok(body, oci.OCI_MANIFEST)
    async with resolver(f"{fake.host}/pin@{pinned}") as res:
        with pytest.raises(errdefs.DataLoss):
            await res.resolve()


async def test_docker_content_digest_mismatch(fake: FakeRegistry) -> None:
    body = manifest_doc([], oci.Descriptor(oci.OCI_CONFIG, "sha256:" + "1" * 64, 2))
    fake.routes["/v2/dcd/manifests/latest"] = ok(body, oci.OCI_MANIFEST, {"Docker-Content-Digest": "sha256:" + "3" * 64})
    async with resolver(f"{fake.host}/dcd:latest") as res:
        with pytest.raises(errdefs.DataLoss):
            await res.resolve()


# ---- case 12: ambiguous documents, media type mismatch, schema 1 -----------------------------

AMBIGUOUS = json.dumps({"schemaVersion": 2, "manifests": [],
                        "config": {"mediaType": oci.OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 2},
                        "layers": []}).encode()


@pytest.mark.parametrize("ctype", [oci.OCI_INDEX, oci.OCI_MANIFEST])
async def test_ambiguous_document_rejected(ctype: str, fake: FakeRegistry) -> None:
    fake.routes["/v2/amb/manifests/latest"] = ok(AMBIGUOUS, ctype)
    async with resolver(f"{fake.host}/amb:latest") as res:
        with pytest.raises(errdefs.InvalidArgument, match="ambiguous"):
            await res.resolve()


async def test_media_type_field_differs_from_content_type(fake: FakeRegistry) -> None:
    body = manifest_doc([], oci.Descriptor(oci.OCI_CONFIG, "sha256:" + "1" * 64, 2))
    fake.routes["/v2/mt/manifests/latest"] = ok(body, oci.DOCKER_MANIFEST)
    async with resolver(f"{fake.host}/mt:latest") as res:
        with pytest.raises(errdefs.InvalidArgument, match="does not match"):
            await res.resolve()


async def test_index_served_as_manifest_rejected(fake: FakeRegistry) -> None:
    body = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    fake.routes["/v2/mt/manifests/latest"] = ok(body, oci.OCI_MANIFEST)
    async with resolver(f"{fake.host}/mt:latest") as res:
        with pytest.raises(errdefs.InvalidArgument):
            await res.resolve()


async def test_schema1_refused(fake: FakeRegistry) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}).encode()
    fake.routes["/v2/s1/manifests/latest"] = ok(body, oci.DOCKER_SCHEMA1[1])
    async with resolver(f"{fake.host}/s1:latest") as res:
        with pytest.raises(errdefs.NotImplemented, match="schema 1"):
            await res.resolve()


@pytest.mark.parametrize("bad", ["sha256:../../tmp/pwn", "sha256:" + "a" * 63, "sha256:" + "A" * 64, "md5:" + "a" * 32])
async def test_bad_digest_in_manifest_refused_before_any_request(bad: str, fake: FakeRegistry,
                                                                  content: Any, images: Any) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                       "config": {"mediaType": oci.OCI_CONFIG, "digest": bad, "size": 2}, "layers": []}).encode()
    fake.routes["/v2/dg/manifests/latest"] = ok(body, oci.OCI_MANIFEST)
    async with resolver(f"{fake.host}/dg:latest") as res:
        with pytest.raises(errdefs.InvalidArgument, match="invalid digest"):
            await pull(res, reference.parse(f"{fake.host}/dg:latest"), content, images, PullOptions(platforms=None))
    assert [s.path for s in fake.seen] == ["/v2/dg/manifests/latest"]


def test_bad_references_refused() -> None:
    for bad in ["", "UPPER/case", "a/../b", "host/x@sha256:../x", "x:" + "t" * 200, "a b"]:
        with pytest.raises(errdefs.InvalidArgument):
            reference.parse(bad)
    assert str(reference.parse("busybox")) == "docker.io/library/busybox:latest"


@pytest.mark.parametrize("doc", [
    {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": None, "layers": None},
    {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": -1}, "layers": []},
    {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": {"mediaType": 1, "digest": "sha256:" + "1" * 64, "size": 1}, "layers": []},
    {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": 1}, "layers": [None]},
])
def test_malformed_documents_typed_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        oci.parse_document(json.dumps(doc).encode(), oci.OCI_MANIFEST)


# ---- case 13: credentials and realms -------------------------------------------------------

def test_realm_rules() -> None:
    with pytest.raises(errdefs.PermissionDenied, match="plain http"):
        check_realm("http://127.0.0.1:1/token", "https", "127.0.0.1:5000")
    with pytest.raises(errdefs.PermissionDenied, match="another host"):
        check_realm("http://evil.example/token", "http", "127.0.0.1:5000")
    with pytest.raises(errdefs.PermissionDenied):
        check_realm("file:///etc/passwd", "https", "127.0.0.1:5000")
    with pytest.raises(errdefs.PermissionDenied):
        check_realm(f"https://user:{SECRET}@127.0.0.1/t", "https", "127.0.0.1:5000")
    assert check_realm("https://127.0.0.1:9/token", "https", "127.0.0.1:5000")[1] is True
    assert check_realm("https://evil.example/token", "https", "127.0.0.1:5000")[1] is False
    assert check_realm("https://auth.docker.io/token", "https", "registry-1.docker.io")[1] is True


async def test_realm_on_other_host_gets_no_credentials(fake: FakeRegistry) -> None:
    """Realm `localhost:<port>` for a registry at 127.0.0.1: another host name; the token
    request goes out anonymous and the credentials are never sent."""
    token_srv = FakeRegistry().start()
    try:
        token_srv.routes["/token"] = lambda h: (200, {"Content-Type": "application/json"}, b'{"token":"anon"}')
        fake.routes["/v2/r/manifests/latest"] = lambda h: (
            401, {"WWW-Authenticate": f'Bearer realm="http://{fake.host}/token",service="s"'}, b"") \
            if h.headers.get("Authorization") != "Bearer anon" else (404, {}, b"")
        # http realm on another host: refused outright
        fake.routes["/v2/r2/manifests/latest"] = lambda h: (
            401, {"WWW-Authenticate": f'Bearer realm="http://localhost:{token_srv.port}/token"'}, b"")

        async def cb(host: str, ref: str, ch: str) -> Credentials:
            return Credentials("moor", SECRET)
        async with resolver(f"{fake.host}/r2:latest", credentials=CredentialStore(cb)) as res:
            with pytest.raises(errdefs.PermissionDenied, match="another host") as ei:
                await res.resolve()
        assert SECRET not in str(ei.value)
        assert token_srv.seen == []
    finally:
        token_srv.stop()


async def test_mirror_never_sees_upstream_credentials(fake: FakeRegistry, tmp_path: Path) -> None:
    upstream = FakeRegistry().start()
    try:
        for f in (fake, upstream):
            f.routes["/v2/m/manifests/latest"] = lambda h: (401, {"WWW-Authenticate": 'Basic realm="r"'}, b"")
        credfile = tmp_path / "config.json"
        credfile.write_text(json.dumps({"auths": {upstream.host: {"username": "moor", "password": SECRET}}}))
        d = tmp_path / "certs.d" / upstream.host
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text(f'server = "http://{upstream.host}"\n[host."http://{fake.host}"]\n')
        async with resolver(f"{upstream.host}/m:latest", hosts_dir=str(tmp_path / "certs.d"),
                            credentials=CredentialStore(None, load_credentials_file(credfile))) as res:
            with pytest.raises(errdefs.Unauthenticated) as ei:
                await res.resolve()
        assert SECRET not in str(ei.value)
        assert all("authorization" not in s.headers for s in fake.seen)  # the mirror got nothing
        assert any(s.headers.get("authorization", "").startswith("Basic ") for s in upstream.seen)
        assert all("ns=" in s.path for s in fake.seen)
    finally:
        upstream.stop()


async def test_redirect_to_other_host_drops_authorization(fake: FakeRegistry) -> None:
    other = FakeRegistry().start()
    try:
        blob = b"blob-bytes"
        d = oci.digest_of(blob)
        other.routes[f"/storage/{d}"] = ok(blob, "application/octet-stream")
        want = "Basic " + base64.b64encode(f"moor:{SECRET}".encode()).decode()

        def blob_route(h: Any) -> Any:
            if h.headers.get("Authorization") != want:
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return 307, {"Location": f"http://localhost:{other.port}/storage/{d}"}, b""
        fake.routes[f"/v2/rd/blobs/{d}"] = blob_route

        async def cb(host: str, ref: str, ch: str) -> Credentials | None:
            return Credentials("moor", SECRET) if host == fake.host else None
        async with resolver(f"{fake.host}/rd:latest", credentials=CredentialStore(cb)) as res:
            desc = oci.Descriptor("application/octet-stream", d, len(blob))
            async with res.open_blob(desc) as it:
                assert b"".join([c async for c in verify_stream(it, desc)]) == blob
        assert other.seen and all("authorization" not in s.headers for s in other.seen)
    finally:
        other.stop()


# ---- case 14: Range ignored or wrong --------------------------------------------------------

async def test_registry_ignoring_range(fake: FakeRegistry) -> None:
    blob = bytes(range(256)) * 100
    d = oci.digest_of(blob)
    fake.routes[f"/v2/rg/blobs/{d}"] = ok(blob, "application/octet-stream")  # ignores Range: 200 + all
    desc = oci.Descriptor("application/octet-stream", d, len(blob))
    async with resolver(f"{fake.host}/rg:latest") as res:
        async with res.open_blob(desc, 5000) as it:
            assert b"".join([c async for c in it]) == blob[5000:]
    assert fake.seen[-1].headers.get("range") == "bytes=5000-"


async def test_wrong_content_range_refused(fake: FakeRegistry) -> None:
    blob = bytes(range(256)) * 100
    d = oci.digest_of(blob)
    fake.routes[f"/v2/rg/blobs/{d}"] = lambda h: (206, {"Content-Range": f"bytes 0-{len(blob) - 1}/{len(blob)}"}, blob)
    desc = oci.Descriptor("application/octet-stream", d, len(blob))
    async with resolver(f"{fake.host}/rg:latest") as res:
        with pytest.raises(errdefs.Unavailable, match="Content-Range"):
            async with res.open_blob(desc, 5000) as it:
                [c async for c in it]


async def test_resumed_pull_with_range_ignored(fake: FakeRegistry, content: Any, images: Any) -> None:
    """A partial ingest exists; the registry ignores Range; the pull completes and the
    digest is right (prefix discarded)."""
    import gzip
    layer = gzip.compress(bytes(range(256)) * 4000)
    ref, ld = image_in(fake, layer)
    w = await content.writer(f"layer-{ld.digest}", ld.size, ld.digest)
    await w.write(layer[:3000])
    await w.close()
    async with resolver(ref) as res:
        await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
    assert (await content.info(ld.digest)).size == len(layer)
    rng = [s.headers.get("range") for s in fake.seen if s.path.endswith(ld.digest)]
    assert rng == ["bytes=3000-"]


async def test_layers_download_three_at_a_time(fake: FakeRegistry, content: Any, images: Any) -> None:
    import gzip
    import threading
    layers = [gzip.compress(os.urandom(1000)) for _ in range(6)]
    descs = [oci.Descriptor(oci.OCI_LAYER_GZIP, oci.digest_of(d), len(d)) for d in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        oci.digest_of(gzip.decompress(d)) for d in layers]}}).encode()
    cd = oci.Descriptor(oci.OCI_CONFIG, oci.digest_of(cfg), len(cfg))
    fake.routes["/v2/c/manifests/latest"] = ok(manifest_doc(descs, cd), oci.OCI_MANIFEST)
    fake.routes[f"/v2/c/blobs/{cd.digest}"] = ok(cfg, "application/octet-stream")
    cond = threading.Condition()
    state = {"inflight": 0, "max": 0, "released": False}

    def slow(data: bytes) -> Any:
        def route(h: Any) -> Any:
            with cond:
                state["inflight"] += 1
                state["max"] = max(state["max"], state["inflight"])
                if state["inflight"] >= 3:
                    state["released"] = True
                cond.notify_all()
                cond.wait_for(lambda: state["released"], timeout=5)
                state["inflight"] -= 1
            return 200, {"Content-Type": "application/octet-stream"}, data
        return route
    for d, data in zip(descs, layers):
        fake.routes[f"/v2/c/blobs/{d.digest}"] = slow(data)
    ref = f"{fake.host}/c:latest"
    async with resolver(ref) as res:
        await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
    assert state["max"] == 3
    for d in descs:
        assert (await content.info(d.digest)).size == d.size


async def test_interrupted_download_resumes_with_range(fake: FakeRegistry, content: Any, images: Any) -> None:
    import gzip
    layer = gzip.compress(os.urandom(300_000))
    ref, ld = image_in(fake, layer)
    cut = 100_000
    ranges: list[str | None] = []

    def route(h: Any) -> Any:
        rng = h.headers.get("Range")
        ranges.append(rng)
        if rng is None:  # first attempt: the connection drops after `cut` bytes
            return 200, {"Content-Length": str(len(layer)), "Connection": "close"}, iter([layer[:cut]])
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        return 206, {"Content-Range": f"bytes {start}-{len(layer) - 1}/{len(layer)}"}, layer[start:]
    fake.routes[f"/v2/bad/app/blobs/{ld.digest}"] = route
    async with resolver(ref) as res:
        with pytest.raises(errdefs.Unavailable):
            await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
    statuses = await content.list_statuses()
    assert [s.offset for s in statuses] == [cut]  # the partial ingest is kept
    async with resolver(ref) as res:
        await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
    assert ranges == [None, f"bytes={cut}-"]
    assert (await content.info(ld.digest)).size == len(layer)


async def test_registry_echoing_credentials_in_errors_is_redacted(fake: FakeRegistry) -> None:
    want = "Basic " + base64.b64encode(f"moor:{SECRET}".encode()).decode()

    def route(h: Any) -> Any:
        if h.headers.get("Authorization") != want:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        echo = json.dumps({"errors": [{"code": "DENIED", "message": f"you sent {want} and {SECRET}"}]}).encode()
        return 403, {"Content-Type": "application/json"}, echo
    fake.routes["/v2/echo/manifests/latest"] = route

    async def cb(host: str, ref: str, ch: str) -> Credentials:
        return Credentials("moor", SECRET)
    async with resolver(f"{fake.host}/echo:latest", credentials=CredentialStore(cb)) as res:
        with pytest.raises(errdefs.PermissionDenied) as ei:
            await res.resolve()
    text = str(ei.value)
    assert "DENIED" in text and SECRET not in text and want.split()[1] not in text


async def test_foreign_layer_urls_never_followed(fake: FakeRegistry, content: Any, images: Any) -> None:
    """A layer descriptor with `urls` on another host: foreign URLs are off, the other host is
    never contacted (CVE-2020-15157); the blob comes from the registry or not at all."""
    import gzip
    evil = FakeRegistry().start()
    try:
        evil.routes["/layer"] = lambda h: (401, {"WWW-Authenticate": 'Bearer realm="http://evil/token"'}, b"")
        layer = gzip.compress(os.urandom(1000))
        ref, ld = image_in(fake, layer)
        foreign = oci.Descriptor(oci.DOCKER_FOREIGN_LAYER, ld.digest, ld.size, urls=(f"http://{evil.host}/layer",))
        cfg_route = fake.routes["/v2/bad/app/manifests/latest"]
        doc = json.loads(cfg_route(None)[2])
        doc["layers"] = [foreign.to_json()]
        fake.routes["/v2/bad/app/manifests/latest"] = ok(json.dumps(doc).encode(), oci.OCI_MANIFEST)
        del fake.routes[f"/v2/bad/app/blobs/{ld.digest}"]

        async def cb(host: str, r: str, ch: str) -> Credentials:
            return Credentials("moor", SECRET)
        async with resolver(ref, credentials=CredentialStore(cb)) as res:
            with pytest.raises(errdefs.NotFound):
                await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
        assert evil.seen == []
    finally:
        evil.stop()
