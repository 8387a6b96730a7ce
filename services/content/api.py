"""The ttrpc servicer for containerd.services.content.v1.Content: decode, call the store,
encode. Errors cross as errdefs kinds; the server turns them into statuses.

The Write session follows containerd's contentserver: the first message names the ref (and
may declare total and expected); the ref stays locked for the session; every request gets
exactly one response echoing its action with the committed offset; WRITE/COMMIT at a
non-zero offset must match the current one (OutOfRange), offset 0 on a non-empty ingest
restarts it; an expected digest the namespace already has aborts the ingest with
AlreadyExists; COMMIT ends the stream. Publishes /content/create and /content/delete.

Write is served raw (``servicers`` returns the typed servicer, whose spec leaves Write out,
and a RawService for it): requests are parsed by ``wire.parse_write``, so a chunk's bytes go
from the received frame to the file and the hash without another copy. ``write_session``
holds the session logic over any recv/send pair.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, cast

from google.protobuf import empty_pb2

from moorage.api.containerd.events import content_pb2 as events_pb
from moorage.api.containerd.services.content.v1 import content_pb2 as pb
from moorage.api.containerd.services.content.v1.content_ttrpc import ContentServicer
from moorage import errdefs
from moorage.errdefs import AlreadyExists, InvalidArgument, NotFound, OutOfRange
from ttrpc.service import ServiceSpec

from . import wire
from .contract import Store, Sweeper

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ttrpc.server import Context, RawCall

    from moorage.events import EventPublisher
    from moorage.leasing import Recorder

LIST_BATCH = 100
SWEEP_SERVICE = wire.SWEEP_SERVICE
LIST_PAGE = 5000
"""Most blobs one ContentSweep/List reply carries (well under the 4 MiB message limit)."""
_SPEC: ServiceSpec = ContentServicer.__ttrpc_service__


class WriteLike(Protocol):
    """A WriteContentRequest: the generated message or ``wire.WriteRequest``."""

    @property
    def action(self) -> int: ...

    @property
    def ref(self) -> str: ...

    @property
    def total(self) -> int: ...

    @property
    def expected(self) -> str: ...

    @property
    def offset(self) -> int: ...

    @property
    def data(self) -> bytes | memoryview: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


def servicers(
    store: Store, publisher: EventPublisher | None = None, recorder: Recorder | None = None
) -> list[object]:
    """What a server registers for the content API: the servicer and the raw Write."""
    from moorage.registry import RawService

    svc = ContentService(store, publisher, recorder)
    return [
        svc,
        RawService(wire.SERVICE, {"Write": svc.write_raw}),
        RawService(SWEEP_SERVICE, {"Delete": svc.sweep_raw, "List": svc.page_raw}),
    ]


class ContentService(ContentServicer):  # type: ignore[misc, unused-ignore]
    __ttrpc_service__ = ServiceSpec(
        _SPEC.name, {name: m for name, m in _SPEC.methods.items() if name != "Write"}
    )

    def __init__(
        self, store: Store, publisher: EventPublisher | None = None, recorder: Recorder | None = None
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.recorder = recorder
        """Holds ingests and blobs made under a call's ``containerd-lease`` (None: leases are
        not recorded): the ingest from the first message to the commit, the blob from just
        before the commit on (an existing blob a writer expects is held too), as
        containerd's metadata store does."""

    async def _hold(self, rtype: str, rid: str) -> None:
        if self.recorder is not None:
            await self.recorder.add(rtype, rid)

    async def _hold_existing(self, digest: str) -> None:
        if self.recorder is None or not digest:
            return
        try:
            await self.store.info(digest)
        except NotFound:
            return
        await self.recorder.add("content", digest)

    async def Info(self, request: pb.InfoRequest, ctx: Context) -> pb.InfoResponse:
        return pb.InfoResponse(info=wire.info_to_pb(await self.store.info(request.digest)))

    async def Update(self, request: pb.UpdateRequest, ctx: Context) -> pb.UpdateResponse:
        info = await self.store.update(
            wire.info_from_pb(request.info), list(request.update_mask.paths)
        )
        return pb.UpdateResponse(info=wire.info_to_pb(info))

    async def List(
        self, request: pb.ListContentRequest, ctx: Context
    ) -> AsyncIterator[pb.ListContentResponse]:
        batch: list[pb.Info] = []
        async for info in self.store.walk(list(request.filters)):
            batch.append(wire.info_to_pb(info))
            if len(batch) >= LIST_BATCH:
                yield pb.ListContentResponse(info=batch)
                batch = []
        if batch:
            yield pb.ListContentResponse(info=batch)

    async def Delete(self, request: pb.DeleteContentRequest, ctx: Context) -> empty_pb2.Empty:
        await self.store.delete(request.digest)
        if self.recorder is not None:
            await self.recorder.remove("content", request.digest)
        if self.publisher is not None:
            await self.publisher.publish(
                "/content/delete", events_pb.ContentDelete(digest=request.digest)
            )
        return empty_pb2.Empty()

    async def Read(
        self, request: pb.ReadContentRequest, ctx: Context
    ) -> AsyncIterator[pb.ReadContentResponse]:
        offset = max(request.offset, 0)
        async for chunk in self.store.read(request.digest, offset, request.size):
            yield pb.ReadContentResponse(offset=offset, data=chunk)
            offset += len(chunk)

    async def Status(self, request: pb.StatusRequest, ctx: Context) -> pb.StatusResponse:
        return pb.StatusResponse(status=wire.status_to_pb(await self.store.status(request.ref)))

    async def ListStatuses(
        self, request: pb.ListStatusesRequest, ctx: Context
    ) -> pb.ListStatusesResponse:
        found = await self.store.list_statuses(list(request.filters))
        return pb.ListStatusesResponse(statuses=[wire.status_to_pb(s) for s in found])

    async def Abort(self, request: pb.AbortRequest, ctx: Context) -> empty_pb2.Empty:
        await self.store.abort(request.ref)
        return empty_pb2.Empty()

    def _sweeper(self) -> Sweeper:
        if not hasattr(self.store, "delete_many"):
            raise errdefs.NotImplemented("sweep: this content store works one blob at a time")
        return cast("Sweeper", self.store)

    async def page_raw(self, ctx: Context, call: RawCall) -> None:
        import msgpack

        req = msgpack.unpackb(call.payload) if call.payload else {}
        after = req.get("after", "") if isinstance(req, dict) else None
        limit = req.get("limit", LIST_PAGE) if isinstance(req, dict) else None
        if not isinstance(after, str) or not isinstance(limit, int) or not 0 < limit <= LIST_PAGE:
            raise InvalidArgument(f"sweep list: after must be a string, limit 1..{LIST_PAGE}")
        rows = await self._sweeper().page(after, limit)
        await call.respond(msgpack.packb({"blobs": rows}))

    async def sweep_raw(self, ctx: Context, call: RawCall) -> None:
        import msgpack

        req = msgpack.unpackb(call.payload) if call.payload else {}
        wanted = req.get("digests") if isinstance(req, dict) else None
        if not isinstance(wanted, list) or not all(isinstance(d, str) for d in wanted):
            raise InvalidArgument("sweep: digests must be a list of strings")
        deleted, errors = await self._sweeper().delete_many(wanted)
        await call.respond(msgpack.packb({"deleted": deleted, "errors": errors}))

    async def write_raw(self, ctx: Context, call: RawCall) -> None:
        first = call.payload

        async def recv() -> WriteLike | None:
            nonlocal first
            if first:
                data, first = first, b""
            else:
                got = await call.recv()
                if got is None:
                    return None
                data = got
            return wire.parse_write(data)

        async def send(resp: pb.WriteContentResponse) -> None:
            await call.send(resp.SerializeToString())

        await self.write_session(recv, send)

    async def write_session(
        self,
        recv: Callable[[], Awaitable[WriteLike | None]],
        send: Callable[[pb.WriteContentResponse], Awaitable[None]],
    ) -> None:
        req = await recv()
        if req is None:
            return
        if not req.ref:
            raise InvalidArgument("first message must have a reference")
        ref, total, expected = req.ref, req.total, req.expected
        await self._hold_existing(expected)
        await self._hold("ingests", ref)
        w = await self.store.writer(ref, total=total, expected=expected)
        try:
            st = await w.status()
            offset = st.offset
            while True:
                resp = pb.WriteContentResponse(action=cast("pb.WriteAction", req.action))
                if req.expected:
                    expected = req.expected
                    try:
                        await self.store.info(expected)
                    except NotFound:
                        pass
                    else:
                        await self._hold("content", expected)
                        await w.close()
                        await self.store.abort(ref)
                        raise AlreadyExists(f"blob with expected digest {expected} exists")
                if req.total > 0:
                    total = req.total
                if req.action == pb.STAT:
                    st = await w.status()
                    offset = st.offset
                    resp.digest = await w.digest()
                    resp.started_at.CopyFrom(wire.timestamp(st.started_at))
                    resp.updated_at.CopyFrom(wire.timestamp(st.updated_at))
                    resp.total = total
                elif req.action in (pb.WRITE, pb.COMMIT):
                    if req.offset > 0 and req.offset != offset:
                        raise OutOfRange(
                            f"write @{req.offset} must occur at current offset {offset}"
                        )
                    if req.offset == 0 and offset > 0:
                        await w.truncate(0)
                        offset = 0
                    if req.data:
                        offset = await w.write(req.data)
                    if req.action == pb.COMMIT:
                        await self._hold("content", expected or await w.digest())
                        try:
                            resp.digest = await w.commit(total, expected, dict(req.labels))
                        except AlreadyExists:
                            if self.recorder is not None:
                                await self.recorder.remove("ingests", ref)
                            raise
                        if self.recorder is not None:
                            await self.recorder.remove("ingests", ref)
                        if self.publisher is not None:
                            await self.publisher.publish(
                                "/content/create",
                                events_pb.ContentCreate(digest=resp.digest, size=offset),
                            )
                    else:
                        resp.digest = await w.digest()
                else:
                    raise InvalidArgument(f"unknown write action {req.action}")
                resp.offset = offset
                await send(resp)
                if req.action == pb.COMMIT:
                    return
                req = await recv()
                if req is None:
                    return
        finally:
            await w.close()
