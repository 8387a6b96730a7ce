"""Leases through a real suite: what the services create under ``containerd-lease`` is held,
a pull holds its work while `moor gc` runs, an expired lease frees what only it held."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from suite import Suite, running

from gc_images import blob_bytes, build, import_image
from test_gc_suite import CONFIG, SERVICES, gc, held, moor

LEASES = "containerd.services.leases.v1.Leases"


@pytest.fixture
async def suite_up() -> AsyncIterator[Suite]:
    async with running(SERVICES, config=CONFIG) as s:
        yield s


async def resources(conn: Any, lease: str) -> set[tuple[str, str]]:
    from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb
    from moorage.namespaces import NAMESPACE_KEY

    out = await conn.unary(LEASES, "ListResources", pb.ListResourcesRequest(id=lease),
                           pb.ListResourcesResponse, metadata={NAMESPACE_KEY: "default"})
    return {(r.type, r.id) for r in out.resources}


@pytest.mark.root
async def test_what_a_call_makes_under_a_lease_is_held(suite_up: Suite) -> None:
    from moorage import errdefs
    from moorage.leasing import current_lease
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient
    from moorage.services.snapshots.client import RemoteSnapshotter
    from moorage.services.transfer.client import ImagesClient
    from moorage.services.transfer.contract import Image
    from moorage.services.transfer.oci import Descriptor

    s = suite_up
    await moor(s, "leases", "create", "--id", "work", "--expires", "0")
    current_namespace.set("default")
    conn = await connect(s.address)
    try:
        content = ContentClient(conn)
        sn = RemoteSnapshotter(conn, "overlayfs")
        token = current_lease.set("work")
        try:
            w = await content.writer("leased-ref")
            await w.write(b"made under a lease")
            assert ("ingests", "leased-ref") in await resources(conn, "work")
            blob = await w.commit()
            await sn.prepare("k1")
            await sn.commit("n1", "k1")
            await sn.prepare("k2", "n1")
            image = Image("example.com/leased:1", Descriptor("application/octet-stream", blob, 18),
                          {"containerd.io/gc.expire": "2999-01-01T00:00:00Z"})
            await ImagesClient(conn).create(image)
        finally:
            current_lease.reset(token)
        assert await resources(conn, "work") == {
            ("content", blob), ("snapshots/overlayfs", "n1"), ("snapshots/overlayfs", "k2"),
            ("images", "example.com/leased:1")}
        await ImagesClient(conn).delete("example.com/leased:1")

        # a lease that does not exist: NotFound, and nothing is made
        token = current_lease.set("no-such-lease")
        try:
            with pytest.raises(errdefs.NotFound):
                await content.writer("orphan-ref")
            with pytest.raises(errdefs.NotFound):
                await sn.prepare("k3")
        finally:
            current_lease.reset(token)
        assert [st.ref for st in await content.list_statuses()] == []
        with pytest.raises(errdefs.NotFound):
            await sn.stat("k3")
    finally:
        await conn.close()

    # held while the lease lives, however many collections run
    assert await gc(s) == (set(), set())
    blobs, snaps = await held(s.address)
    assert blob in blobs and {"n1", "k2"} <= snaps
    await moor(s, "leases", "rm", "work")
    assert await gc(s) == ({blob}, {"k2", "n1"})


@pytest.mark.root
async def test_an_expired_lease_frees_what_only_it_held(suite_up: Suite) -> None:
    """Two leases hold one blob; the one that expires frees only what the other does not hold
    (the second writer of the shared blob gets AlreadyExists, and its lease holds it anyway)."""
    from moorage import errdefs
    from moorage.leasing import current_lease
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    s = suite_up
    await moor(s, "leases", "create", "--id", "short", "--expires", "0",
               "containerd.io/gc.expire=2000-01-01T00:00:00Z")
    await moor(s, "leases", "create", "--id", "long", "--expires", "0")
    current_namespace.set("default")
    conn = await connect(s.address)
    content = ContentClient(conn)

    async def put(lease: str, data: bytes) -> str:
        token = current_lease.set(lease)
        try:
            w = await content.writer(f"{lease}-{len(data)}", len(data))
            await w.write(data)
            return await w.commit()
        finally:
            current_lease.reset(token)

    try:
        shared = await put("long", b"shared")
        long_only = await put("long", b"long only")
        short_only = await put("short", b"short only!")
        token = current_lease.set("short")
        try:
            with pytest.raises(errdefs.AlreadyExists):
                await content.writer("short-shared", 6, shared)
        finally:
            current_lease.reset(token)
        assert ("content", shared) in await resources(conn, "short")
    finally:
        await conn.close()
    freed, _ = await gc(s)
    assert freed == {short_only}
    blobs, _ = await held(s.address)
    assert {shared, long_only} <= blobs


class StallingRegistry:
    """A registry serving one image whose ``stalled`` layer stops half-way until released."""

    def __init__(self, name: str, manifest: str, blobs: dict[str, bytes], stalled: str) -> None:
        from transfer.fakeregistry import FakeRegistry

        self.asked = threading.Event()
        self.release = threading.Event()
        self.fake = FakeRegistry()
        repo, tag = name.split(":")

        def serve(data: bytes, media_type: str, stall: bool = False) -> Any:
            def route(h: Any) -> tuple[int, dict[str, str], Any]:
                headers = {"Content-Type": media_type, "Content-Length": str(len(data)),
                           "Docker-Content-Digest": "sha256:" + __import__("hashlib").sha256(data).hexdigest()}
                if h.command == "HEAD" or not stall:
                    return 200, headers, data
                return 200, headers, self._stalled(data)
            return route

        mt = "application/vnd.oci.image.manifest.v1+json"
        self.fake.routes[f"/v2/{repo}/manifests/{tag}"] = serve(blobs[manifest], mt)
        self.fake.routes[f"/v2/{repo}/manifests/{manifest}"] = serve(blobs[manifest], mt)
        for digest, data in blobs.items():
            self.fake.routes[f"/v2/{repo}/blobs/{digest}"] = serve(data, "application/octet-stream",
                                                                 digest == stalled)

    def _stalled(self, data: bytes) -> Iterator[bytes]:
        half = len(data) // 2
        yield data[:half]
        self.asked.set()
        assert self.release.wait(60), "the test never released the layer"
        yield data[half:]


@pytest.mark.root
async def test_a_pull_running_while_gc_runs_loses_nothing(suite_up: Suite, tmp_path: Path) -> None:
    """`moor pull` of p (sharing its base layer with a) stalls in its own layer; meanwhile a is
    removed and `moor gc` runs: the pull's lease keeps the shared layer, its snapshot and
    what the pull already wrote; the pull then completes and its image is whole."""
    import os

    s = suite_up
    base = {"etc/base": b"shared base\n" * 200}
    a = build(tmp_path / "a.tar", "example.com/gc/a:1", [base, {"a": b"only a\n" * 50}])
    p = build(tmp_path / "p.tar", "gc/p:1", [base, {"p": os.urandom(1 << 20)}])
    await import_image(s.address, a)
    reg = StallingRegistry("gc/p:1", p.manifest, blob_bytes(p), stalled=p.layers[1])
    reg.fake.start()
    try:
        pull = asyncio.create_task(asyncio.to_thread(s.moor, "pull", "--plain-http", f"{reg.fake.host}/gc/p:1"))
        assert await asyncio.to_thread(reg.asked.wait, 60), "the pull never reached its layer"
        leases = json.loads(await moor(s, "--json", "leases", "ls"))
        assert len(leases) == 1  # the pull's own
        await moor(s, "rmi", a.name)
        freed_blobs, freed_snaps = await gc(s)
        assert freed_blobs == {a.layers[1], a.config, a.manifest}
        assert freed_snaps == {a.chain[1]}
        reg.release.set()
        done = await pull
        assert done.returncode == 0, done.stderr
    finally:
        reg.release.set()
        reg.fake.stop()
    blobs, snaps = await held(s.address)
    assert p.blobs <= blobs and set(p.chain) <= snaps
    assert json.loads(await moor(s, "--json", "leases", "ls")) == []  # dropped when done
    assert await gc(s) == (set(), set())
    assert f"{reg.fake.host}/gc/p:1" in await moor(s, "images", "-q")
