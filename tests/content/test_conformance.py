"""The content conformance suite, after containerd's core/content/testsuite.

Every test takes ``store`` (conftest.py): the local store, the client over a real unix socket,
and the client through the proxy. Only the contract (services/content/contract.py) is used.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.content.contract import Info

from .conftest import other, using


def blob(n: int, seed: int = 0) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(n)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


async def write_blob(
    store: Any, ref: str, data: bytes, expected: str = "", labels: dict[str, str] | None = None
) -> str:
    w = await store.writer(ref, total=len(data), expected=expected)
    try:
        st = await w.status()
        if st.offset:
            await w.truncate(0)
        for i in range(0, len(data), 64 * 1024):
            await w.write(data[i : i + 64 * 1024])
        return str(await w.commit(len(data), expected, labels))
    finally:
        await w.close()


async def read_all(store: Any, digest: str, offset: int = 0, size: int = 0) -> bytes:
    return b"".join([c async for c in store.read(digest, offset, size)])


def near(t: datetime, lo: datetime, hi: datetime) -> bool:
    slack = timedelta(seconds=1)
    return lo - slack <= t <= hi + slack


async def test_writer_commits_and_reads_back(store: Any) -> None:
    for i, n in enumerate([1, 256, 64 * 1024 + 3, (1 << 20) * 2 + 17]):
        data, d = blob(n, i)
        t1 = datetime.now(UTC)
        assert await write_blob(store, f"w-{i}", data, d) == d
        t2 = datetime.now(UTC)
        info = await store.info(d)
        assert (info.digest, info.size) == (d, n)
        assert near(info.created_at, t1, t2) and near(info.updated_at, t1, t2)
        assert await read_all(store, d) == data


async def test_commit_without_expected_returns_digest(store: Any) -> None:
    data, d = blob(1000, 7)
    w = await store.writer("noexp")
    await w.write(data)
    assert await w.digest() == d
    assert await w.commit() == d
    assert (await store.info(d)).size == 1000


async def test_empty_blob(store: Any) -> None:
    d = "sha256:" + hashlib.sha256(b"").hexdigest()
    w = await store.writer("empty")
    assert await w.commit(0, d) == d
    assert (await store.info(d)).size == 0
    assert await read_all(store, d) == b""


async def test_status_tracks_ingest(store: Any) -> None:
    data, d = blob(3000, 1)
    t1 = datetime.now(UTC)
    w = await store.writer("status-ref", total=len(data), expected=d)
    try:
        st = await w.status()
        assert (st.ref, st.offset, st.total) == ("status-ref", 0, 3000)
        await w.write(data[:1000])
        await w.write(data[1000:2000])
        st = await store.status("status-ref")
        assert (st.ref, st.offset, st.total) == ("status-ref", 2000, 3000)
        assert near(st.started_at, t1, datetime.now(UTC))
        assert st.updated_at >= st.started_at
        refs = [s.ref for s in await store.list_statuses()]
        assert refs == ["status-ref"]
        await w.write(data[2000:])
        assert await w.commit(3000, d) == d
    finally:
        await w.close()
    with pytest.raises(errdefs.NotFound):
        await store.status("status-ref")
    assert await store.list_statuses() == []


async def test_ref_held_by_a_writer_is_unavailable(store: Any) -> None:
    w = await store.writer("busy")
    try:
        await w.write(b"abc")
        with pytest.raises(errdefs.Unavailable):
            await store.writer("busy")
    finally:
        await w.close()
    w2 = await store.writer("busy")
    assert (await w2.status()).offset == 3
    await w2.close()


async def test_commit_exists(store: Any) -> None:
    data, d = blob(256, 2)
    await write_blob(store, "c1", data, d)
    with pytest.raises(errdefs.AlreadyExists):
        await store.writer("c1-again", expected=d)
    for i, expected in enumerate([d, ""]):
        w = await store.writer(f"c1-exists-{i}")
        await w.write(data)
        with pytest.raises(errdefs.AlreadyExists):
            await w.commit(len(data), expected)
        await w.close()
        with pytest.raises(errdefs.NotFound):
            await store.status(f"c1-exists-{i}")
    assert await read_all(store, d) == data


async def test_commit_error_state(store: Any) -> None:
    data, d = blob(256, 3)
    _, d2 = blob(256, 4)
    ref = "c1-commiterror-state"
    w = await store.writer(ref)
    await w.write(data + b"more")
    with pytest.raises(errdefs.FailedPrecondition):
        await w.commit(len(data) + 4, d2)  # wrong digest
    await w.close()

    w = await store.writer(ref)
    assert (await w.status()).offset == len(data) + 4
    with pytest.raises(errdefs.FailedPrecondition):
        await w.commit(len(data), "")  # wrong size
    await w.close()
    with pytest.raises(errdefs.NotFound):
        await store.info(d2)

    w = await store.writer(ref)
    full = "sha256:" + hashlib.sha256(data + b"more").hexdigest()
    assert await w.commit(len(data) + 4, "") == full
    await w.close()
    assert await read_all(store, full) == data + b"more"


async def test_short_ingest_fails_against_declared_total(store: Any) -> None:
    data, d = blob(1000, 5)
    w = await store.writer("short", total=1000, expected=d)
    await w.write(data[:600])
    with pytest.raises(errdefs.FailedPrecondition):
        await w.commit()
    await w.close()
    w = await store.writer("short", total=1000, expected=d)
    assert (await w.status()).offset == 600
    await w.write(data[600:])
    assert await w.commit(1000, d) == d


async def test_resume(store: Any) -> None:
    data, d = blob(100_000, 6)
    for mode in ("continue", "truncate"):
        ref = f"resume-{mode}"
        w = await store.writer(ref, total=len(data), expected=d)
        await w.write(data[:40_000])
        await w.close()
        w = await store.writer(ref, total=len(data), expected=d)
        st = await w.status()
        assert (st.offset, st.total) == (40_000, len(data))
        if mode == "truncate":
            await w.truncate(0)
            assert (await w.status()).offset == 0
            await w.write(data)
        else:
            await w.write(data[40_000:])
        assert await w.commit(len(data), d) == d
        await w.close()
        assert await read_all(store, d) == data
        await store.delete(d)


async def test_resume_with_other_total_is_refused(store: Any) -> None:
    w = await store.writer("totals", total=10)
    await w.write(b"12345")
    await w.close()
    with pytest.raises(errdefs.FailedPrecondition):
        await store.writer("totals", total=11)
    w = await store.writer("totals", total=10)
    assert (await w.status()).offset == 5
    await w.close()


async def test_abort(store: Any) -> None:
    w = await store.writer("abort-me")
    await w.write(b"partial")
    await w.close()
    await store.abort("abort-me")
    with pytest.raises(errdefs.NotFound):
        await store.status("abort-me")
    with pytest.raises(errdefs.NotFound):
        await store.abort("abort-me")
    w = await store.writer("abort-me")
    assert (await w.status()).offset == 0
    await w.close()


async def test_read_ranges(store: Any) -> None:
    data, d = blob(3 * (1 << 20) + 5, 8)
    await write_blob(store, "ranges", data, d)
    assert await read_all(store, d, 10, 20) == data[10:30]
    assert await read_all(store, d, len(data) - 3, 100) == data[-3:]
    assert await read_all(store, d, -5, 0) == data
    assert await read_all(store, d, len(data), 0) == b""
    with pytest.raises(errdefs.OutOfRange):
        await read_all(store, d, len(data) + 1, 0)
    chunks = [c async for c in store.read(d)]
    assert max(len(c) for c in chunks) <= 1 << 20
    r = await store.reader_at(d)
    try:
        assert r.size == len(data)
        assert await r.read_at(1 << 20, 7) == data[1 << 20 : (1 << 20) + 7]
        assert await r.read_at(len(data) - 2, 10) == data[-2:]
    finally:
        await r.close()


async def test_labels(store: Any) -> None:
    data, d = blob(512, 9)
    await write_blob(store, "labels", data, d, labels={"a": "1", "b": "2"})
    info = await store.info(d)
    assert dict(info.labels) == {"a": "1", "b": "2"}
    before = info.updated_at
    info = await store.update(Info(d, 0, before, before, {"c": "3", "a": "x"}), ["labels.c"])
    assert dict(info.labels) == {"a": "1", "b": "2", "c": "3"}
    assert info.updated_at >= before
    info = await store.update(Info(d, 0, before, before, {}), ["labels.a"])
    assert dict(info.labels) == {"b": "2", "c": "3"}
    info = await store.update(Info(d, 0, before, before, {"z": "9"}), ["labels"])
    assert dict(info.labels) == {"z": "9"}
    info = await store.update(Info(d, 0, before, before, {"y": "8"}))
    assert dict((await store.info(d)).labels) == {"y": "8"}
    assert info.size == 512
    with pytest.raises(errdefs.InvalidArgument):
        await store.update(Info(d, 0, before, before, {}), ["size"])
    with pytest.raises(errdefs.InvalidArgument):
        await store.update(Info(d, 0, before, before, {"k": "v" * 4096}), ["labels.k"])
    _, missing = blob(10, 99)
    with pytest.raises(errdefs.NotFound):
        await store.update(Info(missing, 0, before, before, {"a": "b"}))


async def test_walk_and_filters(store: Any) -> None:
    a, da = blob(100, 10)
    b, db = blob(200, 11)
    await write_blob(store, "walk-a", a, da, labels={"kind": "layer", "x.y/z": "1"})
    await write_blob(store, "walk-b", b, db, labels={"kind": "config"})
    assert sorted([i.digest async for i in store.walk()]) == sorted([da, db])
    pytest.importorskip("moorage.filters")
    assert [i.digest async for i in store.walk(["labels.kind==layer"])] == [da]
    assert [i.digest async for i in store.walk([f"digest=={db}"])] == [db]
    assert [i.digest async for i in store.walk(['labels."x.y/z"'])] == [da]
    got = sorted([i.digest async for i in store.walk(["labels.kind==layer", "labels.kind==config"])])
    assert got == sorted([da, db])
    with pytest.raises(errdefs.InvalidArgument):
        [i async for i in store.walk(["labels.kind=="]) if i]  # noqa: C416
    w = await store.writer("filtered-ref")
    await w.close()
    assert [s.ref for s in await store.list_statuses(["ref==filtered-ref"])] == ["filtered-ref"]
    assert await store.list_statuses(["ref==nope"]) == []


async def test_walk_many_in_batches(store: Any) -> None:
    made = set()
    for i in range(230):
        data = f"blob {i}".encode()
        made.add(await write_blob(store, f"many-{i}", data))
    assert {i.digest async for i in store.walk()} == made


async def test_delete(store: Any) -> None:
    data, d = blob(300, 12)
    await write_blob(store, "del", data, d)
    await store.delete(d)
    with pytest.raises(errdefs.NotFound):
        await store.info(d)
    with pytest.raises(errdefs.NotFound):
        await read_all(store, d)
    with pytest.raises(errdefs.NotFound):
        await store.delete(d)
    assert await write_blob(store, "del", data, d) == d


async def test_namespaces_isolate(store: Any) -> None:
    data, d = blob(1000, 13)
    await write_blob(store, "iso", data, d)
    with using(other()):
        with pytest.raises(errdefs.NotFound):
            await store.info(d)
        with pytest.raises(errdefs.NotFound):
            await read_all(store, d)
        assert [i async for i in store.walk()] == []
        with pytest.raises(errdefs.NotFound):
            await store.delete(d)
        w = await store.writer("iso")  # refs are per namespace
        assert (await w.status()).offset == 0
        await w.close()
        await store.abort("iso")
    assert await read_all(store, d) == data


async def test_namespaces_share_existing_bytes(store: Any) -> None:
    data, d = blob(1000, 14)
    await write_blob(store, "ref-1000", data, d)
    with using(other()):
        w = await store.writer("ref-1000", total=1000, expected=d)
        st = await w.status()
        assert (st.ref, st.offset, st.total) == ("ref-1000", 1000, 1000)
        assert await w.digest() == d
        assert await w.commit(1000, d) == d
        await w.close()
        assert (await store.info(d)).size == 1000
        assert await read_all(store, d) == data
        await store.delete(d)
        with pytest.raises(errdefs.NotFound):
            await store.info(d)
    assert await read_all(store, d) == data


async def test_namespaces_append_to_shared(store: Any) -> None:
    data, d = blob(1000, 15)
    await write_blob(store, "ref-app", data, d)
    extra = b"appended bytes"
    d2 = "sha256:" + hashlib.sha256(data + extra).hexdigest()
    with using(other()):
        w = await store.writer("ref-app", total=1000, expected=d)
        assert (await w.status()).offset == 1000
        await w.write(extra)
        assert await w.commit(len(data) + len(extra), d2) == d2
        await w.close()
        assert await read_all(store, d2) == data + extra
        with pytest.raises(errdefs.NotFound):
            await store.info(d)


async def test_missing_namespace(store: Any) -> None:
    with using(None):
        with pytest.raises(errdefs.FailedPrecondition):
            await store.info("sha256:" + "a" * 64)
        with pytest.raises(errdefs.FailedPrecondition):
            await store.writer("x")


BAD_DIGESTS = [
    "sha256:../../x",
    "sha256:" + "a" * 63,
    "sha256:" + "A" * 64,
    "md5:" + "a" * 32,
    "sha256:" + "a" * 63 + "\x00",
    "",
    "sha256",
    "sha256:" + "a" * 65,
]
BAD_REFS = ["", "a\x00b", "x/../y", "../x", "x/.."]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
async def test_malformed_digests_are_invalid(store: Any, digest: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        await store.info(digest)
    with pytest.raises(errdefs.InvalidArgument):
        await read_all(store, digest)
    with pytest.raises(errdefs.InvalidArgument):
        await store.delete(digest)
    if digest:
        with pytest.raises(errdefs.InvalidArgument):
            await store.writer("ok-ref", expected=digest)
        now = datetime.now(UTC)
        with pytest.raises(errdefs.InvalidArgument):
            await store.update(Info(digest, 0, now, now, {"a": "b"}))


@pytest.mark.parametrize("ref", BAD_REFS)
async def test_malformed_refs_are_invalid(store: Any, ref: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        await store.writer(ref)
    with pytest.raises(errdefs.InvalidArgument):
        await store.status(ref)
    with pytest.raises(errdefs.InvalidArgument):
        await store.abort(ref)
