"""The proxy's Python data plane: ttrpc frames spliced between clients and backends.

It serves behind the C relay (relay.py), which hands it, over a socketpair per client that
it serves as one more client connection, every frame the relay does not carry itself (own
services, unknown services, a namespace's first call, bad requests, unreachable backends,
a drain); or alone, when the relay is off or not built. Either way:

The front door speaks ttrpc with each client; a routed call is never decoded beyond its
Request envelope (service name and namespace metadata). Its frames travel unchanged (body
bytes, flags, payload, ``timeout_nano``, metadata) to one shared connection per backend
replica, only the stream id rewritten (backends see odd, increasing ids per connection, as
ttrpc 1.2 requires); every frame the backend sends for that stream comes back the same way.
No task, no protobuf, no copy beyond the frame itself, per call; a backend stream takes the
client's own id when that id is still ahead on its connection, and then a frame that arrives
alone in one read travels verbatim, its header not even rewritten.

Per call: the client's Request picks the replica with the fewest open streams (connected
first); a Response, or a Data frame with ``remote closed``, from the backend ends the
stream. A backend connection that drops fails each of its open streams with UNAVAILABLE
naming the service; the next call reconnects. A client that goes away has its streams
forgotten (late replies are dropped). Calls to the proxy's own services travel unchanged
over a socketpair to the process's ttrpc server (same stream ids: a dedicated connection per
client), so they get the same server as every other process.

Flow control: a client whose socket buffer is full stops the proxy reading from the
backend connections its streams use, until it drains (as a ttrpc server stops reading a
peer it cannot answer); other clients on those connections wait meanwhile, memory stays
bounded.

Rejections follow ttrpc: even or non-increasing stream ids and Data for an unknown stream ->
INVALID_ARGUMENT, frames over 4 MiB -> RESOURCE_EXHAUSTED (body discarded unread), unknown
service -> UNIMPLEMENTED ``service <name>``, an invalid namespace -> INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

from moorage import errdefs
from moorage.namespaces import validate_namespace
from ttrpc.codes import Code
from ttrpc.errors import ProtocolError
from ttrpc.frame import (
    DATA,
    FLAG_NO_DATA,
    FLAG_REMOTE_CLOSED,
    FLAG_REMOTE_OPEN,
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    REQUEST,
    RESPONSE,
    Frame,
    FrameDecoder,
    Oversized,
    pack_header,
)
from ttrpc.messages import encode_error
from ttrpc.protocol import oversize_message

from .envelope import route_of

log = logging.getLogger("moorage.proxy.splice")

CONNECT_TIMEOUT = 2.0
RETRY_AFTER = 0.5
"""Seconds a replica that refused a connection is left out while another one serves."""
_MAX_SID = (1 << 31) - 1
_ADOPT = 1 << 20
"""The furthest a backend connection's next id jumps to take a client's id: a client with
huge ids uses up a connection's ids in no fewer than 2^11 calls."""
_unpack_header = struct.Struct(">IIBB").unpack_from
_WHOLE = MAX_MESSAGE_SIZE + HEADER_SIZE
"""A read of at most this many bytes may be one whole frame within the limit (the fast path)."""


class _Scope:
    """Whether a read callback is running, and the batches it filled (written when it ends)."""

    __slots__ = ("active", "dirty")

    def __init__(self) -> None:
        self.active = False
        self.dirty: list[_Batch] = []

    def enter(self) -> None:
        self.active = True

    def exit(self) -> None:
        self.active = False
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for batch in dirty:
                batch.flush()


_reading = _Scope()
_JOIN_LIMIT = 64 * 1024
"""Chunks up to this many bytes in all are joined into one buffer (one plain write)."""


