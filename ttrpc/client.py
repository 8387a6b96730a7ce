"""The asyncio ttrpc client: unary and streaming calls multiplexed on one connection.

``client = await Client.connect(path)`` (OSError if nothing listens there); any number of
tasks may call at once. A status
from the server raises ``error_factory(code, message)`` (``RpcError`` by default). A
local timeout raises DEADLINE_EXCEEDED and abandons the call. When the connection
drops, every pending call and open stream fails at once with UNAVAILABLE, and later
calls fail the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .calls import CLOSED_MESSAGE, identity, serialize, timeout_nano
from .codes import Code
from .errors import RpcError
from .frame import FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, MAX_MESSAGE_SIZE
from .messages import Response, metadata_pairs
from .protocol import ClientConnection, DataReceived, ResponseReceived
from .stream import STALL_TIMEOUT, STREAM_BUFFER, Inbox, Outbox, Stalls

if TYPE_CHECKING:
    from .calls import ErrorFactory
    from .messages import Metadata

__all__ = ["Client", "ClientStream"]

T = TypeVar("T")
SendT = TypeVar("SendT")
RecvT = TypeVar("RecvT")


class ClientStream(Generic[SendT, RecvT]):
    """One streaming call: ``send``, ``close_send``, ``recv`` (None at the end),
    ``async for``. A final OK Response (client-streaming methods) is the last message
    ``recv`` returns, and ``last_was_response`` is then True (a forwarder answers it with a
    Response rather than a data frame); a Response with a status raises it. ``aclose()``
    abandons the call."""

    def __init__(
        self,
        conn: _Protocol,
        stream_id: int,
        encode: Callable[[SendT], bytes],
        decode: Callable[[bytes], RecvT],
    ) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._encode = encode
        self._decode = decode
        self._inbox = Inbox(conn.stream_buffer)
        self._send_closed = False
        self._queued = 0
        self._received = 0
        self._response_at = -1
        self.last_was_response = False

    async def send(self, message: SendT) -> None:
        if self._send_closed:
            raise RpcError(Code.FAILED_PRECONDITION, "ttrpc: send side already closed")
        conn = self._conn
        conn.check_open()
        conn.write(conn.core.data(self.stream_id, self._encode(message)))
        if conn.paused:
            await conn.drain()

    async def close_send(self) -> None:
        """Tell the server no more messages follow (Data 0x05)."""
        if not self._send_closed:
            self._send_closed = True
            if not self._conn.closed:
                self._conn.write(self._conn.core.close_send(self.stream_id))

    async def recv(self) -> RecvT | None:
        data = await self._inbox.get()
        if data is None:
            return None
        self._received += 1
        self.last_was_response = self._received == self._response_at
        return self._decode(data)

    async def aclose(self) -> None:
        """Stop caring about replies (ttrpc has no wire cancel)."""
        self._conn.forget(self.stream_id)
        self._inbox.end()

    def __aiter__(self) -> AsyncIterator[RecvT]:
        return self

    async def __anext__(self) -> RecvT:
        message = await self.recv()
        if message is None:
            raise StopAsyncIteration
        return message

    def _on_data(self, payload: bytes | None, end: bool) -> None:
        inbox = self._inbox
        if payload is not None:
            self._queued += 1
            if not inbox.put(payload):
                self._conn.stalls.overflowed(inbox, self._overflow)
        if end:
            inbox.end()
            self._conn.stalls.release(inbox)

    def _overflow(self) -> None:
        self._conn.forget(self.stream_id)
        self._fail(self._conn.error(Code.RESOURCE_EXHAUSTED, "stream buffer full"))

    def _on_response(self, response: Response) -> None:
        if response.code:
            self._fail(self._conn.error(response.code, response.message))
        else:
            self._queued += 1
            self._response_at = self._queued
            self._inbox.put(response.payload)
            self._inbox.end()
        self._conn.stalls.release(self._inbox)

    def _fail(self, error: Exception) -> None:
        self._inbox.fail(error)
        self._conn.stalls.release(self._inbox)


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, error_factory: ErrorFactory, stream_buffer: int, stall_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.core = ClientConnection(MAX_MESSAGE_SIZE)
        self.get_buffer = self.core.decoder.get_buffer  # type: ignore[method-assign]  # two Python calls less per read
        self.error = error_factory
        self.stream_buffer = stream_buffer
        self.stall_timeout = stall_timeout
        self.pending: dict[int, asyncio.Future[Response] | ClientStream[Any, Any]] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.lost = self.loop.create_future()
        self.stalls: Stalls = Stalls(self.loop, lambda: None, lambda: None, stall_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.stalls = Stalls(
            self.loop, transport.pause_reading, transport.resume_reading, self.stall_timeout
        )
        self.outbox = Outbox(self.loop, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.outbox.received()
        pending = self.pending
        for event in self.core.buffer_updated(nbytes):
            if isinstance(event, ResponseReceived):
                waiter = pending.pop(event.stream_id, None)
                if isinstance(waiter, ClientStream):
                    waiter._on_response(event.response)
                elif waiter is not None and not waiter.done():
                    waiter.set_result(event.response)
            elif isinstance(event, DataReceived):
                waiter = pending.get(event.stream_id)
                if isinstance(waiter, ClientStream):
                    if event.end:
                        del pending[event.stream_id]
                    waiter._on_data(event.payload, event.end)
            else:
                waiter = pending.pop(event.stream_id, None)
                error = self.error(event.code, event.message)
                if isinstance(waiter, ClientStream):
                    waiter._fail(error)
                elif waiter is not None and not waiter.done():
                    waiter.set_exception(error)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stalls.clear()
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            error = self.error(Code.UNAVAILABLE, CLOSED_MESSAGE)
            if isinstance(waiter, ClientStream):
                waiter._fail(error)
            elif not waiter.done():
                waiter.set_exception(error)
        self._wake_drainers()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        if self.paused and not self.closed:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        self.check_open()

    def check_open(self) -> None:
        if self.closed:
            raise self.error(Code.UNAVAILABLE, CLOSED_MESSAGE)

    def write(self, data: bytes) -> None:
        self.outbox.write(data)

    def forget(self, stream_id: int) -> None:
        self.pending.pop(stream_id, None)
        self.core.forget(stream_id)

    def open(
        self, service: str, method: str, payload: bytes, flags: int, timeout_nano: int, metadata: Metadata | None
    ) -> int:
        if self.closed:
            raise self.error(Code.UNAVAILABLE, CLOSED_MESSAGE)
        try:
            sid, frame = self.core.request(
                service, method, payload, flags, timeout_nano, metadata_pairs(metadata) if metadata else ()
            )
        except RpcError as exc:
            raise self.error(exc.code, exc.message) from None
        self.outbox.write(frame)
        return sid


class Client:
    """A connection to a ttrpc server; see the module docstring."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @classmethod
    async def connect(
        cls,
        path: str,
        error_factory: ErrorFactory | None = None,
        *,
        stream_buffer: int = STREAM_BUFFER,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> Client:
        loop = asyncio.get_running_loop()
        factory = error_factory or RpcError
        _, protocol = await loop.create_unix_connection(
            lambda: _Protocol(factory, stream_buffer, stall_timeout), path
        )
        return cls(protocol)

    @classmethod
    async def from_socket(cls, sock: Any, error_factory: ErrorFactory | None = None) -> Client:
        """A client on an already connected socket."""
        loop = asyncio.get_running_loop()
        factory = error_factory or RpcError
        _, protocol = await loop.create_unix_connection(
            lambda: _Protocol(factory, STREAM_BUFFER, STALL_TIMEOUT), sock=sock
        )
        return cls(protocol)

    @property
    def closed(self) -> bool:
        return self._protocol.closed

    async def close(self) -> None:
        protocol = self._protocol
        if protocol.transport is not None and not protocol.closed:
            protocol.outbox.flush()
            protocol.transport.close()
        await protocol.lost

    async def wait_closed(self) -> None:
        """Return when the connection is gone, for whatever reason."""
        await self._protocol.lost

    async def unary_raw(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout_nano: int = 0,
        metadata: Metadata | None = None,
    ) -> bytes:
        """One unary call with payload bytes in and out."""
        protocol = self._protocol
        sid = protocol.open(service, method, payload, 0, timeout_nano, metadata)
        waiter: asyncio.Future[Response] = protocol.loop.create_future()
        protocol.pending[sid] = waiter
        try:
            if protocol.paused:
                await protocol.drain()
            if timeout_nano > 0:
                try:
                    async with asyncio.timeout(timeout_nano / 1e9):
                        response = await waiter
                except TimeoutError:
                    raise protocol.error(Code.DEADLINE_EXCEEDED, "context deadline exceeded") from None
            else:
                response = await waiter
        finally:
            if protocol.pending.pop(sid, None) is not None:
                protocol.core.forget(sid)
        if response.code:
            raise protocol.error(response.code, response.message)
        return response.payload

    async def unary(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[T],
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> T:
        """One unary call with protobuf messages; ``timeout`` in seconds."""
        if timeout is not None or metadata:
            payload = await self.unary_raw(
                service, method, request.SerializeToString(), timeout_nano(timeout), metadata
            )
            return response_type.FromString(payload)  # type: ignore[attr-defined,no-any-return]
        protocol = self._protocol
        sid = protocol.open(service, method, request.SerializeToString(), 0, 0, None)
        waiter: asyncio.Future[Response] = protocol.loop.create_future()
        protocol.pending[sid] = waiter
        try:
            if protocol.paused:
                await protocol.drain()
            response = await waiter
        finally:
            if protocol.pending.pop(sid, None) is not None:
                protocol.core.forget(sid)
        if response.code:
            raise protocol.error(response.code, response.message)
        return response_type.FromString(response.payload)  # type: ignore[attr-defined,no-any-return]

    async def open_stream(
        self,
        service: str,
        method: str,
        payload: bytes | None,
        flags: int,
        timeout_nano: int = 0,
        metadata: Metadata | None = None,
    ) -> ClientStream[bytes, bytes]:
        """A streaming call on raw bytes; ``flags`` are the Request's (0x01 server stream,
        0x02 client or bidi stream)."""
        return self._open(service, method, payload or b"", flags, timeout_nano, metadata, identity, identity)

    def _open(
        self,
        service: str,
        method: str,
        payload: bytes,
        flags: int,
        timeout_nano: int,
        metadata: Metadata | None,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
    ) -> ClientStream[Any, Any]:
        protocol = self._protocol
        sid = protocol.open(service, method, payload, flags, timeout_nano, metadata)
        stream: ClientStream[Any, Any] = ClientStream(protocol, sid, encode, decode)
        protocol.pending[sid] = stream
        return stream

    async def server_stream(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[T],
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[T]:
        """A server-streaming call: the responses, as they arrive."""
        stream: ClientStream[Any, T] = self._open(
            service,
            method,
            request.SerializeToString(),
            FLAG_REMOTE_CLOSED,
            timeout_nano(timeout),
            metadata,
            identity,
            response_type.FromString,  # type: ignore[attr-defined]
        )
        try:
            while (message := await stream.recv()) is not None:
                yield message
        finally:
            await stream.aclose()

    async def stream(
        self,
        service: str,
        method: str,
        response_type: type[T],
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> ClientStream[Any, T]:
        """A client-streaming or bidirectional call with protobuf messages."""
        return self._open(
            service,
            method,
            b"",
            FLAG_REMOTE_OPEN,
            timeout_nano(timeout),
            metadata,
            serialize,
            response_type.FromString,  # type: ignore[attr-defined]
        )
