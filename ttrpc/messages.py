"""The RPC envelope: ttrpc.Request, ttrpc.Response and google.rpc.Status on the wire.

A hand-written protobuf codec for exactly these messages (see ``ttrpc.proto``, whose
generated ``ttrpc_pb2`` encodes the same bytes): it is the hot path of every call, it
avoids building message objects, and its decoder raises only ``ProtocolError``.

Encoding follows Go's: fields in number order, proto3 defaults omitted, a successful
Response carries no status. Decoding accepts what any protobuf parser accepts (fields in
any order, unknown fields, a code-0 status) and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from .errors import ProtocolError

Metadata = Mapping[str, "str | Sequence[str]"]
"""Metadata as callers give it: a value or a list of values per key."""

Pairs = list[tuple[str, str]]

_MASK64 = (1 << 64) - 1


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
    out = _prefix(service, method)
    if payload:
        out += b"\x1a" + _varint(len(payload)) + payload
    if timeout_nano:
        out += b"\x20" + _varint(timeout_nano & _MASK64)
    for key, value in metadata:
        kv = b""
        if key:
            kv += _field(0x0A, key.encode())
        if value:
            kv += _field(0x12, value.encode())
        out += _field(0x2A, kv)
    return out


def encode_response(payload: bytes = b"") -> bytes:
    """A successful response (no status)."""
    if not payload:
        return b""
    return b"\x12" + _varint(len(payload)) + payload


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


def _fields(data: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field; skipped kinds yield no value."""
    pos = 0
    end = len(data)
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ProtocolError("field number 0")
        if wire == 2:
            length = data[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = _read_varint(data, pos)
            stop = pos + length
            if stop > end:
                raise ProtocolError("truncated field")
            yield number, 2, data[pos:stop]
            pos = stop
        elif wire == 0:
            value, pos = _read_varint(data, pos)
            yield number, 0, value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtocolError(f"unsupported wire type {wire}")
        if pos > end:
            raise ProtocolError("truncated field")


def _text(value: int | bytes) -> str:
    assert isinstance(value, bytes)
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid UTF-8 in string field") from exc


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_request(data: bytes) -> Request:
    service = method = ""
    payload = b""
    timeout = 0
    metadata: Pairs = []
    for number, wire, value in _fields(data):
        if wire == 2:
            assert isinstance(value, bytes)
            if number == 1:
                service = _text(value)
            elif number == 2:
                method = _text(value)
            elif number == 3:
                payload = value
            elif number == 5:
                key = val = ""
                for n, w, v in _fields(value):
                    if w == 2:
                        if n == 1:
                            key = _text(v)
                        elif n == 2:
                            val = _text(v)
                metadata.append((key, val))
        elif wire == 0 and number == 4:
            assert isinstance(value, int)
            timeout = _signed64(value)
    return Request(service, method, payload, timeout, metadata)


def decode_response(data: bytes) -> Response:
    code = 0
    message = ""
    payload = b""
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        assert isinstance(value, bytes)
        if number == 1:
            for n, w, v in _fields(value):
                if n == 1 and w == 0:
                    assert isinstance(v, int)
                    code = _signed64(v)
                    code = (code + (1 << 31)) % (1 << 32) - (1 << 31)
                elif n == 2 and w == 2:
                    message = _text(v)
        elif number == 2:
            payload = value
    return Response(code, message, payload)