class _Batch:
    """Bytes for one transport, written together: frames added while a read callback runs
    leave in one write when it returns (one syscall per destination per read, no loop turn
    in between); frames added elsewhere leave on the next loop turn."""

    __slots__ = ("transport", "chunks", "scheduled", "loop")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.scheduled = False
        self.loop = asyncio.get_running_loop()

    def add(self, *data: bytes) -> None:
        self.chunks.extend(data)
        if not self.scheduled:
            self.schedule()

    def put(self, frame: bytes) -> None:
        """One whole frame: written at once unless bytes wait before it or a read callback is
        gathering this destination's frames."""
        if self.scheduled or _reading.active:
            self.chunks.append(frame)
            if not self.scheduled:
                self.schedule()
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    def schedule(self) -> None:
        self.scheduled = True
        if _reading.active:
            _reading.dirty.append(self)
        else:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        chunks = self.chunks
        if not chunks:
            return
        self.chunks = []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(chunks)
        if n == 2 and len(chunks[1]) <= _JOIN_LIMIT:  # one frame: header + body
            transport.write(chunks[0] + chunks[1])
        elif n <= 64 and sum(map(len, chunks)) <= _JOIN_LIMIT:
            transport.write(b"".join(chunks))
        else:
            transport.writelines(chunks)


def _whole_frames(data: bytes) -> tuple[list[tuple[int, int, int, int, int, int]], int]:
    """The whole frames within the limit at the start of ``data``, as (length, stream id,
    type, flags, start, stop) with ``data[start:stop]`` the frame, and where they end."""
    frames = []
    pos, n = 0, len(data)
    while n - pos >= HEADER_SIZE:
        length, sid, mtype, flags = _unpack_header(data, pos)
        stop = pos + HEADER_SIZE + length
        if stop > n or length > MAX_MESSAGE_SIZE:
            break
        frames.append((length, sid, mtype, flags, pos, stop))
        pos = stop
    return frames, pos


def _request_frame(sid: int, flags: int, data: bytes, start: int, client_sid: int) -> bytes:
    """The Request in ``data[start:]`` as a frame of stream ``sid``: ``data`` itself when it is
    the client's whole frame (``start`` is HEADER_SIZE) and the id is the client's."""
    if start and sid == client_sid:
        return data
    return pack_header(len(data) - start, sid, REQUEST, flags) + (data[start:] if start else data)


def _error_frame(sid: int, code: int, message: str) -> bytes:
    body = encode_error(code, message)
    return pack_header(len(body), sid, RESPONSE, 0) + body


