"""reliability.md §4 case 7, the read side: a blob whose ingest is only partly written is
not there for anybody, before and after the service is killed with SIGKILL mid-ingest.

While a writer holds a ref with some bytes written and nothing committed: Info, Read,
ReaderAt and Walk know neither the expected digest nor the digest of the bytes written so
far (NotFound), in this namespace or another; Status and ListStatuses show the partial
offset. After kill -9 of the content process (or of a process holding a local store) the
same holds against the restarted service, nothing is under blobs/, and the ingest resumes
from what is on disk to a blob that reads back whole.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.content.store import LocalStore

from .conftest import other, using
from .test_conformance import blob, read_all
from .test_faults import blobs_under, local, spawn_holder  # noqa: F401 (local: a fixture)


async def assert_not_visible(store: Any, *digests: str) -> None:
    """Every way of reading a blob says NotFound for each of ``digests``."""
    for d in digests:
        with pytest.raises(errdefs.NotFound):
            await store.info(d)
        with pytest.raises(errdefs.NotFound):
            await read_all(store, d)
        with pytest.raises(errdefs.NotFound):
            await read_all(store, d, 0, 1)
        with pytest.raises(errdefs.NotFound):
            await store.reader_at(d)
    walked = [i.digest async for i in store.walk()]
    assert not set(walked) & set(digests), walked


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_partial_ingest_is_not_readable_and_status_shows_its_offset(store: Any) -> None:
    data, d = blob(300_000, 21)
    w = await store.writer("partial-ref", total=len(data), expected=d)
    try:
        await w.write(data[:100_000])
        await w.write(data[100_000:180_000])
        assert (await w.status()).offset == 180_000
        st = await store.status("partial-ref")
        assert (st.ref, st.offset, st.total, st.expected) == ("partial-ref", 180_000, 300_000, d)
        assert [(s.ref, s.offset) for s in await store.list_statuses()] == [("partial-ref", 180_000)]
        await assert_not_visible(store, d, sha(data[:180_000]))
        with using(other()):
            await assert_not_visible(store, d, sha(data[:180_000]))

        await w.write(data[180_000:])  # whole but not committed: still not there
        assert (await store.status("partial-ref")).offset == len(data)
        await assert_not_visible(store, d)

        assert await w.commit(len(data), d) == d
    finally:
        await w.close()
    assert (await store.info(d)).size == len(data)
    assert await read_all(store, d) == data
    with using(other()):  # committed in this namespace only
        await assert_not_visible(store, d)


async def test_partial_ingest_of_a_killed_store_process_stays_invisible(local: LocalStore, root: Path) -> None:  # noqa: F811
    proc = spawn_holder(root, "killed-holder", "stream")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    on_disk = (await local.status("killed-holder")).offset
    assert on_disk >= 8 << 20
    have = next((root / "ingest").glob("*/data")).read_bytes()
    assert len(have) == on_disk
    await assert_not_visible(local, sha(have))
    assert blobs_under(root) == []


async def test_service_killed_mid_ingest_shows_no_blob_then_resumes(tmp_path: Path) -> None:
    suite = pytest.importorskip("suite")
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    s = suite.Suite(tmp_path)
    try:
        s.start("content")
        data = random.Random(11).randbytes(12 << 20)
        d = sha(data)
        part = 5 << 20
        client = await connect(s.socket("content"))
        cs = ContentClient(client)
        w = await cs.writer("interrupted", total=len(data), expected=d)
        await w.write(data[:part])
        assert (await w.status()).offset == part

        reader = await connect(s.socket("content"))  # another client while the stream is open
        other_cs = ContentClient(reader)
        assert (await other_cs.status("interrupted")).offset == part
        await assert_not_visible(other_cs, d, sha(data[:part]))
        await reader.close()

        s.kill("content")
        with pytest.raises(errdefs.Error):
            await w.write(data[part:])
        await client.close()
        assert blobs_under(s.root / "content") == []

        s.start("content")
        client = await connect(s.socket("content"))
        cs = ContentClient(client)
        try:
            st = await cs.status("interrupted")
            on_disk = next((s.root / "content" / "ingest").glob("*/data")).stat().st_size
            assert st.offset == on_disk and part <= on_disk < len(data)
            assert (st.total, st.expected) == (len(data), d)
            await assert_not_visible(cs, d, sha(data[:on_disk]))

            w = await cs.writer("interrupted", total=len(data), expected=d)
            assert (await w.status()).offset == on_disk
            await w.write(data[on_disk:])
            await assert_not_visible(cs, d)  # whole, not yet committed
            assert await w.commit(len(data), d) == d
            assert (await cs.info(d)).size == len(data)
            assert sha(await read_all(cs, d)) == d
            with pytest.raises(errdefs.NotFound):
                await cs.status("interrupted")
        finally:
            await client.close()
    finally:
        s.close()
