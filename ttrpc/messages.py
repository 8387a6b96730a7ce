"""The RPC envelope: ttrpc.Request, ttrpc.Response and google.rpc.Status on the wire.

A hand-written protobuf codec for exactly these messages (see ``ttrpc.proto``, whose
generated ``ttrpc_pb2`` encodes the same bytes): it is the hot path of every call, it
avoids building message objects, and its decoder raises only ``ProtocolError``.

Encoding follows Go's: fields in number order, proto3 defaults omitted, a successful
Response carries no status. Decoding accepts what any protobuf parser accepts (fields in
any order, unknown fields, a code-0 status) and nothing else.
"""

from __future__ import annotations

from .errors import ProtocolError
from .lighttyping import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    Metadata = Mapping[str, str | Sequence[str]]
    """Metadata as callers give it: a value or a list of values per key."""

Pairs = list[tuple[str, str]]

_MASK64 = (1 << 64) - 1
_new = tuple.__new__


class Request(NamedTuple):
    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: Pairs = []


class Response(NamedTuple):
    """``code`` 0 with an empty ``message`` is success (status absent or zero)."""

    code: int = 0
    message: str = ""
    payload: bytes = b""


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(value)) + value


def metadata_pairs(metadata: Metadata | None) -> Pairs:
    """Flatten caller metadata to (key, value) pairs with lower-case keys."""
    if not metadata:
        return []
    pairs: Pairs = []
    for key, values in metadata.items():
        key = key.lower()
        if isinstance(values, str):
            pairs.append((key, values))
        else:
            pairs.extend((key, v) for v in values)
    return pairs


def metadata_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Group received pairs by lower-cased key, keeping order."""
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key.lower(), []).append(value)
    return out


_prefixes: dict[tuple[str, str], bytes] = {}


def _prefix(service: str, method: str) -> bytes:
    prefix = _prefixes.get((service, method))
    if prefix is None:
        prefix = b""
        if service:
            prefix += _field(0x0A, service.encode())
        if method:
            prefix += _field(0x12, method.encode())
        if len(_prefixes) < 4096:
            _prefixes[(service, method)] = prefix
    return prefix


def encode_request(
    service: str,
    method: str,
    payload: bytes = b"",
    timeout_nano: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
) -> bytes:
    return b"".join(request_parts(service, method, payload, timeout_nano, metadata))


def request_parts(
    service: str,
    method: str,
    payload: bytes = b"",
    timeout_nano: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    """The encoded Request as pieces, so a large payload is copied only once, by the caller's join."""
    parts = [_prefix(service, method)]
    if payload:
        parts.append(b"\x1a" + _varint(len(payload)))
        parts.append(payload)
    if timeout_nano:
        parts.append(b"\x20" + _varint(timeout_nano & _MASK64))
    for key, value in metadata:
        kv = b""
        if key:
            kv += _field(0x0A, key.encode())
        if value:
            kv += _field(0x12, value.encode())
        parts.append(_field(0x2A, kv))
    return parts


def encode_response(payload: bytes = b"") -> bytes:
    """A successful response (no status)."""
    if not payload:
        return b""
    return b"".join((b"\x12", _varint(len(payload)), payload))


def response_prefix(payload_size: int) -> bytes:
    """What precedes the payload in a successful Response of that size."""
    return b"\x12" + _varint(payload_size) if payload_size else b""


def encode_status(code: int, message: str) -> bytes:
    status = b""
    if code:
        status += b"\x08" + _varint(code & _MASK64)
    if message:
        status += _field(0x12, message.encode())
    return status


def encode_error(code: int, message: str) -> bytes:
    """A failed response: a status and no payload."""
    return _field(0x0A, encode_status(code, message))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ProtocolError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ProtocolError("varint too long")


def _skip_or_value(data: bytes, pos: int, end: int, wire: int) -> tuple[int, int, int]:
    """For the field whose tag ends at ``pos``: (value start, value end, next position).
    Varints give their value as ``value start`` and -1 as ``value end``."""
    if wire == 2:
        length = data[pos] if pos < end else 0x80
        if length < 0x80:
            pos += 1
        else:
            length, pos = _read_varint(data, pos)
        stop = pos + length
        if stop > end:
            raise ProtocolError("truncated field")
        return pos, stop, stop
    if wire == 0:
        value, pos = _read_varint(data, pos)
        return value, -1, pos
    if wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    else:
        raise ProtocolError(f"unsupported wire type {wire}")
    if pos > end:
        raise ProtocolError("truncated field")
    return 0, -2, pos


def _tag(data: bytes, pos: int) -> tuple[int, int]:
    tag = data[pos]
    if tag < 0x80:
        pos += 1
    else:
        tag, pos = _read_varint(data, pos)
    if tag < 8:
        raise ProtocolError("field number 0")
    return tag, pos


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid UTF-8 in string field") from exc


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _key_value(data: bytes) -> tuple[str, str]:
    key = value = ""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _tag(data, pos)
        a, b, pos = _skip_or_value(data, pos, end, tag & 7)
        if tag == 0x0A:
            key = _text(data[a:b])
        elif tag == 0x12:
            value = _text(data[a:b])
    return key, value


_names: dict[bytes, str] = {}


def _name(value: bytes) -> str:
    name = _names.get(value)
    if name is None:
        name = _text(value)
        if len(_names) < 1024:
            _names[value] = name
    return name


def decode_request(data: bytes) -> Request:
    service = method = ""
    payload = b""
    timeout = 0
    metadata: Pairs = []
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if tag & 7 == 2 and 7 < tag < 0x80:
            pos += 1
            length = data[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = _read_varint(data, pos)
            stop = pos + length
            if stop > end:
                raise ProtocolError("truncated field")
            if tag == 0x0A:
                service = _name(data[pos:stop])
            elif tag == 0x12:
                method = _name(data[pos:stop])
            elif tag == 0x1A:
                payload = data[pos:stop]
            elif tag == 0x2A:
                metadata.append(_key_value(data[pos:stop]))
            pos = stop
            continue
        tag, pos = _tag(data, pos)
        a, _, pos = _skip_or_value(data, pos, end, tag & 7)
        if tag == 0x20:
            timeout = _signed64(a)
    return _new(Request, (service, method, payload, timeout, metadata))


def _status(data: bytes) -> tuple[int, str]:
    code = 0
    message = ""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _tag(data, pos)
        a, b, pos = _skip_or_value(data, pos, end, tag & 7)
        if tag == 0x08:
            code = (a + (1 << 31)) % (1 << 32) - (1 << 31)
        elif tag == 0x12:
            message = _text(data[a:b])
    return code, message


def decode_response(data: bytes) -> Response:
    if not data:
        return _OK
    if data[0] == 0x12 and len(data) > 1 and data[1] < 0x80 and len(data) == data[1] + 2:
        return _new(Response, (0, "", data[2:]))
    code = 0
    message = ""
    payload = b""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _tag(data, pos)
        a, b, pos = _skip_or_value(data, pos, end, tag & 7)
        if tag == 0x0A:
            c, m = _status(data[a:b])
            code = c or code
            message = m or message
        elif tag == 0x12:
            payload = data[a:b]
    return Response(code, message, payload)


_OK = Response()