class Upstream(asyncio.Protocol):
    """One connection to one backend replica, shared by every client."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.decoder = FrameDecoder()
        self.partial = False
        """The decoder holds part of a frame: the next read is not a frame of its own."""
        self.transport: asyncio.Transport | None = None
        self.next_sid = 1
        self.streams: dict[int, tuple[Front, int, str]] = {}
        self.sending: set[int] = set()
        """Streams whose client may still send data frames (opened with remote-open)."""
        self.closed = False
        self.retired = False
        """Its ids are used up: it takes no new call and closes when the open ones end."""
        self.pausers: set[Front] = set()
        """Clients that cannot take more bytes: reading from this backend waits for them."""
        self.out = _Batch()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.out.transport = self.transport

    def pause_for(self, front: Front) -> None:
        if not self.pausers and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.pausers.add(front)

    def resume_for(self, front: Front) -> None:
        self.pausers.discard(front)
        if not self.pausers and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        n = len(data)
        if not self.partial and HEADER_SIZE <= n <= _WHOLE:
            length, sid, mtype, flags = _unpack_header(data)
            if length + HEADER_SIZE == n:  # the common case: one whole frame, passed on at once
                entry = self.streams.get(sid)
                if entry is None:
                    return
                front, fsid, _ = entry
                if mtype == RESPONSE or (mtype == DATA and flags & FLAG_REMOTE_CLOSED):
                    self._ended(sid, front, fsid)
                front.out.put(data if fsid == sid else pack_header(length, fsid, mtype, flags) + data[HEADER_SIZE:])
                return
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        """Several frames, or parts: whole frames are taken straight from ``data`` (a frame
        whose stream keeps the client's id is passed on as the same bytes), the rest goes
        through the decoder. Frames for one client leave in one write when the read ends."""
        streams = self.streams
        scope = _reading
        scope.active = True
        pos = 0
        try:
            if not self.partial:
                frames, pos = _whole_frames(data)
                for length, sid, mtype, flags, start, stop in frames:
                    entry = streams.get(sid)
                    if entry is not None:
                        front, fsid, _ = entry
                        if mtype == RESPONSE or (mtype == DATA and flags & FLAG_REMOTE_CLOSED):
                            self._ended(sid, front, fsid)
                        out = front.out
                        out.chunks.append(
                            data[start:stop] if fsid == sid
                            else pack_header(length, fsid, mtype, flags) + data[start + HEADER_SIZE : stop]
                        )
                        if not out.scheduled:
                            out.scheduled = True
                            scope.dirty.append(out)
                if pos == len(data):
                    return
            for ev in self.decoder.feed(data[pos:] if pos else data):
                sid, mtype, flags, body = ev  # tuple unpacking: faster than four attribute reads
                entry = streams.get(sid)
                if entry is None:
                    continue
                front, fsid, service = entry
                if ev.__class__ is Oversized:
                    del streams[sid]
                    front.send(_error_frame(fsid, Code.RESOURCE_EXHAUSTED, oversize_message(ev.length)))
                    continue
                assert body.__class__ is bytes
                if mtype == RESPONSE or (mtype == DATA and flags & FLAG_REMOTE_CLOSED):
                    self._ended(sid, front, fsid)
                front.send(pack_header(len(body), fsid, mtype, flags), body)
        finally:
            self.partial = self.decoder.in_frame
            scope.exit()

    def retire(self) -> None:
        """Take no new calls; the last open one to end closes the connection (``_ended``,
        ``forget``)."""
        self.retired = True
        if self.replica.upstream is self:
            self.replica.upstream = None

    def _ended(self, sid: int, front: Front, fsid: int) -> None:
        """The backend closed stream ``sid`` (the client's ``fsid``)."""
        del self.streams[sid]
        if self.retired and not self.streams:
            self.close()
        if self.sending:
            self.sending.discard(sid)
        if front.streams.pop(fsid, None) is not None and front.splice._idle is not None:
            front.splice.stream_done()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.replica.upstream is self:
            self.replica.upstream = None
        streams, self.streams = self.streams, {}
        self.sending.clear()
        process = self.replica.process
        for front, fsid, service in streams.values():
            front.done(fsid)
            front.send(
                _error_frame(
                    fsid, Code.UNAVAILABLE, f"service {service} is unavailable: {process} went away during the call"
                )
            )

    def open(self, front: Front, fsid: int, service: str, flags: int, data: bytes, start: int) -> int:
        """Send the Request in ``data[start:]`` (``start`` is 0 for a bare body, HEADER_SIZE for
        the client's whole frame) on a new stream; returns the stream's id here."""
        sid = self.next_sid
        if sid < fsid <= sid + _ADOPT and fsid <= _MAX_SID:  # the client's id is ahead: keep it
            sid = fsid
        self.next_sid = sid + 2
        self.streams[sid] = (front, fsid, service)
        if flags & FLAG_REMOTE_OPEN:
            self.sending.add(sid)
        self.out.put(_request_frame(sid, flags, data, start, fsid))
        if self.next_sid > _MAX_SID:  # ids used up: new calls go to a fresh connection
            self.retire()
        return sid

    def data(self, sid: int, flags: int, body: bytes) -> None:
        if sid in self.streams:
            if flags & FLAG_REMOTE_CLOSED:
                self.sending.discard(sid)
            self.out.add(pack_header(len(body), sid, DATA, flags), body)

    def forget(self, sid: int) -> None:
        """Drop the stream's replies. A client gone mid-stream also closes its sending side
        toward the backend, so the handler sees the end of its input (a Write session
        releases its ref) instead of waiting for frames that will never come."""
        self.streams.pop(sid, None)
        if sid in self.sending:
            self.sending.discard(sid)
            self.out.add(pack_header(0, sid, DATA, FLAG_REMOTE_CLOSED | FLAG_NO_DATA), b"")
        if self.retired and not self.streams:
            self.out.flush()
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Replica:
    """One backend socket; ``upstream`` is its live connection (None until needed)."""

    def __init__(self, process: str, path: str) -> None:
        self.process = process
        self.path = path
        self.upstream: Upstream | None = None
        self.down_until = 0.0
        """loop.time() before which a failed replica is not tried on the fast path."""
        self._connecting: asyncio.Task[Upstream] | None = None

    @property
    def load(self) -> int:
        up = self.upstream
        return len(up.streams) if up is not None else 0

    async def connect(self) -> Upstream:
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._connect())
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._connecting = None

    async def _connect(self) -> Upstream:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_unix_connection(lambda: Upstream(self), self.path), CONNECT_TIMEOUT
            )
        except BaseException:
            self.down_until = loop.time() + RETRY_AFTER
            raise
        self.down_until = 0.0
        self.upstream = proto
        return proto

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None


