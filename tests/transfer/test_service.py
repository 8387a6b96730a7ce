"""The transfer process end to end, through the proxy of a real suite (proxy, content,
snapshots, transfer): pulls with unpack from real registries (plain; token auth over the
auth stream), push read back by skopeo, export/import over data streams, tag, images API."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.namespaces import current_namespace

from . import registry as regfix
from .conftest import hosts_dir_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def suite_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moorage-t-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def e2e(suite_dir: Path) -> Iterator[Any]:
    suite = pytest.importorskip("suite")
    pytest.importorskip("moorage.services.snapshots.process")
    s = suite.Suite(suite_dir, config={"transfer": {"hosts_dir": str(suite_dir / "certs.d")}})
    try:
        for name in ("proxy", "content", "snapshots", "transfer"):
            s.start(name)
        yield s
    finally:
        s.close()


@pytest.fixture
async def conn(e2e: Any) -> AsyncIterator[Any]:
    from moorage.rpc import connect
    c = await connect(e2e.address)
    try:
        yield c
    finally:
        await c.close()


def _pb() -> Any:
    from moorage.api.containerd.types import platform_pb2
    from moorage.api.containerd.types.transfer import imagestore_pb2, importexport_pb2, registry_pb2
    return registry_pb2, imagestore_pb2, importexport_pb2, platform_pb2


async def test_pull_unpack_push_export_import(e2e: Any, conn: Any, plain_registry: regfix.Registry,
                                              layout: Path, suite_dir: Path) -> None:
    from moorage.services.content.client import ContentClient
    from moorage.services.snapshots.client import RemoteSnapshotter
    from moorage.services.transfer import oci
    from moorage.services.transfer.client import ImagesClient, TransferClient

    registry_pb2, imagestore_pb2, importexport_pb2, platform_pb2 = _pb()
    ref = regfix.push(layout, plain_registry, "e2e/app")
    events: list[Any] = []
    src = registry_pb2.OCIRegistry(reference=ref)
    dst = imagestore_pb2.ImageStore(name=ref, unpacks=[imagestore_pb2.UnpackConfiguration(
        platform=platform_pb2.Platform(os="linux", architecture="amd64"), snapshotter="overlayfs")])
    await TransferClient(conn).transfer(src, dst, progress=events.append)
    kinds = {e.event for e in events}
    assert f"Resolving from {ref}" in kinds and f"Completed pull from {ref}" in kinds and "complete" in kinds
    images = ImagesClient(conn)
    img = await images.get(ref)
    content = ContentClient(conn)
    minfo = await content.info(img.target.digest)
    cfg_digest = minfo.labels["containerd.io/gc.ref.content.config"]
    cinfo = await content.info(cfg_digest)
    top = cinfo.labels["containerd.io/gc.ref.snapshot.overlayfs"]
    sn = RemoteSnapshotter(conn, "overlayfs")
    assert (await sn.stat(top)).name == top
    layer0 = minfo.labels["containerd.io/gc.ref.content.l.0"]
    assert (await content.info(layer0)).labels["containerd.io/uncompressed"].startswith("sha256:")

    # pull again: everything already there
    events.clear()
    await TransferClient(conn).transfer(registry_pb2.OCIRegistry(reference=ref), imagestore_pb2.ImageStore(name=ref))
    await TransferClient(conn).transfer(imagestore_pb2.ImageStore(name=ref),
                                        imagestore_pb2.ImageStore(name="example.com/tagged/app:v1"))
    assert (await images.get("example.com/tagged/app:v1")).target == img.target

    dst_ref = f"{plain_registry.host}/e2e/pushed:v9"
    await TransferClient(conn).transfer(imagestore_pb2.ImageStore(name=ref), registry_pb2.OCIRegistry(reference=dst_ref))
    assert regfix.skopeo_inspect(dst_ref, plain_registry)["Digest"] == img.target.digest

    out = suite_dir / "export.tar"
    with open(out, "wb") as f:
        await TransferClient(conn).transfer(imagestore_pb2.ImageStore(name=ref),
                                            importexport_pb2.ImageExportStream(), sink=f.write)
    insp = subprocess.run(["skopeo", "inspect", f"oci-archive:{out}:latest"], check=True, capture_output=True, text=True)
    assert img.target.digest in insp.stdout

    token = current_namespace.set("e2e-import")
    try:
        async def data() -> AsyncIterator[bytes]:
            with open(out, "rb") as f:
                while chunk := f.read(100_000):
                    yield chunk
        await TransferClient(conn).transfer(importexport_pb2.ImageImportStream(), imagestore_pb2.ImageStore(),
                                            data=data())
        assert [i.name for i in await images.list()] == [ref]
        assert (await images.get(ref)).target.digest == img.target.digest
    finally:
        current_namespace.reset(token)


async def test_token_auth_over_auth_stream(e2e: Any, conn: Any, token_registry: regfix.Registry, layout: Path,
                                           suite_dir: Path) -> None:
    from moorage.services.transfer.client import ImagesClient, TransferClient
    registry_pb2, imagestore_pb2, _, _ = _pb()
    ref = regfix.push(layout, token_registry, "e2e/private")
    hosts = hosts_dir_for(token_registry, suite_dir / "tok")
    asked: list[str] = []

    async def auth(host: str, reference: str, challenges: Any) -> Any:
        asked.append(host)
        return registry_pb2.AuthResponse(authType=registry_pb2.CREDENTIALS, username=regfix.USER, secret=regfix.PASSWORD)
    src = registry_pb2.OCIRegistry(reference=ref, resolver=registry_pb2.RegistryResolver(host_dir=hosts))
    await TransferClient(conn).transfer(src, imagestore_pb2.ImageStore(name=ref), auth=auth)
    assert asked == [token_registry.host]
    assert (await ImagesClient(conn).get(ref)).name == ref

    async def bad(host: str, reference: str, challenges: Any) -> Any:
        return registry_pb2.AuthResponse(authType=registry_pb2.CREDENTIALS, username="moor", secret="wrong-SECRET-42")
    src = registry_pb2.OCIRegistry(reference=ref, resolver=registry_pb2.RegistryResolver(host_dir=hosts))
    with pytest.raises(errdefs.Unauthenticated) as ei:
        await TransferClient(conn).transfer(src, imagestore_pb2.ImageStore(name=ref + "x"), auth=bad)
    assert "wrong-SECRET-42" not in str(ei.value)


async def test_unsupported_pair_and_images_api(e2e: Any, conn: Any) -> None:
    from moorage.services.transfer import oci
    from moorage.services.transfer.client import ImagesClient, TransferClient
    from moorage.services.transfer.contract import Image
    registry_pb2, imagestore_pb2, _, _ = _pb()
    with pytest.raises(errdefs.NotImplemented):
        await TransferClient(conn).transfer(registry_pb2.OCIRegistry(reference="a/b"),
                                            registry_pb2.OCIRegistry(reference="c/d"))
    images = ImagesClient(conn)
    d = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "7" * 64, 7)
    await images.create(Image("api/x:1", d, {"a": "b"}))
    with pytest.raises(errdefs.AlreadyExists):
        await images.create(Image("api/x:1", d))
    assert [i.name for i in await images.list(["labels.a==b"])] == ["api/x:1"]
    await images.update(Image("api/x:1", d, {"c": "d"}), ["labels.c"])
    assert (await images.get("api/x:1")).labels == {"a": "b", "c": "d"}
    await images.delete("api/x:1")
    with pytest.raises(errdefs.NotFound):
        await images.get("api/x:1")


def test_cli_pull_images_tag_export_import_rmi(e2e: Any, basic_registry: regfix.Registry, layout: Path,
                                               suite_dir: Path) -> None:
    ref = regfix.push(layout, basic_registry, "cli/app")
    hosts = hosts_dir_for(basic_registry, suite_dir / "cli")
    ns = ["--namespace", "cli"]
    r = e2e.moor(*ns, "pull", "--hosts-dir", hosts, ref)
    assert r.returncode != 0  # no credentials: refused
    assert "401" in r.stderr or "unauthorized" in r.stderr.lower() or "Unauthenticated" in r.stderr
    r = e2e.moor(*ns, "pull", "--hosts-dir", hosts, "--user", f"{regfix.USER}:{regfix.PASSWORD}", ref)
    assert r.returncode == 0, r.stderr
    assert "layer-sha256:" in r.stderr and regfix.PASSWORD not in r.stderr + r.stdout
    r = e2e.moor(*ns, "images", "-q")
    assert r.stdout.split() == [ref]
    table = e2e.moor(*ns, "images").stdout.splitlines()
    assert table[0].split()[:4] == ["REF", "TYPE", "DIGEST", "SIZE"] and "MiB" in table[1]  # busybox + layers
    assert e2e.moor(*ns, "tag", ref, "example.org/cli/copy:2").returncode == 0
    r = e2e.moor(*ns, "--json", "images")
    import json
    names = sorted(i["name"] for i in json.loads(r.stdout))
    assert names == sorted([ref, "example.org/cli/copy:2"])
    out = suite_dir / "cli-export.tar"
    r = e2e.moor(*ns, "export", str(out), "example.org/cli/copy:2")
    assert r.returncode == 0, r.stderr
    insp = subprocess.run(["skopeo", "inspect", f"oci-archive:{out}:2"], check=True, capture_output=True, text=True)
    assert "Layers" in insp.stdout
    assert e2e.moor(*ns, "rmi", ref, "example.org/cli/copy:2").returncode == 0
    assert e2e.moor(*ns, "images", "-q").stdout.split() == []
    r = e2e.moor(*ns, "import", str(out))
    assert r.returncode == 0, r.stderr
    assert e2e.moor(*ns, "images", "-q").stdout.split() == ["example.org/cli/copy:2"]
    assert e2e.moor(*ns, "rmi", "nope/none:1").returncode == 3


async def test_wrong_diff_id_not_committed(e2e: Any, conn: Any) -> None:
    """A layer whose uncompressed digest is not the config's diff id: the unpack fails, no
    snapshot is committed, no image is recorded (reliability §1b, case 18)."""
    import gzip
    import io
    import json
    import tarfile

    from moorage.services.snapshots.client import RemoteSnapshotter
    from moorage.services.transfer import oci
    from moorage.services.transfer.client import ImagesClient, TransferClient

    from .fakeregistry import FakeRegistry

    registry_pb2, imagestore_pb2, _, platform_pb2 = _pb()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        ti = tarfile.TarInfo("hello")
        ti.size = 5
        t.addfile(ti, io.BytesIO(b"hello"))
    layer = gzip.compress(raw.getvalue())
    wrong = "sha256:" + "9" * 64
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [wrong]}}).encode()
    ld = oci.Descriptor(oci.OCI_LAYER_GZIP, oci.digest_of(layer), len(layer))
    cd = oci.Descriptor(oci.OCI_CONFIG, oci.digest_of(cfg), len(cfg))
    m = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": cd.to_json(),
                    "layers": [ld.to_json()]}).encode()
    fake = FakeRegistry().start()
    try:
        fake.routes["/v2/bad/diffid/manifests/latest"] = lambda h: (200, {"Content-Type": oci.OCI_MANIFEST}, m)
        fake.routes[f"/v2/bad/diffid/blobs/{cd.digest}"] = lambda h: (200, {}, cfg)
        fake.routes[f"/v2/bad/diffid/blobs/{ld.digest}"] = lambda h: (200, {}, layer)
        ref = f"{fake.host}/bad/diffid:latest"
        dst = imagestore_pb2.ImageStore(name=ref, unpacks=[imagestore_pb2.UnpackConfiguration(
            platform=platform_pb2.Platform(os="linux", architecture="amd64"), snapshotter="overlayfs")])
        with pytest.raises(errdefs.DataLoss, match="diff id"):
            await TransferClient(conn).transfer(registry_pb2.OCIRegistry(reference=ref), dst)
    finally:
        fake.stop()
    with pytest.raises(errdefs.NotFound):
        await RemoteSnapshotter(conn, "overlayfs").stat(wrong)
    assert [i.name async for i in RemoteSnapshotter(conn, "overlayfs").walk()
            if i.name.startswith("extract-")] == []  # the prepared snapshot was removed
    with pytest.raises(errdefs.NotFound):
        await ImagesClient(conn).get(ref)


def test_cli_push_with_user_to_token_registry(e2e: Any, token_registry: regfix.Registry, layout: Path,
                                              suite_dir: Path) -> None:
    src = regfix.push(layout, token_registry, "cli/src")
    hosts = hosts_dir_for(token_registry, suite_dir / "clipush")
    ns = ["--namespace", "clipush"]
    user = ["--hosts-dir", hosts, "--user", f"{regfix.USER}:{regfix.PASSWORD}"]
    r = e2e.moor(*ns, "pull", *user, "--no-unpack", src)
    assert r.returncode == 0, r.stderr
    dst = f"{token_registry.host}/cli/pushed:v3"
    r = e2e.moor(*ns, "push", "--hosts-dir", hosts, dst, src)
    assert r.returncode != 0  # anonymous tokens only grant pull
    r = e2e.moor(*ns, "push", *user, dst, src)
    assert r.returncode == 0, r.stderr
    assert regfix.PASSWORD not in r.stderr + r.stdout
    digest = e2e.moor(*ns, "--json", "images").stdout
    assert regfix.skopeo_inspect(dst, token_registry)["Digest"] in digest


async def test_image_events_through_the_proxy(e2e: Any, conn: Any) -> None:
    import asyncio

    from moorage.api.containerd.events import image_pb2
    from moorage.api.containerd.services.events.v1 import events_pb2
    from moorage.api.containerd.types import event_pb2
    from moorage.services.transfer import oci
    from moorage.services.transfer.client import ImagesClient
    from moorage.services.transfer.contract import Image

    images = ImagesClient(conn)
    d = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "8" * 64, 8)
    req = events_pb2.SubscribeRequest(filters=['topic~="^/images/"'])
    stream = await conn.open_stream("containerd.services.events.v1.Events", "Subscribe", req.SerializeToString(), 0x01)
    got = None
    n = 0
    while got is None:  # until the subscription is live: create another image on every miss
        n += 1
        await images.create(Image(f"ev/img:{n}", d))
        try:
            data = await asyncio.wait_for(stream.recv(), 0.5)
        except TimeoutError:
            continue
        got = event_pb2.Envelope.FromString(data)
    assert got.topic == "/images/create" and got.namespace == "transfer-test"
    name = image_pb2.ImageCreate.FromString(got.event.value).name
    await images.update(Image(name, d, {"x": "y"}), ["labels.x"])
    await images.delete(name)
    seen = []
    while len(seen) < 2:
        env = event_pb2.Envelope.FromString(await asyncio.wait_for(stream.recv(), 10))
        if env.topic != "/images/create":
            seen.append(env)
    assert [e.topic for e in seen] == ["/images/update", "/images/delete"]
    up = image_pb2.ImageUpdate.FromString(seen[0].event.value)
    assert (up.name, dict(up.labels)) == (name, {"x": "y"})
    assert image_pb2.ImageDelete.FromString(seen[1].event.value).name == name


async def test_kill_transfer_mid_pull_then_resume(e2e: Any, conn: Any) -> None:
    """SIGKILL the transfer and content processes (the daemon, in containerd's terms) while a
    layer downloads; after a restart the same pull resumes the kept ingest with a Range
    request and completes (reliability case 21a). Content is killed too because the proxy
    keeps a vanished client's backend stream open, so the dead session's ref lock would
    otherwise outlive it (see the issue 6 report)."""
    import asyncio
    import gzip
    import json
    import os
    import threading

    from moorage.services.content.client import ContentClient
    from moorage.services.transfer import oci
    from moorage.services.transfer.client import ImagesClient, TransferClient

    from .fakeregistry import FakeRegistry

    registry_pb2, imagestore_pb2, _, _ = _pb()
    layer = gzip.compress(os.urandom(12 << 20), compresslevel=1)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        oci.digest_of(gzip.decompress(layer))]}}).encode()
    ld = oci.Descriptor(oci.OCI_LAYER_GZIP, oci.digest_of(layer), len(layer))
    cd = oci.Descriptor(oci.OCI_CONFIG, oci.digest_of(cfg), len(cfg))
    m = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": cd.to_json(),
                    "layers": [ld.to_json()]}).encode()
    release = threading.Event()
    ranges: list[str | None] = []

    def blob(h: Any) -> Any:
        rng = h.headers.get("Range")
        ranges.append(rng)
        if rng is None:
            def body() -> Any:
                for i in range(0, 9 << 20, 1 << 20):
                    yield layer[i:i + (1 << 20)]
                release.wait(30)  # hold the connection open until the test is done killing
            return 200, {"Content-Length": str(len(layer)), "Connection": "close"}, body()
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        return 206, {"Content-Range": f"bytes {start}-{len(layer) - 1}/{len(layer)}"}, layer[start:]

    fake = FakeRegistry().start()
    try:
        fake.routes["/v2/kill/me/manifests/latest"] = lambda h: (200, {"Content-Type": oci.OCI_MANIFEST}, m)
        fake.routes[f"/v2/kill/me/blobs/{cd.digest}"] = lambda h: (200, {}, cfg)
        fake.routes[f"/v2/kill/me/blobs/{ld.digest}"] = blob
        ref = f"{fake.host}/kill/me:latest"
        first = asyncio.ensure_future(TransferClient(conn).transfer(
            registry_pb2.OCIRegistry(reference=ref), imagestore_pb2.ImageStore(name=ref)))
        content = ContentClient(conn)
        for _ in range(400):  # until part of the layer is in the content store (bounded)
            sts = [s for s in await content.list_statuses() if ld.digest in s.ref]
            if sts and sts[0].offset > 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no partial ingest appeared")
        e2e.kill("transfer")
        e2e.kill("content")
        with pytest.raises(errdefs.Error):
            await first
        e2e.start("content")
        e2e.start("transfer")
        release.set()
        kept = [s for s in await content.list_statuses() if ld.digest in s.ref][0].offset
        assert kept > 0
        await TransferClient(conn).transfer(registry_pb2.OCIRegistry(reference=ref), imagestore_pb2.ImageStore(name=ref))
        assert ranges[-1] == f"bytes={kept}-"
        assert (await content.info(ld.digest)).size == len(layer)
        assert (await ImagesClient(conn).get(ref)).target.size == len(m)
    finally:
        release.set()
        fake.stop()


async def test_streams_opened_without_namespace(e2e: Any, conn: Any) -> None:
    """Go's ttrpc NewStream sends no metadata: a stream registered without a namespace is
    still found by a Transfer call that has one; a duplicate id is refused."""
    from google.protobuf import any_pb2

    from moorage.api.containerd.services.streaming.v1 import streaming_pb2
    from moorage.api.containerd.services.transfer.v1 import transfer_pb2 as tpb
    from moorage.namespaces import NAMESPACE_KEY
    from moorage.services.transfer import oci, wire
    from moorage.services.transfer.client import ImagesClient, stream_id
    from moorage.services.transfer.contract import Image

    _, imagestore_pb2, _, _ = _pb()
    await ImagesClient(conn).create(Image("nons/src:1", oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "6" * 64, 6)))
    sid = stream_id("progress")
    s = await conn.stream(wire.STREAMING, "Stream", any_pb2.Any, None, None)  # no metadata
    await s.send(wire.pack(streaming_pb2.StreamInit(id=sid)))
    assert await s.recv() is not None
    dup = await conn.stream(wire.STREAMING, "Stream", any_pb2.Any, None, None)
    await dup.send(wire.pack(streaming_pb2.StreamInit(id=sid)))
    with pytest.raises(errdefs.AlreadyExists):
        await dup.recv()
    req = tpb.TransferRequest(source=wire.pack(imagestore_pb2.ImageStore(name="nons/src:1")),
                              destination=wire.pack(imagestore_pb2.ImageStore(name="nons/dst:1")),
                              options=tpb.TransferOptions(progress_stream=sid))
    await conn.unary_raw(wire.TRANSFER, "Transfer", req.SerializeToString(),
                         metadata={NAMESPACE_KEY: current_namespace.get() or ""})
    assert await s.recv() is None  # the transfer closed the stream when done
    assert (await ImagesClient(conn).get("nons/dst:1")).target.digest == "sha256:" + "6" * 64


@pytest.mark.parametrize("kind", ["random", "bomb"])
async def test_bad_layer_bytes_fail_the_unpack(kind: str, e2e: Any, conn: Any) -> None:
    """A layer that is not a tar (random bytes with a correct digest) or a gzip bomb: the
    pull fails within the test's time, nothing is committed (reliability cases 17, 18)."""
    import gzip
    import json
    import os

    from moorage.services.snapshots.client import RemoteSnapshotter
    from moorage.services.transfer import oci
    from moorage.services.transfer.client import ImagesClient, TransferClient

    from .fakeregistry import FakeRegistry

    registry_pb2, imagestore_pb2, _, platform_pb2 = _pb()
    if kind == "random":
        layer = os.urandom(100_000)
        diff_id = oci.digest_of(layer)
    else:
        layer = gzip.compress(bytes(256 << 20), compresslevel=9)  # 256 MiB of zeros in ~250 KiB
        diff_id = "sha256:" + "1" * 64
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    ld = oci.Descriptor(oci.OCI_LAYER_GZIP, oci.digest_of(layer), len(layer))
    cd = oci.Descriptor(oci.OCI_CONFIG, oci.digest_of(cfg), len(cfg))
    m = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": cd.to_json(),
                    "layers": [ld.to_json()]}).encode()
    fake = FakeRegistry().start()
    try:
        fake.routes[f"/v2/bad/{kind}/manifests/latest"] = lambda h: (200, {"Content-Type": oci.OCI_MANIFEST}, m)
        fake.routes[f"/v2/bad/{kind}/blobs/{cd.digest}"] = lambda h: (200, {}, cfg)
        fake.routes[f"/v2/bad/{kind}/blobs/{ld.digest}"] = lambda h: (200, {}, layer)
        ref = f"{fake.host}/bad/{kind}:latest"
        dst = imagestore_pb2.ImageStore(name=ref, unpacks=[imagestore_pb2.UnpackConfiguration(
            platform=platform_pb2.Platform(os="linux", architecture="amd64"), snapshotter="overlayfs")])
        with pytest.raises(errdefs.Error):
            await TransferClient(conn).transfer(registry_pb2.OCIRegistry(reference=ref), dst)
    finally:
        fake.stop()
    sn = RemoteSnapshotter(conn, "overlayfs")
    assert [i.name async for i in sn.walk() if i.name.startswith("extract-")] == []
    with pytest.raises(errdefs.NotFound):
        await ImagesClient(conn).get(ref)
