"""Framing: the 10-byte header and a sans-IO frame decoder.

A frame is ``length u32 | stream id u32 | type u8 | flags u8`` (big-endian) followed by
``length`` bytes of body, at most 4 MiB. The decoder owns its receive buffer so a transport
can read straight into it (``get_buffer`` / ``buffer_updated``, the shape of
``asyncio.BufferedProtocol``); ``feed`` does the same for plain bytes.

Bodies over the limit are never buffered: the decoder reports an ``Oversized`` event as
soon as the header arrives, then discards the body as it streams past, in chunks no larger
than its buffer. Any byte sequence decodes; the decoder never raises on peer input.
"""

from __future__ import annotations

import struct

from .lighttyping import NamedTuple

HEADER_SIZE = 10
MAX_MESSAGE_SIZE = 4 << 20

REQUEST = 0x01
RESPONSE = 0x02
DATA = 0x03

FLAG_REMOTE_CLOSED = 0x01
FLAG_REMOTE_OPEN = 0x02
FLAG_NO_DATA = 0x04

_HEADER = struct.Struct(">IIBB")
_unpack_header = _HEADER.unpack_from
pack_header = _HEADER.pack

_MIN_BUFFER = 256 * 1024


class Frame(NamedTuple):
    """One complete frame as received."""

    stream_id: int
    type: int
    flags: int
    body: bytes


class Oversized(NamedTuple):
    """A frame whose body exceeds the limit; its body is being discarded, never delivered."""

    stream_id: int
    type: int
    flags: int
    length: int


Event = Frame | Oversized

_new = tuple.__new__


def encode_frame(stream_id: int, type_: int, flags: int, body: bytes = b"") -> bytes:
    """One frame's bytes. The caller enforces the size limit (see ``MAX_MESSAGE_SIZE``)."""
    return _HEADER.pack(len(body), stream_id, type_, flags) + body


class FrameDecoder:
    """Turns a byte stream into frames.

    Feed it either with ``feed(data)`` or by writing into ``get_buffer()`` and calling
    ``buffer_updated(n)``; both return the events completed by those bytes, in order.
    ``in_frame`` tells whether a disconnect now would cut a frame in two.
    """

    __slots__ = ("_buf", "_view", "_start", "_end", "_need", "_skip", "_max")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray(_MIN_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._need = HEADER_SIZE
        """Bytes from ``_start`` the next event needs."""
        self._skip = 0
        self._max = max_size

    @property
    def in_frame(self) -> bool:
        return self._skip > 0 or self._end > self._start

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space to receive into; never empty."""
        size = len(self._buf)
        end = self._end
        if size - end >= 4096 and size - self._start >= self._need:
            return self._view[end:]
        return self._make_room()

    def _make_room(self) -> memoryview:
        buf = self._buf
        start, end = self._start, self._end
        pending = end - start
        need = max(self._need, pending + 4096)
        size = len(buf)
        while size < need:
            size *= 2
        if size == len(buf):
            buf[0:pending] = buf[start:end]
        else:
            grown = bytearray(size)
            grown[0:pending] = buf[start:end]
            self._buf = buf = grown
            self._view = memoryview(buf)
        self._start, self._end = 0, pending
        return self._view[pending:]

    def buffer_updated(self, nbytes: int) -> list[Event]:
        """Account for ``nbytes`` written at the start of the last ``get_buffer()``."""
        end = self._end + nbytes
        start = self._start
        events: list[Event] = []
        if self._skip:
            n = min(self._skip, end - start)
            start += n
            self._skip -= n
        if not self._skip:
            buf = self._buf
            view = self._view
            while True:
                if end - start < HEADER_SIZE:
                    self._need = HEADER_SIZE
                    break
                length, sid, mtype, flags = _unpack_header(buf, start)
                if length > self._max:
                    events.append(Oversized(sid, mtype, flags, length))
                    start += HEADER_SIZE
                    n = min(length, end - start)
                    start += n
                    self._skip = length - n
                    self._need = HEADER_SIZE
                    if self._skip:
                        break
                    continue
                stop = start + HEADER_SIZE + length
                if stop > end:
                    self._need = HEADER_SIZE + length
                    break
                events.append(_new(Frame, (sid, mtype, flags, bytes(view[start + HEADER_SIZE : stop]))))
                start = stop
        if start == end:
            start = end = 0
        self._start, self._end = start, end
        return events

    def take_one(self, nbytes: int) -> tuple[int, int, int, bytes] | None:
        """The fast path of ``buffer_updated``: when the ``nbytes`` just received are exactly
        one whole frame within the limit and nothing else is buffered, consume it and return
        ``(stream id, type, flags, body)``; otherwise consume nothing and return None (the
        caller then calls ``buffer_updated(nbytes)``)."""
        if self._end or self._skip or nbytes < HEADER_SIZE:
            return None
        length, sid, mtype, flags = _unpack_header(self._buf, 0)
        if length + HEADER_SIZE != nbytes or length > self._max:
            return None
        return sid, mtype, flags, bytes(self._view[HEADER_SIZE:nbytes])

    def feed(self, data: bytes) -> list[Event]:
        """Decode plain bytes (tests, blocking sockets)."""
        events: list[Event] = []
        view = memoryview(data)
        while view:
            target = self.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            events.extend(self.buffer_updated(n))
            view = view[n:]
        return events
