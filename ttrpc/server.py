"""The asyncio ttrpc server.

Lifecycle: ``Server()``, then ``register`` generated servicers, ``register_raw`` single
methods and optionally ``set_fallback``; ``await listen_unix(path)`` (any number of
times); finally ``await shutdown(grace)`` (stop accepting, let running calls finish for up
to ``grace`` seconds, cancel the rest) or ``close()`` (at once).

Each call runs in its own task with its ``Context`` in a contextvar
(``current_context()``). The one place an exception becomes a status is ``_Connection._run``:
``RpcError`` travels as itself; anything else goes through ``status_of`` and, if that
does not know it, becomes UNKNOWN with the traceback logged. ``timeout_nano`` becomes the
handler's deadline: the handler is cancelled when it passes and the call answers
DEADLINE_EXCEEDED. A connection that goes away cancels its calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from google.protobuf.message import DecodeError

from .codes import Code
from .creds import PeerCred, peer_cred
from .errors import RpcError
from .frame import FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, MAX_MESSAGE_SIZE
from .messages import metadata_dict
from .protocol import CallStarted, DataReceived, Rejected, ServerConnection
from .service import Kind, MethodSpec, ServiceSpec
from .stream import STALL_TIMEOUT, STREAM_BUFFER, Inbox, Outbox, Stalls

__all__ = [
    "Context",
    "PeerCred",
    "RawCall",
    "RawHandler",
    "Server",
    "ServerStream",
    "StatusOf",
    "current_context",
]

log = logging.getLogger("ttrpc.server")

StatusOf = Callable[[BaseException], "tuple[int, str] | None"]
RecvT = TypeVar("RecvT")
SendT = TypeVar("SendT")

_current: contextvars.ContextVar[Context] = contextvars.ContextVar("ttrpc_context")


def current_context() -> Context:
    """The Context of the handler running in this task (LookupError outside one)."""
    return _current.get()


class Context:
    """What a handler knows about its call.

    ``metadata`` maps lower-case keys to every value received; ``deadline`` is on the
    ``loop.time()`` clock, or None without a timeout; ``peer`` is the connecting process.
    """

    __slots__ = ("service", "method", "metadata", "deadline", "peer", "stream_id", "_time")

    def __init__(
        self,
        service: str,
        method: str,
        metadata: dict[str, list[str]],
        deadline: float | None,
        peer: PeerCred,
        stream_id: int,
        time: Callable[[], float],
    ) -> None:
        self.service = service
        self.method = method
        self.metadata = metadata
        self.deadline = deadline
        self.peer = peer
        self.stream_id = stream_id
        self._time = time

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._time())

    def __repr__(self) -> str:
        return f"<Context /{self.service}/{self.method} stream={self.stream_id}>"


class RawCall:
    """One call as payload bytes, for handlers that forward without decoding.

    ``payload`` is the Request's payload; ``flags`` the Request's flags (0 unary,
    0x01 server stream, 0x02 client sends data frames); ``metadata`` is the Context's
    (lower-case keys to value lists), so it can be handed on to a client call as is. ``recv()`` returns the next data
    frame's bytes, or None once the client closed its side (at once if it never opened
    it). A call ends with exactly one of ``respond`` (unary Response), ``close`` (Data
    0x05 after ``send``-ing data frames) or ``fail`` (Response with a status); if the
    handler returns without, the server ends it: ``close`` for a streaming request,
    INTERNAL for a unary one.
    """

    __slots__ = (
        "service",
        "method",
        "payload",
        "flags",
        "timeout_nano",
        "metadata",
        "stream_id",
        "finished",
        "_conn",
        "_inbox",
        "_task",
    )

    def __init__(
        self, conn: _Connection, stream_id: int, event: CallStarted, metadata: dict[str, list[str]]
    ) -> None:
        request = event.request
        self.service = request.service
        self.method = request.method
        self.payload = request.payload
        self.flags = event.flags
        self.timeout_nano = request.timeout_nano
        self.metadata = metadata
        self.stream_id = stream_id
        self.finished = False
        self._conn = conn
        self._inbox: Inbox | None = None
        self._task: asyncio.Task[None] | None = None

    async def recv(self) -> bytes | None:
        if self._inbox is None:
            return None
        return await self._inbox.get()

    async def send(self, payload: bytes) -> None:
        """Send one data frame."""
        if self.finished:
            raise RpcError(Code.FAILED_PRECONDITION, "ttrpc: stream already finished")
        conn = self._conn
        if conn.closed:
            raise RpcError(Code.CANCELLED, "ttrpc: connection closed")
        conn.write(conn.core.data(self.stream_id, payload))
        if conn.paused:
            await conn.drain()

    async def respond(self, payload: bytes) -> None:
        self._end(self._conn.core.response(self.stream_id, payload))

    async def close(self) -> None:
        self._end(self._conn.core.close(self.stream_id))

    async def fail(self, code: int, message: str) -> None:
        self._end(self._conn.core.error(self.stream_id, code, message))

    def _end(self, frame: bytes) -> None:
        if self.finished:
            raise RpcError(Code.FAILED_PRECONDITION, "ttrpc: stream already finished")
        self.finished = True
        self._conn.end_call(self, frame)

    def _fail_now(self, code: int, message: str) -> None:
        if not self.finished:
            self._end(self._conn.core.error(self.stream_id, code, message))


class ServerStream(Generic[RecvT, SendT]):
    """A typed view of a streaming call: ``recv()`` (None at end), ``send(msg)``,
    ``async for msg in stream``. A Request payload, if any, is the first message."""

    __slots__ = ("_call", "_decode", "_first")

    def __init__(self, call: RawCall, decode: Callable[[bytes], RecvT]) -> None:
        self._call = call
        self._decode = decode
        self._first = call.payload or None

    async def recv(self) -> RecvT | None:
        data = self._first
        if data is not None:
            self._first = None
        else:
            data = await self._call.recv()
            if data is None:
                return None
        return _decode(self._decode, data)

    async def send(self, message: SendT) -> None:
        await self._call.send(message.SerializeToString())  # type: ignore[attr-defined]

    def __aiter__(self) -> AsyncIterator[RecvT]:
        return self

    async def __anext__(self) -> RecvT:
        message = await self.recv()
        if message is None:
            raise StopAsyncIteration
        return message


RawHandler = Callable[[Context, RawCall], Awaitable[None]]


class _Method:
    __slots__ = ("invoke", "kind", "streams_out", "unary")

    def __init__(
        self,
        invoke: RawHandler,
        kind: Kind | None,
        unary: tuple[Callable[..., Any], Callable[[bytes], Any]] | None = None,
    ) -> None:
        self.invoke = invoke
        self.kind = kind
        self.unary = unary
        """(handler, request parser) of a typed unary method: run without the invoke layer."""
        self.streams_out = kind in (Kind.SERVER_STREAM, Kind.BIDI)
        """Answers with data frames, which a 1.1 peer (no stream flags) cannot take."""


def _decode(parse: Callable[[bytes], RecvT], data: bytes) -> RecvT:
    try:
        return parse(data)
    except DecodeError as exc:
        raise RpcError(Code.INVALID_ARGUMENT, f"failed to decode request: {exc}") from None


def _typed(spec: MethodSpec, fn: Callable[..., Any]) -> RawHandler:
    parse = spec.request_type.FromString
    kind = spec.kind
    if kind is Kind.UNARY:

        async def unary(ctx: Context, call: RawCall) -> None:
            response = await fn(_decode(parse, call.payload), ctx)
            call._end(call._conn.core.response(call.stream_id, response.SerializeToString()))

        return unary
    if kind is Kind.SERVER_STREAM:

        async def server_stream(ctx: Context, call: RawCall) -> None:
            async for response in fn(_decode(parse, call.payload), ctx):
                await call.send(response.SerializeToString())
            await call.close()

        return server_stream
    if kind is Kind.CLIENT_STREAM:

        async def client_stream(ctx: Context, call: RawCall) -> None:
            response = await fn(ServerStream(call, parse), ctx)
            await call.respond(response.SerializeToString())

        return client_stream

    async def bidi(ctx: Context, call: RawCall) -> None:
        await fn(ServerStream(call, parse), ctx)
        if not call.finished:
            await call.close()

    return bidi


class Server:
    """A ttrpc server; see the module docstring for its lifecycle.

    ``status_of`` maps a handler's exception to ``(code, message)``, or None when it is
    not a known kind. With ``require_same_uid`` a peer whose SO_PEERCRED uid differs from
    this process's effective uid is disconnected before any frame is read.
    """

    def __init__(
        self,
        status_of: StatusOf | None = None,
        require_same_uid: bool = False,
        *,
        stream_buffer: int = STREAM_BUFFER,
        stall_timeout: float = STALL_TIMEOUT,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.status_of = status_of
        self.require_same_uid = require_same_uid
        self.stream_buffer = stream_buffer
        self.stall_timeout = stall_timeout
        self.max_message_size = max_message_size
        self._methods: dict[tuple[str, str], _Method] = {}
        self._services: set[str] = set()
        self._fallback: _Method | None = None
        self._listeners: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()
        self._closing = False
        self._idle: asyncio.Event | None = None

    def register(self, servicer: object) -> None:
        """Serve every method of a generated ``<Svc>Servicer`` subclass instance."""
        spec: ServiceSpec = getattr(type(servicer), "__ttrpc_service__")
        entries = {}
        for name, m in spec.methods.items():
            fn = getattr(servicer, name)
            unary = (fn, m.request_type.FromString) if m.kind is Kind.UNARY else None
            entries[(spec.name, name)] = _Method(_typed(m, fn), m.kind, unary)
        self._add(entries)
        self._services.add(spec.name)

    def register_raw(self, service: str, method: str, handler: RawHandler) -> None:
        """Serve one method with a handler that takes payload bytes."""
        self._add({(service, method): _Method(handler, None)})
        self._services.add(service)

    def set_fallback(self, handler: RawHandler) -> None:
        """Serve every call to a service nothing is registered for."""
        self._fallback = _Method(handler, None)

    def _add(self, entries: dict[tuple[str, str], _Method]) -> None:
        for service, method in entries:
            if (service, method) in self._methods:
                raise ValueError(f"ttrpc: method /{service}/{method} is already registered")
        self._methods.update(entries)

    def lookup(self, service: str, method: str) -> _Method | str:
        """The method serving a call, or the UNIMPLEMENTED message."""
        entry = self._methods.get((service, method))
        if entry is not None:
            return entry
        if service in self._services:
            return f"method {method}"
        if self._fallback is not None:
            return self._fallback
        return f"service {service}"

    async def listen_unix(self, path: str, backlog: int = 1024) -> None:
        """Bind ``path`` (replacing a stale socket), chmod 0660, listen."""
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o660)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        await self.listen_socket(sock)

    async def listen_socket(self, sock: socket.socket) -> None:
        """Serve connections accepted on an already listening unix socket."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        self._listeners.append(listener)

    async def serve_connection(self, sock: socket.socket) -> None:
        """Serve one already connected socket (socketpairs, handed-over fds)."""
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: _Connection(self), sock)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _connection_done(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if self._idle is not None and not self._connections:
            self._idle.set()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let running calls finish for ``grace`` seconds, then cancel."""
        self._closing = True
        for listener in self._listeners:
            listener.close()
        self._idle = asyncio.Event()
        for conn in list(self._connections):
            conn.close_if_idle()
        if self._connections:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                pass
        self.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    def close(self) -> None:
        """Stop at once: close listeners, drop connections, cancel every call."""
        self._closing = True
        for listener in self._listeners:
            listener.close()
        for conn in list(self._connections):
            conn.abort()

    @property
    def closing(self) -> bool:
        return self._closing


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a server is listening", path)


class _Connection(asyncio.BufferedProtocol):
    """One accepted connection: feeds the sans-IO core, runs a task per call."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.core = ServerConnection(server.max_message_size)
        self.get_buffer = self.core.decoder.get_buffer  # type: ignore[method-assign]  # two Python calls less per read
        self.calls: dict[int, RawCall] = {}
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self.loop = asyncio.get_running_loop()
        self.peer = PeerCred(0, -1, -1)
        self.stalls: Stalls | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peer = peer_cred(transport.get_extra_info("socket"))
        server = self.server
        if server.closing or (server.require_same_uid and self.peer.uid != os.geteuid()):
            self._closed = True
            transport.abort()
            return
        self.stalls = Stalls(
            self.loop, transport.pause_reading, transport.resume_reading, server.stall_timeout
        )
        self.outbox = Outbox(self.loop, transport)
        server._connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.outbox.received()
        for event in self.core.buffer_updated(nbytes):
            if isinstance(event, CallStarted):
                self._start(event)
            elif isinstance(event, DataReceived):
                self._data(event)
            else:
                self._reject(event)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self.stalls is not None:
            self.stalls.clear()
        for call in list(self.calls.values()):
            call.finished = True
            if call._task is not None:
                call._task.cancel()
        self.calls.clear()
        self._wake_drainers()
        self.server._connection_done(self)

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
        if self._closed:
            raise RpcError(Code.CANCELLED, "ttrpc: connection closed")
        if self.paused:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: bytes) -> None:
        """Send bytes; dropped once the connection is gone."""
        if not self._closed:
            self.outbox.write(data)

    def _start(self, event: CallStarted) -> None:
        sid = event.stream_id
        request = event.request
        server = self.server
        if server.closing:
            self._answer(sid, Code.UNAVAILABLE, "ttrpc: server shutting down")
            return
        entry = server._methods.get((request.service, request.method)) or server.lookup(
            request.service, request.method
        )
        if entry.__class__ is str:
            self._answer(sid, Code.UNIMPLEMENTED, entry)
            return
        assert isinstance(entry, _Method)
        flags = event.flags
        if flags == 0 and entry.streams_out:
            self._answer(sid, Code.UNIMPLEMENTED, f"method {request.method} needs a streaming call")
            return
        metadata = metadata_dict(request.metadata) if request.metadata else {}
        call = RawCall(self, sid, event, metadata)
        if flags & FLAG_REMOTE_OPEN and not flags & FLAG_REMOTE_CLOSED:
            call._inbox = Inbox(server.stream_buffer)
        deadline = None
        if request.timeout_nano > 0:
            deadline = self.loop.time() + request.timeout_nano / 1e9
        ctx = Context(
            request.service,
            request.method,
            metadata,
            deadline,
            self.peer,
            sid,
            self.loop.time,
        )
        self.calls[sid] = call
        call._task = self.loop.create_task(self._run(call, entry, ctx))

    def _answer(self, sid: int, code: int, message: str) -> None:
        self.core.finish(sid)
        self.write(self.core.error(sid, code, message))

    def _data(self, event: DataReceived) -> None:
        call = self.calls.get(event.stream_id)
        inbox = call._inbox if call is not None else None
        if inbox is None:
            return
        if event.payload is not None and not inbox.put(event.payload):
            assert self.stalls is not None
            assert call is not None
            self.stalls.overflowed(inbox, lambda: self._overflow(call))
        if event.end:
            inbox.end()

    def _overflow(self, call: RawCall) -> None:
        if call._inbox is not None:
            call._inbox.fail(RpcError(Code.RESOURCE_EXHAUSTED, "stream buffer full"))
        self._abort_call(call, Code.RESOURCE_EXHAUSTED, "stream buffer full")

    def _reject(self, event: Rejected) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None and not call.finished:
            self._abort_call(call, event.code, event.message)
        else:
            self.write(self.core.error(event.stream_id, event.code, event.message))

    def _abort_call(self, call: RawCall, code: int, message: str) -> None:
        call._fail_now(code, message)
        if call._task is not None:
            call._task.cancel()

    def end_call(self, call: RawCall, frame: bytes) -> None:
        """``call`` sent its last frame: it no longer counts as open."""
        self.core.finish(call.stream_id)
        if call._inbox is not None and self.stalls is not None:
            self.stalls.release(call._inbox)
        self.write(frame)

    async def _run(self, call: RawCall, entry: _Method, ctx: Context) -> None:
        _current.set(ctx)
        invoke = entry.invoke
        try:
            if ctx.deadline is None:
                if entry.unary is not None:
                    fn, parse = entry.unary
                    response = await fn(_decode(parse, call.payload), ctx)
                    call._end(self.core.response(call.stream_id, response.SerializeToString()))
                else:
                    await invoke(ctx, call)
            else:
                timeout = asyncio.timeout_at(ctx.deadline)
                try:
                    async with timeout:
                        await invoke(ctx, call)
                except TimeoutError:
                    if not timeout.expired():
                        raise
                    call._fail_now(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
        except asyncio.CancelledError:
            if not self._closed:
                call._fail_now(Code.CANCELLED, "context canceled")
        except RpcError as exc:
            call._fail_now(exc.code, exc.message)
        except Exception as exc:
            self._fail_with(call, ctx, exc)
        else:
            if not call.finished:
                if call.flags:
                    await call.close()
                else:
                    call._fail_now(Code.INTERNAL, "handler returned without a response")
        finally:
            self.calls.pop(call.stream_id, None)
            if self.server.closing and not self.calls:
                self.close_if_idle()

    def _fail_with(self, call: RawCall, ctx: Context, exc: Exception) -> None:
        status = None
        status_of = self.server.status_of
        if status_of is not None:
            try:
                status = status_of(exc)
            except Exception:
                log.exception("ttrpc: status_of failed")
        if status is None:
            log.error("ttrpc: /%s/%s failed", ctx.service, ctx.method, exc_info=exc)
            status = (Code.UNKNOWN, str(exc) or type(exc).__name__)
        call._fail_now(*status)

    def close_if_idle(self) -> None:
        if not self.calls and self.transport is not None and not self._closed:
            self.outbox.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
