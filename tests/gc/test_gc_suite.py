"""The collector through a real suite: `moor rmi` then `moor gc` gives the disk back, leases hold."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from suite import Suite, running

from gc_images import build, import_image

CONFIG: dict[str, dict[str, Any]] = {
    "runtime": {"enabled": False},
    "sandbox": {"enabled": False},
    "nri": {"enabled": False},
    "cri": {"enabled": False},
    "proxy": {"gc_auto": False, "grpc": False},
}
SERVICES = ["content", "snapshots", "transfer"]


async def held(address: str, ns: str = "default") -> tuple[set[str], set[str]]:
    """Digests of the blobs and keys of the overlayfs snapshots the namespace holds."""
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient
    from moorage.services.snapshots.client import RemoteSnapshotter

    token = current_namespace.set(ns)
    conn = await connect(address)
    try:
        blobs = {i.digest async for i in ContentClient(conn).walk()}
        snaps = {i.name async for i in RemoteSnapshotter(conn, "overlayfs").walk()}
        return blobs, snaps
    finally:
        await conn.close()
        current_namespace.reset(token)


async def write_blob(address: str, data: bytes, ns: str = "default") -> str:
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    token = current_namespace.set(ns)
    conn = await connect(address)
    try:
        w = await ContentClient(conn).writer(f"gc-test-{time.time_ns()}")
        await w.write(data)
        return await w.commit(len(data))
    finally:
        await conn.close()
        current_namespace.reset(token)


async def write_blobs(address: str, datas: list[bytes], ns: str = "default") -> set[str]:
    """Commit many blobs over one connection, 16 at a time."""
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    token = current_namespace.set(ns)
    conn = await connect(address)
    sem = asyncio.Semaphore(16)
    try:
        async def one(i: int, data: bytes) -> str:
            async with sem:
                w = await ContentClient(conn).writer(f"gc-test-{time.time_ns()}-{i}")
                await w.write(data)
                return await w.commit(len(data))

        return set(await asyncio.gather(*(one(i, d) for i, d in enumerate(datas))))
    finally:
        await conn.close()
        current_namespace.reset(token)


async def moor(s: Suite, *args: str) -> Any:
    r = await asyncio.to_thread(s.moor, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


async def gc(s: Suite) -> tuple[set[str], set[str]]:
    """``moor --json gc``: the digests and snapshot keys it freed in "default"."""
    out = json.loads(await moor(s, "--json", "gc"))
    assert out["errors"] == []
    ns = out["namespaces"].get("default", {"content": [], "snapshots": []})
    return {b["digest"] for b in ns["content"]}, {x["key"] for x in ns["snapshots"]}


@pytest.fixture
async def suite_up() -> AsyncIterator[Suite]:
    async with running(SERVICES, config=CONFIG) as s:
        yield s


@pytest.mark.root
async def test_rmi_then_gc_frees_only_what_is_unshared(suite_up: Suite, tmp_path: Path) -> None:
    s = suite_up
    base = {"etc/base": b"shared base layer\n" * 100}
    a = build(tmp_path / "a.tar", "example.com/gc/a:1", [base, {"a": b"only a\n" * 50}])
    b = build(tmp_path / "b.tar", "example.com/gc/b:1", [base, {"b": b"only b\n" * 50}])
    before = await held(s.address)
    await import_image(s.address, a)
    await import_image(s.address, b)
    blobs, snaps = await held(s.address)
    assert a.blobs | b.blobs <= blobs
    assert set(a.chain) | set(b.chain) <= snaps
    assert a.layers[0] == b.layers[0] and a.chain[0] == b.chain[0]

    # nothing is garbage while both images exist
    assert await gc(s) == (set(), set())

    await moor(s, "rmi", a.name)
    freed_blobs, freed_snaps = await gc(s)
    assert freed_blobs == a.blobs - b.blobs
    assert freed_snaps == {a.chain[1]}
    blobs, snaps = await held(s.address)
    assert b.blobs <= blobs and not (a.blobs - b.blobs) & blobs
    assert set(b.chain) <= snaps and a.chain[1] not in snaps
    assert b.name in await moor(s, "images", "-q")

    await moor(s, "rmi", b.name)
    freed_blobs, freed_snaps = await gc(s)
    assert b.blobs <= freed_blobs
    assert freed_snaps == set(b.chain)
    assert await held(s.address) == before

    # people get a table and a summary line
    out = await moor(s, "gc")
    assert out.strip().splitlines()[-1].startswith("freed 0 blobs (0 bytes), 0 snapshots")


@pytest.mark.root
async def test_image_delete_with_sync_returns_once_collected(suite_up: Suite, tmp_path: Path) -> None:
    """Images.Delete with ``sync`` (``moor rmi --sync``, ``ctr images rm --sync``) waits for
    a collection: what only that image held is gone when the call returns."""
    s = suite_up
    before = await held(s.address)
    img = build(tmp_path / "s.tar", "example.com/gc/sync:1", [{"s": b"synced away\n" * 20}])
    await import_image(s.address, img)
    blobs, snaps = await held(s.address)
    assert img.blobs <= blobs and set(img.chain) <= snaps
    await moor(s, "rmi", "--sync", img.name)
    assert await held(s.address) == before


@pytest.mark.root
async def test_an_image_past_its_gc_expire_goes_with_what_only_it_held(suite_up: Suite, tmp_path: Path) -> None:
    """An image labelled ``containerd.io/gc.expire`` in the past is deleted by the next
    collection (as containerd's collector does), and its blobs and snapshots with it."""
    s = suite_up
    before = await held(s.address)
    img = build(tmp_path / "e.tar", "example.com/gc/expiring:1", [{"e": b"expires\n" * 20}])
    await import_image(s.address, img)
    await _images(s.address, _expire, img.name)
    out = json.loads(await moor(s, "--json", "gc"))
    assert out["errors"] == [] and out["namespaces"]["default"]["images"] == [img.name]
    assert img.name not in await moor(s, "images", "-q")
    assert await held(s.address) == before


@pytest.mark.root
async def test_an_expired_image_named_by_gc_ref_image_stays_while_its_referrer_does(
        suite_up: Suite, tmp_path: Path) -> None:
    """An image past its ``gc.expire`` that another image names with
    ``containerd.io/gc.ref.image`` stays, whole, as in containerd 2; once the referrer is
    removed, the next collection deletes it and what only it held."""
    from moorage.services.transfer.oci import Descriptor

    s = suite_up
    before = await held(s.address)
    img = build(tmp_path / "r.tar", "example.com/gc/referenced:1", [{"r": b"referenced\n" * 20}])
    await import_image(s.address, img)
    await _images(s.address, _expire, img.name)
    data = b"an image that names another"
    note = await write_blob(s.address, data)
    await _images(s.address, _create, "example.com/gc/referrer:1", Descriptor("application/octet-stream", note, len(data)),
                  {"containerd.io/gc.ref.image.base": img.name})

    out = json.loads(await moor(s, "--json", "gc"))
    assert out["errors"] == [] and out["namespaces"] == {}
    assert img.name in await moor(s, "images", "-q")
    blobs, snaps = await held(s.address)
    assert img.blobs | {note} <= blobs and set(img.chain) <= snaps

    await moor(s, "rmi", "example.com/gc/referrer:1")
    out = json.loads(await moor(s, "--json", "gc"))
    assert out["errors"] == [] and out["namespaces"]["default"]["images"] == [img.name]
    assert await held(s.address) == before


async def _images(address: str, do: Any, *args: Any) -> None:
    """``await do(ImagesClient, *args)`` in "default" over one connection."""
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.transfer.client import ImagesClient

    token = current_namespace.set("default")
    conn = await connect(address)
    try:
        await do(ImagesClient(conn), *args)
    finally:
        await conn.close()
        current_namespace.reset(token)


async def _expire(images: Any, name: str) -> None:
    """Label the image ``containerd.io/gc.expire`` in the past."""
    from dataclasses import replace

    record = await images.get(name)
    await images.update(replace(record, labels={**record.labels, "containerd.io/gc.expire": "2001-01-01T00:00:00Z"}),
                        ["labels.containerd.io/gc.expire"])


async def _create(images: Any, name: str, target: Any, labels: dict[str, str]) -> None:
    from moorage.services.transfer.contract import Image

    await images.create(Image(name, target, labels))


@pytest.mark.root
async def test_leases_hold_until_they_go_or_expire(suite_up: Suite) -> None:
    s = suite_up
    kept = await write_blob(s.address, b"held by a live lease")
    expiring = await write_blob(s.address, b"held by an expired lease")
    loose = await write_blob(s.address, b"held by nothing")
    rooted = await write_blob(s.address, b"labelled gc.root")
    await moor(s, "content", "label", rooted, "containerd.io/gc.root=2026-01-01T00:00:00Z")

    live = (await moor(s, "leases", "create", "--id", "live", "--expires", "0")).strip()
    assert live == "live"
    await moor(s, "leases", "create", "--id", "old", "--expires", "0",
               "containerd.io/gc.expire=2000-01-01T00:00:00Z")
    await _add_resource(s.address, "live", "content", kept)
    await _add_resource(s.address, "old", "content", expiring)

    freed, _ = await gc(s)
    assert freed == {expiring, loose}
    blobs, _ = await held(s.address)
    assert {kept, rooted} <= blobs and not {expiring, loose} & blobs

    # a lease deleted with --sync collects before it answers
    await moor(s, "leases", "rm", "--sync", "live")
    blobs, _ = await held(s.address)
    assert kept not in blobs and rooted in blobs


async def _add_resource(address: str, lease: str, rtype: str, rid: str) -> None:
    from google.protobuf import empty_pb2

    from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb
    from moorage.namespaces import NAMESPACE_KEY
    from moorage.rpc import connect

    conn = await connect(address)
    try:
        await conn.unary("containerd.services.leases.v1.Leases", "AddResource",
                         pb.AddResourceRequest(id=lease, resource=pb.Resource(type=rtype, id=rid)),
                         empty_pb2.Empty, metadata={NAMESPACE_KEY: "default"})
    finally:
        await conn.close()


async def until(what: Any, deadline: float = 30.0) -> None:
    """Wait until ``await what()`` is true (a condition, polled), or fail after ``deadline``."""
    give_up = time.monotonic() + deadline
    while not await what():
        assert time.monotonic() < give_up, f"{what.__name__} still false after {deadline}s"
        await asyncio.sleep(0.05)


@pytest.mark.root
async def test_rmi_schedules_one_collection(tmp_path: Path) -> None:
    """With gc_auto, `moor rmi` of two images is followed by one collection that frees both
    (containerd's scheduler: deletions within ``schedule_delay`` are collected together).
    The imports' own leases are deleted too, so collections that free nothing may run; only
    one frees anything."""
    config = {**CONFIG, "proxy": {"gc_auto": True, "gc_startup_delay": 0.0, "gc_schedule_delay": 0.5,
                                  "grpc": False}}
    async with running(SERVICES, config=config) as s:
        base = {"etc/base": b"base\n" * 10}
        a = build(tmp_path / "a.tar", "example.com/gc/a:1", [base, {"a": b"a\n"}])
        b = build(tmp_path / "b.tar", "example.com/gc/b:1", [base, {"b": b"b\n"}])
        await import_image(s.address, a)
        await import_image(s.address, b)
        await moor(s, "rmi", a.name, b.name)

        def freeing() -> list[str]:
            log = (s.tmp / "proxy.log").read_text().splitlines()
            return [ln for ln in log if "scheduled collection freed" in ln and "freed 0 blobs, 0 snapshots" not in ln]

        async def logged() -> bool:  # the line comes once the collection has answered
            return bool(freeing())

        await until(logged)
        assert await held(s.address) == (set(), set())
        assert len(freeing()) == 1, freeing()


@pytest.mark.root
async def test_content_killed_mid_sweep_next_collection_finishes(suite_up: Suite) -> None:
    """kill -9 of the content service during a sweep: the collection reports errors, the
    store stays readable, and the next collection frees the rest. The kill comes once the
    first garbage blob file is gone (records deleted, files being unlinked: what is left is
    removed when content starts again)."""
    import msgpack

    from moorage.rpc import connect

    s = suite_up
    kept = await write_blob(s.address, b"kept by gc.root")
    await moor(s, "content", "label", kept, "containerd.io/gc.root=x")
    garbage = await write_blobs(s.address, [f"garbage {i}".encode() for i in range(800)])
    files = {d: s.root / "content" / "blobs" / "sha256" / d.split(":", 1)[1] for d in garbage}
    assert all(f.exists() for f in files.values())
    conn = await connect(s.address)
    try:
        collect = asyncio.create_task(conn.unary_raw("moorage.internal.v1.GC", "Collect", msgpack.packb({})))

        async def sweeping() -> bool:
            return collect.done() or not all(f.exists() for f in files.values())

        await until(sweeping)
        await asyncio.to_thread(s.kill, "content")
        reply = msgpack.unpackb(await collect)
    finally:
        await conn.close()
    freed_first = {b["digest"] for b in reply["namespaces"].get("default", {}).get("content", [])}
    assert freed_first <= garbage
    await asyncio.to_thread(s.start, "content")
    blobs, _ = await held(s.address)
    assert kept in blobs
    freed, _ = await gc(s)
    assert freed_first | freed | (garbage - blobs) >= garbage
    blobs, _ = await held(s.address)
    assert blobs == {kept}

    async def files_gone() -> bool:  # unlinked in the background, after the records
        return not any(f.exists() for f in files.values())

    await until(files_gone)


@pytest.mark.root
async def test_the_image_left_still_runs(tmp_path: Path) -> None:
    """Two images share a base layer with busybox in it: after `moor rmi` of one and a
    collection, the other still runs a container that reads both of its layers; after the
    second, the disk usage is back where it was."""
    config = {**CONFIG, "runtime": {"enabled": True}}
    async with running([*SERVICES, "runtime"], config=config) as s:
        def disk() -> int:
            """Bytes of the blob files and the snapshot directories (the databases' logs aside)."""
            dirs = [s.root / "content" / "blobs", *(s.root / "snapshots").glob("*/snapshots")]
            return sum(p.lstat().st_size for d in dirs for p in d.rglob("*") if not p.is_dir())

        empty = disk()
        base = {"bin/busybox": Path("/bin/busybox").read_bytes(), "etc/base": b"base layer\n"}
        a = build(tmp_path / "a.tar", "example.com/gc/run-a:1", [base, {"a": b"layer of a\n"}])
        b = build(tmp_path / "b.tar", "example.com/gc/run-b:1", [base, {"b": b"layer of b\n"}])
        await import_image(s.address, a)
        await import_image(s.address, b)
        await moor(s, "rmi", a.name)
        freed_blobs, freed_snaps = await gc(s)
        assert freed_blobs == a.blobs - b.blobs and freed_snaps == {a.chain[1]}
        out = await moor(s, "run", "--rm", b.name, "/bin/busybox", "cat", "/etc/base", "/b")
        assert out == "base layer\nlayer of b\n"
        await moor(s, "rmi", b.name)
        freed_blobs, freed_snaps = await gc(s)
        assert b.blobs <= freed_blobs and freed_snaps == set(b.chain)
        assert await held(s.address) == (set(), set())

        async def disk_back() -> bool:  # blob files go just after their records
            return disk() <= empty

        await until(disk_back)
