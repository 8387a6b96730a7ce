"""Diff.Apply and Diff.Diff over the snapshotters and the content store (reliability §4 18).

The unpack flow as a client runs it: prepare on the parent, apply the layer from content,
commit; on any failure remove the active snapshot. Runs locally and over a real socket
(Snapshots + Diff served by one ttrpc server, content local to the test).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from moorage import errdefs
from moorage.services.snapshots.contract import LABEL_UNCOMPRESSED, MEDIA_TYPE_LAYER_GZIP, Descriptor
from moorage.services.snapshots.differ import LocalDiffer
from moorage.services.snapshots.layerstream import Limits
from moorage.services.snapshots.store import LocalSnapshotters

from .conftest import using
from .tarbuild import E, digest, gz, snapshot_tree, tar
from .test_conformance import mounted, tree

pytestmark = pytest.mark.root


class Env:
    def __init__(self, content: Any, sns: Any, differ: Any, root: Path) -> None:
        self.content, self.sns, self.differ, self.root = content, sns, differ, root

    async def put(self, data: bytes, media_type: str = MEDIA_TYPE_LAYER_GZIP, **ann: str) -> Descriptor:
        d = digest(data)
        try:
            w = await self.content.writer(f"ref-{d}", len(data), d)
        except errdefs.AlreadyExists:
            return Descriptor(media_type, d, len(data), ann)
        try:
            await w.write(data)
            with contextlib.suppress(errdefs.AlreadyExists):
                await w.commit(len(data), d)
        finally:
            await w.close()
        return Descriptor(media_type, d, len(data), ann)

    async def unpack(self, sn: str, key: str, parent: str, desc: Descriptor) -> Descriptor:
        s = self.sns.get(sn)
        mounts = await s.prepare(key + "-extract", parent)
        try:
            applied = await self.differ.apply(desc, mounts)
        except BaseException:
            await s.remove(key + "-extract")
            raise
        await s.commit(key, key + "-extract")
        return applied  # type: ignore[no-any-return]


async def _local(tmp: Path) -> AsyncIterator[Env]:
    from moorage.services.content.store import LocalStore

    content = LocalStore(str(tmp / "content"))
    sns = LocalSnapshotters(str(tmp / "snapshots"))
    try:
        yield Env(content, sns, LocalDiffer(content, Limits(max_ratio=50, ratio_floor=4 << 20)), tmp / "snapshots")
    finally:
        sns.close()
        content.close()


async def _socket(tmp: Path) -> AsyncIterator[Env]:
    from ttrpc.server import Server

    from moorage.events import NullPublisher
    from moorage.rpc import connect, status_of
    from moorage.services.content.store import LocalStore
    from moorage.services.snapshots.api import DiffService, SnapshotsService
    from moorage.services.snapshots.client import RemoteDiffer, RemoteSnapshotters

    content = LocalStore(str(tmp / "content"))
    sns = LocalSnapshotters(str(tmp / "snapshots"))
    publisher = NullPublisher()
    server = Server(status_of=status_of)
    server.register(SnapshotsService(sns, publisher))
    server.register(DiffService(LocalDiffer(content, Limits(max_ratio=50, ratio_floor=4 << 20))))
    sockdir = tempfile.mkdtemp(prefix="moor-d-")
    sock = os.path.join(sockdir, "s.sock")
    with using(None):
        await server.listen_unix(sock)
    client = await connect(sock)
    try:
        env = Env(content, RemoteSnapshotters(client), RemoteDiffer(client), tmp / "snapshots")
        env.publisher = publisher  # type: ignore[attr-defined]
        yield env
    finally:
        await client.close()
        await server.shutdown(1.0)
        sns.close()
        content.close()
        with contextlib.suppress(OSError):
            os.unlink(sock)
        os.rmdir(sockdir)


async def _proxy(tmp: Path) -> AsyncIterator[Env]:
    from tests.suite import running

    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient
    from moorage.services.snapshots.client import RemoteDiffer, RemoteSnapshotters

    async with running(["content", "snapshots"], config={"snapshots": {"limits": {"max_ratio": 50, "ratio_floor": 4 << 20}}}) as s:
        client = await connect(s.address)
        try:
            yield Env(ContentClient(client), RemoteSnapshotters(client), RemoteDiffer(client), s.root / "snapshots")
        finally:
            await client.close()


@pytest.fixture(params=["local", "socket", "proxy"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    gen = {"local": _local, "socket": _socket, "proxy": _proxy}[request.param](tmp_path)
    value = await gen.__anext__()
    try:
        yield value
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await gen.__anext__()


def snapshot_dirs(env: Env, sn: str) -> list[str]:
    return sorted(os.listdir(env.root / sn / "snapshots"))


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
async def test_unpack_layers(env: Env, sn: str) -> None:
    l1 = tar([E("etc/", "5", mode=0o755), E("etc/a", data=b"1"), E("etc/b", data=b"2"), E("d/x", data=b"x")])
    l2 = tar([E("etc/.wh.a"), E("etc/c", data=b"3"), E("d/", "5", mode=0o700), E("d/.wh..wh..opq"), E("d/y", data=b"y")])
    c2 = zstandard.ZstdCompressor().compress(l2)
    a1 = await env.unpack(sn, "L1", "", await env.put(gz(l1)))
    a2 = await env.unpack(sn, "L2", "L1", await env.put(c2, "application/vnd.oci.image.layer.v1.tar+zstd"))
    assert (a1.digest, a1.size, a2.digest) == (digest(l1), len(l1), digest(l2))
    view = await env.sns.get(sn).view("v", "L2")
    assert tree(view) == {"etc/b": b"2", "etc/c": b"3", "d/y": b"y"}
    with mounted(view) as r:
        assert stat.S_IMODE(os.stat(os.path.join(r, "d")).st_mode) == 0o700


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
async def test_wrong_diff_id_fails_and_partial_snapshot_is_removed(env: Env, sn: str) -> None:
    await env.unpack(sn, "base", "", await env.put(gz(tar([E("a", data=b"1")]))))
    before = snapshot_dirs(env, sn)
    layer = gz(tar([E("b", data=b"2")]))
    desc = await env.put(layer, **{LABEL_UNCOMPRESSED: "sha256:" + "0" * 64})
    with pytest.raises(errdefs.FailedPrecondition, match="diff id"):
        await env.unpack(sn, "child", "base", desc)
    assert snapshot_dirs(env, sn) == before
    assert [i.name async for i in env.sns.get(sn).walk()] == ["base"]
    good = await env.put(layer, **{LABEL_UNCOMPRESSED: digest(tar([E("b", data=b"2")]))})
    await env.unpack(sn, "child", "base", good)


@pytest.mark.parametrize(
    "layer,kind",
    [
        (b"\x1f\x8b" + os.urandom(2000), errdefs.InvalidArgument),
        (os.urandom(3000), errdefs.InvalidArgument),
        (gz(tar([E("f", data=os.urandom(9000))]))[:-300], errdefs.InvalidArgument),
        (gz(b"\0" * (64 << 20)), errdefs.ResourceExhausted),
        (gz(tar([E("../../../../../../tmp/moorage-escape", data=b"x"), E(".wh..")])), errdefs.InvalidArgument),
    ],
    ids=["bad-gzip", "non-tar", "truncated", "bomb", "escape+bad-whiteout"],
)
async def test_bad_layers_leave_service_healthy(env: Env, tmp_path: Path, layer: bytes, kind: type) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "f").write_bytes(b"c")
    before = snapshot_tree(str(canary))
    await env.unpack("overlayfs", "base", "", await env.put(gz(tar([E("a", data=b"1")]))))
    dirs = snapshot_dirs(env, "overlayfs")
    with pytest.raises(kind):
        await env.unpack("overlayfs", "bad", "base", await env.put(layer))
    assert snapshot_dirs(env, "overlayfs") == dirs
    assert not os.path.exists("/tmp/moorage-escape")
    assert snapshot_tree(str(canary)) == before
    await env.unpack("overlayfs", "after", "base", await env.put(gz(tar([E("ok", data=b"ok")]))))
    assert tree(await env.sns.get("overlayfs").view("v", "after")) == {"a": b"1", "ok": b"ok"}


async def test_unsupported_media_type_and_missing_blob(env: Env) -> None:
    mounts = await env.sns.get("overlayfs").prepare("x")
    with pytest.raises(errdefs.NotImplemented):
        await env.differ.apply(Descriptor("application/json", "sha256:" + "1" * 64, 1), mounts)
    with pytest.raises(errdefs.NotFound):
        await env.differ.apply(Descriptor(MEDIA_TYPE_LAYER_GZIP, "sha256:" + "1" * 64, 1), mounts)


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
async def test_diff_roundtrip(env: Env, sn: str) -> None:
    s = env.sns.get(sn)
    await env.unpack(sn, "p", "", await env.put(gz(tar([E("keep", data=b"k"), E("gone", data=b"g"), E("dir/x", data=b"x"), E("chg", data=b"old")]))))
    mounts = await s.prepare("work", "p")
    with mounted(mounts) as r:
        os.unlink(os.path.join(r, "gone"))
        with open(os.path.join(r, "chg"), "wb") as f:
            f.write(b"new!")
        os.makedirs(os.path.join(r, "dir", "new"))
        with open(os.path.join(r, "dir", "new", "file"), "wb") as f:
            f.write(b"nf")
        os.symlink("keep", os.path.join(r, "ln"))
    lower = await s.view("p-view", "p")
    desc = await env.differ.diff(lower, mounts, "", "", {"x": "y"})
    assert desc.media_type == MEDIA_TYPE_LAYER_GZIP and desc.digest.startswith("sha256:")
    info = await env.content.info(desc.digest)
    assert info.labels["x"] == "y" and info.labels[LABEL_UNCOMPRESSED].startswith("sha256:")
    applied = await env.unpack(sn, "re", "p", desc)
    assert applied.digest == info.labels[LABEL_UNCOMPRESSED]
    again = await s.view("re-view", "re")
    assert tree(again) == {"keep": b"k", "ln": b"k", "chg": b"new!", "dir/x": b"x", "dir/new/file": b"nf"}
    with mounted(again) as r:
        assert os.readlink(os.path.join(r, "ln")) == "keep"


@pytest.mark.parametrize("env", ["socket"], indirect=True)  # the API layer publishes, with a recording publisher
async def test_events_published(env: Env) -> None:
    publisher = getattr(env, "publisher", None)
    assert publisher is not None
    s = env.sns.get("overlayfs")
    await s.prepare("e1")
    await s.commit("e2", "e1")
    await s.remove("e2")
    topics = [(ns, t) for ns, t, _ in publisher.published]
    assert topics == [("snaptest", "/snapshot/prepare"), ("snaptest", "/snapshot/commit"), ("snaptest", "/snapshot/remove")]