class Service:
    """The replicas a service name routes to (shared by the services of one process)."""

    def __init__(self, process: str, paths: Collection[str]) -> None:
        self.process = process
        self.replicas = [Replica(process, p) for p in paths]

    def ready(self) -> Upstream | None:
        """The connected replica with the fewest open streams; None when a replica that may
        be reachable is not connected yet and the connected ones are busy (so the slow path
        connects it and load spreads to every replica)."""
        best: Upstream | None = None
        best_load = -1
        now = -1.0
        for r in self.replicas:
            up = r.upstream
            if up is None:
                if r.down_until:
                    if now < 0:
                        now = asyncio.get_running_loop().time()
                    if r.down_until > now:
                        continue
                if best is None or best_load > 0:
                    return None
                continue
            n = len(up.streams)
            if best is None or n < best_load:
                best, best_load = up, n
        return best

    async def acquire(self, service: str) -> Upstream:
        ready = self.ready()
        if ready is not None:
            return ready
        order = sorted(self.replicas, key=lambda r: (r.load, r.upstream is None, r.down_until))
        last: BaseException | None = None
        for r in order:
            if r.upstream is not None and not r.upstream.closed:
                return r.upstream
            try:
                return await r.connect()
            except (OSError, TimeoutError) as exc:
                last = exc
        reason = getattr(last, "strerror", None) or str(last) or type(last).__name__
        raise errdefs.Unavailable(f"service {service} is unavailable: {self.process} is not running ({reason})")


NamespaceSeen = Callable[[str], Awaitable[None]]
OwnConnector = Callable[[socket.socket], Awaitable[None]]


class NamespaceMirror(Protocol):
    """Who else routes by the known namespaces (the C relay): told of each change."""

    def know(self, ns: str) -> None: ...
    def forget(self, ns: str) -> None: ...


