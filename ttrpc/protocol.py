"""Per-connection ttrpc state for both roles, with no I/O (the sans-IO core).

``ServerConnection`` and ``ClientConnection`` take received bytes and return events;
their encoders return the bytes to send. They keep the per-stream bookkeeping the
protocol needs and nothing else: which stream ids are open, the last client id seen,
which side has closed. Scheduling, buffering and timeouts belong to the transport.

Server rules (containerd/ttrpc 1.2, which 1.1 peers also satisfy):
- A Request opens a stream; its id must be odd and larger than every id before it.
- Data is accepted only on an open stream whose client side is still open; ``remote
  closed`` ends that side, and such a frame must not carry a body (``no data`` marks an
  absent body; a zero-length body without it is an empty message).
- Every violation ends just that stream with a status (``Rejected``), never the connection.
- A body over the limit is discarded unread and ends its stream with RESOURCE_EXHAUSTED.
- Responses from a client, and unknown message types, are ignored.

Nothing here raises on peer input. Encoders raise ``RpcError(RESOURCE_EXHAUSTED)`` for a
body over the limit, which the caller must not send.
"""

from __future__ import annotations

from .codes import Code
from .errors import ProtocolError, RpcError
from .frame import (
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
from .lighttyping import NamedTuple
from .messages import (
    Request,
    Response,
    decode_request,
    decode_response,
    encode_error,
    request_parts,
    response_prefix,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

CLOSE_FLAGS = FLAG_REMOTE_CLOSED | FLAG_NO_DATA
_new = tuple.__new__


class CallStarted(NamedTuple):
    """A client opened stream ``stream_id`` with ``request``; ``flags`` are the request's."""

    stream_id: int
    flags: int
    request: Request


class DataReceived(NamedTuple):
    """A data frame on an open stream; ``payload`` is None for a frame with ``no data``;
    ``end`` means the sender will send nothing more on this stream."""

    stream_id: int
    payload: bytes | None
    end: bool


class Rejected(NamedTuple):
    """Stream ``stream_id`` ends with this status (the server answers it; any handler
    running for it must stop)."""

    stream_id: int
    code: int
    message: str


class ResponseReceived(NamedTuple):
    """The final Response of a client stream."""

    stream_id: int
    response: Response


class StreamFailed(NamedTuple):
    """A client stream ends with a locally decided status (oversized or undecodable reply)."""

    stream_id: int
    code: int
    message: str


ServerEvent = CallStarted | DataReceived | Rejected
ClientEvent = ResponseReceived | DataReceived | StreamFailed


def oversize_message(length: int) -> str:
    return f"message length {length} exceed maximum message size of {MAX_MESSAGE_SIZE}"


def _check_size(body: bytes) -> None:
    if len(body) > MAX_MESSAGE_SIZE:
        raise RpcError(Code.RESOURCE_EXHAUSTED, oversize_message(len(body)))


def _frame(stream_id: int, type_: int, flags: int, body: bytes) -> bytes:
    _check_size(body)
    return pack_header(len(body), stream_id, type_, flags) + body


def data_frame(stream_id: int, payload: bytes) -> bytes:
    return _frame(stream_id, DATA, 0, payload)


def close_frame(stream_id: int) -> bytes:
    return pack_header(0, stream_id, DATA, CLOSE_FLAGS)


class _Connection:
    __slots__ = ("decoder",)

    def __init__(self, max_size: int) -> None:
        self.decoder = FrameDecoder(max_size)

    @property
    def in_frame(self) -> bool:
        """True if the peer stopped in the middle of a frame."""
        return self.decoder.in_frame

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        return self.decoder.get_buffer(sizehint)


class ServerConnection(_Connection):
    """The serving side of one connection."""

    __slots__ = ("last_id", "streams")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        super().__init__(max_size)
        self.last_id = 0
        self.streams: dict[int, bool] = {}
        """Open streams: id -> whether the client may still send data."""

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        return self._events(self.decoder.feed(data))

    def buffer_updated(self, nbytes: int) -> list[ServerEvent]:
        return self._events(self.decoder.buffer_updated(nbytes))

    def finish(self, stream_id: int) -> None:
        """The server has sent its last frame on ``stream_id``."""
        self.streams.pop(stream_id, None)

    def _events(self, frames: list[Frame | Oversized]) -> list[ServerEvent]:
        out: list[ServerEvent] = []
        for frame in frames:
            sid = frame.stream_id
            if frame.type == REQUEST and frame.__class__ is Frame and sid & 1 and sid > self.last_id:
                self.last_id = sid
                try:
                    request = decode_request(frame.body)
                except ProtocolError as exc:
                    out.append(Rejected(sid, Code.INVALID_ARGUMENT, f"failed to decode request: {exc}"))
                    continue
                flags = frame.flags
                self.streams[sid] = flags & 3 == FLAG_REMOTE_OPEN
                out.append(_new(CallStarted, (sid, flags, request)))
                continue
            event = self._event(frame)
            if event is not None:
                out.append(event)
        return out

    def _new_id(self, sid: int) -> Rejected | None:
        if sid % 2 == 0:
            return Rejected(sid, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
        if sid <= self.last_id:
            return Rejected(sid, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
        self.last_id = sid
        return None

    def _event(self, frame: Frame | Oversized) -> ServerEvent | None:
        sid, mtype, flags = frame.stream_id, frame.type, frame.flags
        if mtype == REQUEST:
            bad = self._new_id(sid)
            if bad is not None:
                return bad
            if isinstance(frame, Oversized):
                return Rejected(sid, Code.RESOURCE_EXHAUSTED, oversize_message(frame.length))
            try:
                request = decode_request(frame.body)
            except ProtocolError as exc:
                return Rejected(sid, Code.INVALID_ARGUMENT, f"failed to decode request: {exc}")
            self.streams[sid] = bool(flags & FLAG_REMOTE_OPEN) and not flags & FLAG_REMOTE_CLOSED
            return CallStarted(sid, flags, request)
        if mtype == DATA:
            if not self.streams.get(sid):
                if isinstance(frame, Oversized) and sid in self.streams:
                    del self.streams[sid]
                    return Rejected(sid, Code.RESOURCE_EXHAUSTED, oversize_message(frame.length))
                self.streams.pop(sid, None)
                return Rejected(sid, Code.INVALID_ARGUMENT, "StreamID is no longer active")
            if isinstance(frame, Oversized):
                del self.streams[sid]
                return Rejected(sid, Code.RESOURCE_EXHAUSTED, oversize_message(frame.length))
            end = bool(flags & FLAG_REMOTE_CLOSED)
            if flags & FLAG_NO_DATA:
                payload = None
            elif end and frame.body:
                del self.streams[sid]
                return Rejected(sid, Code.INVALID_ARGUMENT, "data close message cannot include data")
            else:
                payload = frame.body
            if end:
                self.streams[sid] = False
            return DataReceived(sid, payload, end)
        return None

    @staticmethod
    def response(stream_id: int, payload: bytes = b"") -> bytes:
        """A successful Response; RESOURCE_EXHAUSTED if the payload cannot be sent."""
        prefix = response_prefix(len(payload))
        size = len(prefix) + len(payload)
        if size > MAX_MESSAGE_SIZE:
            raise RpcError(Code.RESOURCE_EXHAUSTED, oversize_message(size))
        return b"".join((pack_header(size, stream_id, RESPONSE, 0), prefix, payload))

    @staticmethod
    def error(stream_id: int, code: int, message: str) -> bytes:
        body = encode_error(code, message)
        if len(body) > MAX_MESSAGE_SIZE:
            body = encode_error(code, message[:65536])
        return _frame(stream_id, RESPONSE, 0, body)

    data = staticmethod(data_frame)
    close = staticmethod(close_frame)


class ClientConnection(_Connection):
    """The calling side of one connection: allocates stream ids, routes replies."""

    __slots__ = ("next_id", "streams")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        super().__init__(max_size)
        self.next_id = 1
        self.streams: set[int] = set()

    def request(
        self,
        service: str,
        method: str,
        payload: bytes = b"",
        flags: int = 0,
        timeout_nano: int = 0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, bytes]:
        """Open a stream: its id and the Request frame to send."""
        parts = request_parts(service, method, payload, timeout_nano, metadata)
        size = sum(map(len, parts))
        if size > MAX_MESSAGE_SIZE:
            raise RpcError(Code.RESOURCE_EXHAUSTED, oversize_message(size))
        sid = self.next_id
        if sid > 0xFFFFFFFF:
            raise RpcError(Code.RESOURCE_EXHAUSTED, "stream ids exhausted on this connection")
        self.next_id = sid + 2
        self.streams.add(sid)
        parts.insert(0, pack_header(size, sid, REQUEST, flags))
        return sid, b"".join(parts)

    def forget(self, stream_id: int) -> None:
        """Replies on ``stream_id`` are no longer wanted."""
        self.streams.discard(stream_id)

    data = staticmethod(data_frame)
    close_send = staticmethod(close_frame)

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        return self._events(self.decoder.feed(data))

    def buffer_updated(self, nbytes: int) -> list[ClientEvent]:
        return self._events(self.decoder.buffer_updated(nbytes))

    def _events(self, frames: list[Frame | Oversized]) -> list[ClientEvent]:
        out: list[ClientEvent] = []
        streams = self.streams
        for frame in frames:
            sid = frame.stream_id
            if sid not in streams:
                continue
            if isinstance(frame, Oversized):
                if frame.type in (RESPONSE, DATA):
                    streams.discard(sid)
                    out.append(StreamFailed(sid, Code.RESOURCE_EXHAUSTED, oversize_message(frame.length)))
                continue
            if frame.type == RESPONSE:
                streams.discard(sid)
                try:
                    out.append(_new(ResponseReceived, (sid, decode_response(frame.body))))
                except ProtocolError as exc:
                    out.append(StreamFailed(sid, Code.INTERNAL, f"failed to decode response: {exc}"))
            elif frame.type == DATA:
                flags = frame.flags
                end = bool(flags & FLAG_REMOTE_CLOSED)
                if end:
                    streams.discard(sid)
                out.append(DataReceived(sid, None if flags & FLAG_NO_DATA else frame.body, end))
        return out


__all__ = [
    "HEADER_SIZE",
    "CallStarted",
    "ClientConnection",
    "DataReceived",
    "Rejected",
    "ResponseReceived",
    "ServerConnection",
    "StreamFailed",
]
