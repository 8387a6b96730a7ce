"""``contract.Store`` over ttrpc (containerd's core/content/proxy, asyncio).

The namespace of the calling context travels as ``containerd-namespace-ttrpc`` metadata on
every call (none when the context has none: the server then answers FailedPrecondition).

``RemoteWriter.write`` cuts its data into 1 MiB WRITE requests and pipelines them, keeping
up to ``window`` in flight and checking each reply's offset; it returns once every reply is
in, so after ``write`` the server holds the bytes. Hand it large buffers (MiBs) for speed.
The window stays well below the peer's per-stream buffer (64 messages).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from google.protobuf import field_mask_pb2

from moorage.api.containerd.services.content.v1 import content_pb2 as pb
from moorage.errdefs import FailedPrecondition, InvalidArgument, OutOfRange, Unavailable
from moorage.leasing import call_metadata

from . import wire
from .contract import Info, Status

if TYPE_CHECKING:
    from ttrpc.client import Client, ClientStream

SERVICE = wire.SERVICE
WINDOW = 16
WRITE_CHUNK = 1 << 20


_metadata = call_metadata
"""The namespace and the lease of the calling context travel on every call."""


class ContentClient:
    """The content API of a peer at the other end of a ttrpc ``Client``."""

    def __init__(self, client: Client, *, window: int = WINDOW) -> None:
        self.client = client
        self.window = window

    async def info(self, digest: str) -> Info:
        resp = await self.client.unary(
            SERVICE, "Info", pb.InfoRequest(digest=digest), pb.InfoResponse, metadata=_metadata()
        )
        return wire.info_from_pb(resp.info)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        req = pb.UpdateRequest(
            info=wire.info_to_pb(info), update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths))
        )
        resp = await self.client.unary(SERVICE, "Update", req, pb.UpdateResponse, metadata=_metadata())
        return wire.info_from_pb(resp.info)

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        async for resp in self.client.server_stream(
            SERVICE,
            "List",
            pb.ListContentRequest(filters=list(filters)),
            pb.ListContentResponse,
            metadata=_metadata(),
        ):
            for m in resp.info:
                yield wire.info_from_pb(m)

    async def delete(self, digest: str) -> None:
        await self.client.unary_raw(
            SERVICE,
            "Delete",
            pb.DeleteContentRequest(digest=digest).SerializeToString(),
            metadata=_metadata(),
        )

    async def reader_at(self, digest: str) -> RemoteReader:
        return RemoteReader(self, digest, (await self.info(digest)).size)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        async for resp in self.client.server_stream(
            SERVICE,
            "Read",
            pb.ReadContentRequest(digest=digest, offset=offset, size=size),
            pb.ReadContentResponse,
            metadata=_metadata(),
        ):
            yield resp.data

    async def status(self, ref: str) -> Status:
        resp = await self.client.unary(
            SERVICE, "Status", pb.StatusRequest(ref=ref), pb.StatusResponse, metadata=_metadata()
        )
        return wire.status_from_pb(resp.status)

    async def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        resp = await self.client.unary(
            SERVICE,
            "ListStatuses",
            pb.ListStatusesRequest(filters=list(filters)),
            pb.ListStatusesResponse,
            metadata=_metadata(),
        )
        return [wire.status_from_pb(s) for s in resp.statuses]

    async def abort(self, ref: str) -> None:
        await self.client.unary_raw(
            SERVICE, "Abort", pb.AbortRequest(ref=ref).SerializeToString(), metadata=_metadata()
        )

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> RemoteWriter:
        from ttrpc.frame import FLAG_REMOTE_OPEN

        stream = await self.client.open_stream(
            SERVICE, "Write", None, FLAG_REMOTE_OPEN, metadata=_metadata()
        )
        w = RemoteWriter(stream, ref, self.window)
        try:
            await w._stat(total, expected)
        except BaseException:
            await w.close()
            raise
        return w


class RemoteReader:
    """``contract.ReaderAt``: each ``read_at`` is one Read call."""

    def __init__(self, client: ContentClient, digest: str, size: int) -> None:
        self._client = client
        self.digest = digest
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise InvalidArgument("negative offset or length")
        n = max(0, min(n, self._size - offset))
        if n == 0:
            return b""
        return b"".join([c async for c in self._client.read(self.digest, offset, n)])

    async def close(self) -> None:
        return None


class RemoteWriter:
    """``contract.Writer`` over one Write stream (see the module docstring)."""

    def __init__(self, stream: ClientStream[bytes, bytes], ref: str, window: int) -> None:
        self._stream = stream
        self.ref = ref
        self._ref = ref.encode()
        self._window = max(1, window)
        self._pending: deque[int] = deque()
        self.offset = 0
        self.total = 0
        self._digest = ""
        self._status: Status | None = None
        self._closed = False

    async def _call(self, req: pb.WriteContentRequest) -> pb.WriteContentResponse:
        await self._drain()
        await self._stream.send(req.SerializeToString())
        return await self._reply()

    async def _reply(self) -> pb.WriteContentResponse:
        data = await self._stream.recv()
        if data is None:
            raise Unavailable(f"ref {self.ref}: write stream ended early")
        return pb.WriteContentResponse.FromString(data)

    async def _drain(self) -> None:
        while self._pending:
            want = self._pending.popleft()
            resp = await self._reply()
            if resp.offset != want:
                raise OutOfRange(f"ref {self.ref}: server at offset {resp.offset}, expected {want}")
            self._digest = resp.digest

    async def _stat(self, total: int = 0, expected: str = "") -> Status:
        resp = await self._call(
            pb.WriteContentRequest(action=pb.STAT, ref=self.ref, total=total, expected=expected)
        )
        self.offset = resp.offset
        self.total = resp.total
        self._digest = resp.digest
        self._status = Status(
            self.ref,
            resp.offset,
            resp.total,
            wire.from_timestamp(resp.started_at),
            wire.from_timestamp(resp.updated_at),
            expected,
        )
        return self._status

    async def status(self) -> Status:
        return await self._stat()

    async def digest(self) -> str:
        await self._drain()
        return self._digest

    async def write(self, data: bytes | memoryview) -> int:
        if self._closed:
            raise FailedPrecondition(f"ref {self.ref}: writer is closed")
        mv = memoryview(data)
        for at in range(0, max(len(mv), 1), WRITE_CHUNK):
            chunk = mv[at : at + WRITE_CHUNK]
            if not chunk:
                break
            while len(self._pending) >= self._window:
                want = self._pending.popleft()
                resp = await self._reply()
                if resp.offset != want:
                    raise OutOfRange(
                        f"ref {self.ref}: server at offset {resp.offset}, expected {want}"
                    )
            await self._stream.send(wire.encode_write(self._ref, self.offset, chunk))
            self.offset += len(chunk)
            self._pending.append(self.offset)
        await self._drain()
        return self.offset

    async def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument("truncate: only size 0 is supported")
        resp = await self._call(pb.WriteContentRequest(action=pb.WRITE, ref=self.ref, offset=0))
        self.offset = resp.offset
        self._digest = resp.digest

    async def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        if self._closed:
            raise FailedPrecondition(f"ref {self.ref}: writer is closed")
        try:
            resp = await self._call(
                pb.WriteContentRequest(
                    action=pb.COMMIT,
                    ref=self.ref,
                    total=size,
                    offset=self.offset,
                    expected=expected,
                    labels=dict(labels or {}),
                )
            )
        finally:
            await self.close()
        if size and resp.offset != size:
            raise FailedPrecondition(f"unexpected size: {resp.offset} != {size}")
        if expected and resp.digest != expected:
            raise FailedPrecondition(f"unexpected digest: {resp.digest} != {expected}")
        return str(resp.digest)

    async def close(self) -> None:
        """End the session and wait until the server let go of the ref."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.close_send()
            while await self._stream.recv() is not None:
                pass
        except Exception:  # noqa: BLE001 - the session is over either way
            pass
        finally:
            self._pending.clear()
            await self._stream.aclose()