class Splice:
    """Shared state of the front door: the route table and the proxy's own services."""

    def __init__(
        self,
        routes: Mapping[str, Service],
        own: Collection[str],
        serve_own: OwnConnector,
        on_namespace: NamespaceSeen | None = None,
        known_namespaces: Collection[str] = (),
    ) -> None:
        self.routes = dict(routes)
        self.own = frozenset(own)
        self.serve_own = serve_own
        self.on_namespace = on_namespace
        self.known_namespaces: set[str] = set(known_namespaces)
        self.mirror: NamespaceMirror | None = None
        self.fronts: set[Front] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Event | None = None
        self._gone: asyncio.Event | None = None  # draining: set when no client is left
        self.closing = False

    def services(self) -> list[Service]:
        seen: dict[int, Service] = {}
        for svc in self.routes.values():
            seen.setdefault(id(svc), svc)
        return list(seen.values())

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def namespace_seen(self, ns: str) -> None:
        self.known_namespaces.add(ns)
        if self.mirror is not None:
            self.mirror.know(ns)
        if self.on_namespace is not None:
            self.spawn(self._record(ns))

    def forget_namespace(self, ns: str) -> None:
        """``ns`` is no longer known (deleted, or its recording failed): the next call that
        names it is validated and recorded again."""
        self.known_namespaces.discard(ns)
        if self.mirror is not None:
            self.mirror.forget(ns)

    async def _record(self, ns: str) -> None:
        assert self.on_namespace is not None
        try:
            await self.on_namespace(ns)
        except Exception:
            self.forget_namespace(ns)
            log.exception("recording namespace %s failed", ns)

    def front_done(self, front: Front) -> None:
        self.fronts.discard(front)
        if self._idle is not None and not any(f.streams for f in self.fronts):
            self._idle.set()
        if self._gone is not None and not self.fronts:
            self._gone.set()

    def stream_done(self) -> None:
        if self._idle is not None and not any(f.streams for f in self.fronts):
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Refuse new calls and wait up to ``grace`` seconds in all for open streams to end
        and for their answers to be written out to the clients; then drop every client."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.closing = True
        self._idle = asyncio.Event()
        if any(f.streams for f in self.fronts):
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                pass
        self._gone = asyncio.Event()
        for front in list(self.fronts):
            front.close()  # once what it was sent is written (a transport's close)
        if self.fronts:
            try:
                await asyncio.wait_for(self._gone.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
        self.close()

    def close(self) -> None:
        for front in list(self.fronts):
            front.abort()
        for svc in self.services():
            for r in svc.replicas:
                r.close()


class _OwnPipe(asyncio.Protocol):
    """The proxy end of a socketpair to the process's ttrpc server: replies go back verbatim."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.decoder = FrameDecoder()

    def data_received(self, data: bytes) -> None:
        front = self.front
        _reading.enter()
        try:
            for ev in self.decoder.feed(data):
                if ev.__class__ is Oversized:
                    front.done(ev.stream_id)
                    front.send(_error_frame(ev.stream_id, Code.RESOURCE_EXHAUSTED, oversize_message(ev.length)))
                    continue
                if ev.type == RESPONSE or (ev.type == DATA and ev.flags & FLAG_REMOTE_CLOSED):
                    front.done(ev.stream_id)
                body = ev.body  # type: ignore[union-attr]
                front.send(pack_header(len(body), ev.stream_id, ev.type, ev.flags), body)
        finally:
            _reading.exit()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.own_lost()


_OWN = object()




class Front(asyncio.Protocol):
    """One client connection to the front door."""

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self.decoder = FrameDecoder()
        self.partial = False
        """The decoder holds part of a frame: the next read is not a frame of its own."""
        self.transport: asyncio.Transport | None = None
        self.last_sid = 0
        self.streams: dict[int, Any] = {}  # front sid -> (Upstream, backend sid) | _OWN
        self.own: asyncio.Transport | None = None
        self.backlog: deque[Frame | Oversized] | None = None
        self.closed = False
        self.paused: set[Upstream] = set()
        self.out = _Batch()

    # transport side ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.out.transport = self.transport
        self.splice.fronts.add(self)

    def data_received(self, data: bytes) -> None:
        n = len(data)
        if not self.partial and self.backlog is None and HEADER_SIZE <= n <= _WHOLE:
            length, sid, mtype, flags = _unpack_header(data)
            if length + HEADER_SIZE == n:  # the common case: one whole frame
                if mtype == REQUEST and sid & 1 and sid > self.last_sid:
                    self.last_sid = sid
                    self.request(sid, flags, data, HEADER_SIZE)
                else:
                    scope = _reading
                    scope.active = True
                    try:
                        self.handle(Frame(sid, mtype, flags, data[HEADER_SIZE:]))
                    finally:
                        scope.exit()
                return
        scope = _reading
        scope.active = True
        try:
            self._frames(data)
        finally:
            scope.exit()

    def _frames(self, data: bytes) -> None:
        """Several frames, or parts: whole frames are cut straight from ``data`` (a Request
        whose stream keeps the client's id then travels as the same bytes); the rest goes
        through the decoder. Once a Request waits for a connection, every later frame waits
        behind it, in order."""
        decoder = self.decoder
        pos = 0
        if not self.partial and self.backlog is None:
            frames, end = _whole_frames(data)
            for _, sid, mtype, flags, start, pos in frames:
                frame = data[start:pos]
                if mtype == REQUEST and sid & 1 and sid > self.last_sid:
                    self.last_sid = sid
                    self.request(sid, flags, frame, HEADER_SIZE)
                else:
                    self.handle(Frame(sid, mtype, flags, frame[HEADER_SIZE:]))
                if self.backlog is not None:
                    break
            else:
                pos = end
            if pos == len(data):
                return
        events = decoder.feed(data[pos:] if pos else data)
        self.partial = decoder.in_frame
        for i, ev in enumerate(events):
            if self.backlog is not None:  # waiting for a connection: keep order
                self.backlog.extend(events[i:])
                return
            sid, mtype, flags, body = ev  # tuple unpacking: faster than attribute reads
            if mtype == REQUEST and sid & 1 and sid > self.last_sid and body.__class__ is bytes:
                self.last_sid = sid
                self.request(sid, flags, body, 0)
            else:
                self.handle(ev)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        """This client reads slower than its backends answer: stop reading from them."""
        self.paused = {t[0] for t in self.streams.values() if t is not _OWN}
        for upstream in self.paused:
            upstream.pause_for(self)

    def resume_writing(self) -> None:
        paused, self.paused = self.paused, set()
        for upstream in paused:
            upstream.resume_for(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        for target in self.streams.values():
            if target is not _OWN:
                upstream, bsid = target
                upstream.forget(bsid)
        self.streams.clear()
        if self.own is not None:
            self.own.close()
            self.own = None
        self.splice.front_done(self)

    def send(self, *data: bytes) -> None:
        if not self.closed:
            self.out.add(*data)

    def done(self, fsid: int) -> None:
        if self.streams.pop(fsid, None) is not None and self.splice._idle is not None:
            self.splice.stream_done()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """End the connection once what it was sent is written (connection_lost then)."""
        self.out.flush()
        if self.transport is not None:
            self.transport.close()

    def own_lost(self) -> None:
        self.own = None
        for fsid in [s for s, t in self.streams.items() if t is _OWN]:
            self.done(fsid)
            self.send(_error_frame(fsid, Code.UNAVAILABLE, "proxy is shutting down"))

    def fail(self, sid: int, code: int, message: str) -> None:
        self.send(_error_frame(sid, code, message))

    # frames ------------------------------------------------------------------------

    def handle(self, ev: Frame | Oversized) -> None:
        sid = ev.stream_id
        mtype = ev.type
        if mtype == REQUEST:
            if sid % 2 == 0:
                self.fail(sid, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
                return
            if sid <= self.last_sid:
                self.fail(sid, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
                return
            self.last_sid = sid
            if ev.__class__ is Oversized:
                self.fail(sid, Code.RESOURCE_EXHAUSTED, oversize_message(ev.length))
                return
            self.request(sid, ev.flags, ev.body, 0)  # type: ignore[union-attr]
        elif mtype == DATA:
            target = self.streams.get(sid)
            if target is None:
                self.fail(sid, Code.INVALID_ARGUMENT, "StreamID is no longer active")
                return
            if ev.__class__ is Oversized:
                self.abandon(sid, target)
                self.fail(sid, Code.RESOURCE_EXHAUSTED, oversize_message(ev.length))
                return
            body = ev.body  # type: ignore[union-attr]
            if target is _OWN:
                if self.own is not None:
                    self.own.write(pack_header(len(body), sid, DATA, ev.flags) + body)
            else:
                upstream, bsid = target
                upstream.data(bsid, ev.flags, body)
        # other types: ignored, as ttrpc servers do

    def abandon(self, sid: int, target: Any) -> None:
        self.streams.pop(sid, None)
        if target is not _OWN:
            upstream, bsid = target
            upstream.forget(bsid)

    def request(self, sid: int, flags: int, data: bytes, start: int) -> None:
        """Route the Request in ``data[start:]`` (the client's whole frame when ``start`` is
        HEADER_SIZE, a bare body when 0)."""
        if self.splice.closing:
            self.fail(sid, Code.UNAVAILABLE, "ttrpc: server shutting down")
            return
        try:
            service, namespaces = route_of(data, start)
        except ProtocolError as exc:
            self.fail(sid, Code.INVALID_ARGUMENT, f"failed to decode request: {exc}")
            return
        splice = self.splice
        if service in splice.own:
            if self.own is None:
                self.wait(self._open_own(), sid, flags, data, start, service)
                return
            self.streams[sid] = _OWN
            self.own.write(_request_frame(sid, flags, data, start, sid))
            return
        route = splice.routes.get(service)
        if route is None:
            self.fail(sid, Code.UNIMPLEMENTED, f"service {service}")
            return
        for value in namespaces:
            if value and value not in splice.known_namespaces:
                try:
                    validate_namespace(value)
                except errdefs.InvalidArgument as exc:
                    self.fail(sid, Code.INVALID_ARGUMENT, exc.message)
                    return
                splice.namespace_seen(value)
        replicas = route.replicas
        upstream = replicas[0].upstream if len(replicas) == 1 else route.ready()
        if upstream is None:
            self.wait(route.acquire(service), sid, flags, data, start, service)
            return
        self.streams[sid] = (upstream, upstream.open(self, sid, service, flags, data, start))

    # the slow path: a connection to make before the call can go on -------------------

    def wait(
        self, setup: Awaitable[Upstream | None], sid: int, flags: int, data: bytes, start: int, service: str
    ) -> None:
        """Hold this client's frames (in order) until ``setup`` gives the connection the
        held Request goes to (None: the own-services pipe), then go on with them."""
        self.backlog = deque()
        self.splice.spawn(self._resume(setup, sid, flags, data, start, service))

    async def _resume(
        self, setup: Awaitable[Upstream | None], sid: int, flags: int, data: bytes, start: int, service: str
    ) -> None:
        upstream: Upstream | None = None
        error: str | None = None
        try:
            upstream = await setup
        except errdefs.Unavailable as exc:
            error = exc.message
        except Exception as exc:  # noqa: BLE001 - reported on the call, not raised
            error = f"service {service} is unavailable: proxy: {exc}"
        pending, self.backlog = self.backlog or deque(), None
        if self.closed:  # gone while waiting: what the wait opened is not needed
            if self.own is not None:
                self.own.close()
                self.own = None
            return
        if error is not None:
            self.fail(sid, Code.UNAVAILABLE, error)
        elif upstream is None:
            if self.own is None:
                self.fail(sid, Code.UNAVAILABLE, "proxy is shutting down")
            else:
                self.streams[sid] = _OWN
                self.own.write(_request_frame(sid, flags, data, start, sid))
        elif upstream.closed:
            self.fail(sid, Code.UNAVAILABLE, f"service {service} is unavailable: {upstream.replica.process} went away")
        else:
            self.streams[sid] = (upstream, upstream.open(self, sid, service, flags, data, start))
        while pending and self.backlog is None:
            self.handle(pending.popleft())
        if self.backlog is not None and pending:
            self.backlog.extendleft(reversed(pending))

    async def _open_own(self) -> Upstream | None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self.splice.serve_own(b)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_unix_connection(lambda: _OwnPipe(self), sock=a)
        except BaseException:
            a.close()
            b.close()
            raise
        self.own = transport
        return None
