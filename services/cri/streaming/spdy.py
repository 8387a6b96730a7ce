"""SPDY/3.1 framing, sans-IO: bytes in, frames out; frames in, bytes out.

What Kubernetes' streaming (k8s.io/apimachinery httpstream/spdy, on docker/spdystream)
puts on the wire after `Upgrade: SPDY/3.1`:

    control frame: |1|version=3 (15)|type (16)|flags (8)|length (24)|payload|
    data frame:    |0|stream id (31)|flags (8)|length (24)|data|

Control types used: SYN_STREAM (1: stream id, associated id, priority, slot, headers),
SYN_REPLY (2: stream id, headers), RST_STREAM (3: stream id, status), SETTINGS (4),
PING (6: id, echoed back), GOAWAY (7: last stream id, status), HEADERS (8),
WINDOW_UPDATE (9). Flags: FIN 0x01 (the sender's half of the stream is closed),
UNIDIRECTIONAL 0x02 (SYN_STREAM). A header block is `count (32)` then `len (32) name
len (32) value` per pair (names lower-case; several values of one name joined by NUL),
compressed with one zlib stream per direction per connection, primed with SPDY/3's
dictionary and flushed (Z_SYNC_FLUSH) after each block. spdystream does no flow control
(it never sends WINDOW_UPDATE), so neither side here enforces windows.

Bad peer input raises exactly one error type, :class:`ProtocolError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
MAX_FRAME = 0xFFFFFF
MAX_HEADERS = 1 << 20

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, NOOP, PING, GOAWAY, HEADERS, WINDOW_UPDATE = \
    range(1, 10)

# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL = range(1, 6)
INTERNAL_ERROR, FLOW_CONTROL_ERROR, STREAM_IN_USE, STREAM_ALREADY_CLOSED = range(6, 10)

_WORDS = (
    *"options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control connection "
    "content-base content-encoding content-language content-length content-location "
    "content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status".split(), "200 OK",
    *"version HTTP/1.1 url public set-cookie keep-alive origin".split(),
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502"
    "504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
    "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
    "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


DICTIONARY = _dictionary()
"""The zlib dictionary of SPDY/3 header blocks (draft-mbelshe-httpbis-spdy-00 §2.6.10.1)."""


class ProtocolError(Exception):
    """The peer broke SPDY/3 framing (the connection cannot go on)."""


Headers = dict[str, list[str]]


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    flags: int = 0
    associated_id: int = 0
    priority: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    id: int


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    status: int = 0


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = (DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway
         | HeadersFrame | WindowUpdate)


def header(headers: Headers, name: str) -> str:
    """The first value of `name` (case-insensitive), "" if absent."""
    values = headers.get(name.lower())
    return values[0] if values else ""


@dataclass
class Decoder:
    """Bytes in, frames out. One per connection direction (it holds the inflate state)."""

    _buf: bytearray = field(default_factory=bytearray)
    _inflate: zlib._Decompress = field(
        default_factory=lambda: zlib.decompressobj(zdict=DICTIONARY))

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= 8:
            w0, w1 = struct.unpack_from(">II", self._buf)
            length = w1 & 0xFFFFFF
            if len(self._buf) < 8 + length:
                break
            payload = bytes(self._buf[8:8 + length])
            del self._buf[:8 + length]
            flags = w1 >> 24
            if w0 & 0x80000000:
                version, kind = (w0 >> 16) & 0x7FFF, w0 & 0xFFFF
                if version != VERSION:
                    raise ProtocolError(f"SPDY version {version} is not 3")
                frame = self._control(kind, flags, payload)
                if frame is not None:
                    out.append(frame)
            else:
                out.append(DataFrame(w0 & 0x7FFFFFFF, payload, flags))
        return out

    def _headers(self, block: bytes) -> Headers:
        try:
            raw = self._inflate.decompress(block, MAX_HEADERS + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block: {exc}") from None
        if len(raw) > MAX_HEADERS or self._inflate.unconsumed_tail:
            raise ProtocolError("header block: over 1 MiB")
        try:
            (count,) = struct.unpack_from(">I", raw)
            pos = 4
            out: Headers = {}
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4:pos + 4 + n].decode("latin-1").lower()
                pos += 4 + n
                (n,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4:pos + 4 + n].decode("latin-1")
                pos += 4 + n
                if pos > len(raw):
                    raise ProtocolError("header block: truncated")
                out.setdefault(name, []).extend(value.split("\0"))
        except struct.error:
            raise ProtocolError("header block: truncated") from None
        return out

    def _control(self, kind: int, flags: int, p: bytes) -> Frame | None:
        try:
            if kind == SYN_STREAM:
                sid, assoc = struct.unpack_from(">II", p)
                return SynStream(sid & 0x7FFFFFFF, self._headers(p[10:]), flags,
                                 assoc & 0x7FFFFFFF, p[8] >> 5)
            if kind == SYN_REPLY:
                (sid,) = struct.unpack_from(">I", p)
                return SynReply(sid & 0x7FFFFFFF, self._headers(p[4:]), flags)
            if kind == HEADERS:
                (sid,) = struct.unpack_from(">I", p)
                return HeadersFrame(sid & 0x7FFFFFFF, self._headers(p[4:]), flags)
            if kind == RST_STREAM:
                sid, status = struct.unpack_from(">II", p)
                return RstStream(sid & 0x7FFFFFFF, status)
            if kind == SETTINGS:
                (n,) = struct.unpack_from(">I", p)
                entries = []
                for i in range(n):
                    a, value = struct.unpack_from(">II", p, 4 + 8 * i)
                    entries.append((a >> 24, a & 0xFFFFFF, value))
                return Settings(tuple(entries), flags)
            if kind == PING:
                return Ping(struct.unpack_from(">I", p)[0])
            if kind == GOAWAY:
                last, *rest = struct.unpack_from(">II", p) if len(p) >= 8 else \
                    (struct.unpack_from(">I", p)[0], 0)
                return GoAway(last & 0x7FFFFFFF, rest[0] if rest else 0)
            if kind == WINDOW_UPDATE:
                sid, delta = struct.unpack_from(">II", p)
                return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
            if kind == NOOP:
                return None
        except struct.error:
            raise ProtocolError(f"control frame {kind}: truncated") from None
        raise ProtocolError(f"unknown control frame type {kind}")


@dataclass
class Encoder:
    """Frames in, bytes out. One per connection direction (it holds the deflate state)."""

    _deflate: zlib._Compress = field(
        default_factory=lambda: zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                                 zlib.MAX_WBITS, zdict=DICTIONARY))

    def _headers(self, headers: Headers) -> bytes:
        raw = [struct.pack(">I", len(headers))]
        for name, values in headers.items():
            n, v = name.lower().encode("latin-1"), "\0".join(values).encode("latin-1")
            raw.append(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v)
        return self._deflate.compress(b"".join(raw)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control(kind: int, flags: int, payload: bytes) -> bytes:
        if len(payload) > MAX_FRAME:
            raise ValueError("control frame too large")
        return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(payload)) + payload

    def encode(self, f: Frame) -> bytes:
        if isinstance(f, DataFrame):
            out = []
            data = memoryview(f.data)
            while True:  # split what does not fit one frame; FIN on the last
                chunk, data = data[:MAX_FRAME], data[MAX_FRAME:]
                flags = f.flags if not data else f.flags & ~FLAG_FIN
                out.append(struct.pack(">II", f.stream_id & 0x7FFFFFFF,
                                       flags << 24 | len(chunk)) + bytes(chunk))
                if not data:
                    return b"".join(out)
        if isinstance(f, SynStream):
            return self._control(SYN_STREAM, f.flags, struct.pack(
                ">IIBB", f.stream_id, f.associated_id, (f.priority & 7) << 5, 0)
                + self._headers(f.headers))
        if isinstance(f, SynReply):
            return self._control(SYN_REPLY, f.flags, struct.pack(">I", f.stream_id)
                                 + self._headers(f.headers))
        if isinstance(f, HeadersFrame):
            return self._control(HEADERS, f.flags, struct.pack(">I", f.stream_id)
                                 + self._headers(f.headers))
        if isinstance(f, RstStream):
            return self._control(RST_STREAM, 0, struct.pack(">II", f.stream_id, f.status))
        if isinstance(f, Settings):
            return self._control(SETTINGS, f.flags, struct.pack(">I", len(f.entries)) + b"".join(
                struct.pack(">II", fl << 24 | id, v) for fl, id, v in f.entries))
        if isinstance(f, Ping):
            return self._control(PING, 0, struct.pack(">I", f.id))
        if isinstance(f, GoAway):
            return self._control(GOAWAY, 0, struct.pack(">II", f.last_stream_id, f.status))
        if isinstance(f, WindowUpdate):
            return self._control(WINDOW_UPDATE, 0, struct.pack(">II", f.stream_id, f.delta))
        raise TypeError(f"not a frame: {f!r}")
