"""open_writer on a ref another writer holds (the local content store's ref lock): it waits
until the Transfer call's deadline (request_deadline), or LOCK_RETRY_SECONDS without one, and
then fails Unavailable naming the ref; the API adapter hands the call's deadline down."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.transfer import blobs, oci
from moorage.services.transfer.contract import BlobWriter, ContentStore, request_deadline

DATA = b"0123456789"
DESC = oci.Descriptor(oci.OCI_LAYER, "sha256:" + hashlib.sha256(DATA).hexdigest(), len(DATA))
REF = blobs.ref_key(DESC)


class Watched:
    """The content store, noting each try that found the ref locked (loop time) and waking
    whoever waits for a try past a given time."""

    def __init__(self, content: ContentStore) -> None:
        self.content = content
        self.locked_at: list[float] = []
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> BlobWriter:
        try:
            return await self.content.writer(ref, total, expected)
        except errdefs.Unavailable:
            now = asyncio.get_running_loop().time()
            self.locked_at.append(now)
            for at, fut in self._waiters:
                if now >= at and not fut.done():
                    fut.set_result(None)
            raise

    async def locked_try_after(self, at: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((at, fut))
        await fut


@pytest.fixture
def deadline() -> Any:
    def set_(seconds: float | None) -> float | None:
        at = None if seconds is None else asyncio.get_running_loop().time() + seconds
        request_deadline.set(at)
        return at

    yield set_


async def test_waits_past_the_default_until_released(content: Any, deadline: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "LOCK_RETRY_SECONDS", 0.1)
    holder = await content.writer(REF, DESC.size, DESC.digest)
    watched = Watched(content)
    deadline(60.0)
    start = asyncio.get_running_loop().time()
    second = asyncio.ensure_future(blobs.open_writer(watched, REF, DESC))  # type: ignore[arg-type]
    # still trying after the no-deadline limit would have given up; then the holder lets go
    await asyncio.wait_for(watched.locked_try_after(start + 0.3), 10)
    assert not second.done()
    await holder.close()
    w = await asyncio.wait_for(second, 10)
    try:
        await w.write(DATA)
        await w.commit(DESC.size, DESC.digest, {})
    finally:
        await w.close()
    assert len(watched.locked_at) >= 3
    assert (await content.info(DESC.digest)).size == len(DATA)


async def test_deadline_passes_unavailable_naming_the_ref(content: Any, deadline: Any) -> None:
    holder = await content.writer(REF, DESC.size, DESC.digest)
    watched = Watched(content)
    try:
        at = deadline(0.8)
        loop = asyncio.get_running_loop()
        with pytest.raises(errdefs.Unavailable, match=f"ref {REF} is still locked .*call's deadline"):
            await blobs.open_writer(watched, REF, DESC)  # type: ignore[arg-type]
        # answered before the deadline (so the caller sees this error, not the server's), after trying till near it
        assert at - blobs.DEADLINE_MARGIN - 0.05 <= loop.time() < at
        assert watched.locked_at[-1] >= at - blobs.DEADLINE_MARGIN - 0.05 and len(watched.locked_at) >= 3
    finally:
        await holder.close()


async def test_no_deadline_waits_the_bounded_default(content: Any, deadline: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "LOCK_RETRY_SECONDS", 0.4)
    holder = await content.writer(REF, DESC.size, DESC.digest)
    deadline(None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with pytest.raises(errdefs.Unavailable, match=f"ref {REF} .*without a deadline"):
            await blobs.open_writer(content, REF, DESC)
        assert 0.4 <= loop.time() - start < 5
    finally:
        await holder.close()


async def test_transfer_call_deadline_reaches_the_transfer() -> None:
    from moorage.api.containerd.services.transfer.v1 import transfer_pb2 as tpb
    from moorage.api.containerd.types.transfer import imagestore_pb2
    from moorage.services.transfer.api import TransferService
    from ttrpc.server import Context

    seen: list[float | None] = []

    class Recorder:
        async def transfer(self, src: object, dst: object, progress: object) -> None:
            seen.append(request_deadline.get())

    req = tpb.TransferRequest()
    req.source.Pack(imagestore_pb2.ImageStore(name="a:1"))
    req.destination.Pack(imagestore_pb2.ImageStore(name="b:1"))
    svc = TransferService(Recorder(), None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for dl in (loop.time() + 30, None):
        ctx = Context("containerd.services.transfer.v1.Transfer", "Transfer", {}, dl, None, 1, loop.time)  # type: ignore[arg-type]
        await svc.Transfer(req, ctx)
    assert seen == [pytest.approx(loop.time() + 30, abs=5), None]
    assert request_deadline.get() is None
