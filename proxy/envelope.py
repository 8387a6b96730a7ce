"""What the router reads of a ttrpc Request: its service and namespace, nothing else.

``route_of(frame, start)`` scans the encoded Request (from ``start``, so a whole frame can be
scanned past its header without a copy) without decoding the payload or the other
metadata (the backend decodes those; it gets the same bytes). Anything unusual (multi-byte
tags, other wire types, odd KeyValues) falls back to ttrpc's full decoder, so the answer is
always the one ``ttrpc.messages.decode_request`` would give; bad input raises ProtocolError.

The common shape (service, method, payload, then timeout and metadata) is read faster: the
bytes after the payload, which repeat from call to call, map to their namespaces in a small
cache (filled only from tails that carry no service field of their own).
"""

from __future__ import annotations

from ttrpc.messages import decode_request

from moorage.namespaces import NAMESPACE_KEY
from moorage.protowire import read_varint

_KEY = NAMESPACE_KEY.encode()
_KEY_FIELD = bytes((0x0A, len(_KEY))) + _KEY
_names: dict[bytes, str] = {}
_tails: dict[bytes, list[str]] = {}
_CACHE = 1024
_TAIL_MAX = 256


class _Slow(Exception):
    pass


def route_of(body: bytes, start: int = 0) -> tuple[str, list[str]]:
    """(service, namespace values in order) of the ttrpc Request encoded in ``body[start:]``."""
    try:
        return _common(body, start)
    except (_Slow, IndexError, ValueError, UnicodeDecodeError):
        pass
    try:
        service, namespaces = _scan(body, start)
        return _name(service), namespaces
    except (_Slow, IndexError, ValueError, UnicodeDecodeError):
        req = decode_request(body[start:])
        return req.service, [v for k, v in req.metadata if k == NAMESPACE_KEY]


def _common(body: bytes, pos: int) -> tuple[str, list[str]]:
    """Fields 1, 2 and 3 in order with one-byte lengths (the payload's may be longer), then a
    cached tail; anything else raises _Slow."""
    if body[pos] != 0x0A:
        raise _Slow
    n = body[pos + 1]
    if n >= 0x80:
        raise _Slow
    pos += 2
    stop = pos + n
    service = body[pos:stop]
    pos = stop
    if body[pos] == 0x12:  # method
        n = body[pos + 1]
        if n >= 0x80:
            raise _Slow
        pos += 2 + n
    if body[pos] == 0x1A:  # payload
        n = body[pos + 1]
        pos += 2
        if n >= 0x80:
            n, pos = read_varint(body, pos - 1)
        pos += n
        if pos > len(body):
            raise _Slow
    tail = body[pos:]
    namespaces = _tails.get(tail)
    if namespaces is None:
        again, namespaces = _scan(body, pos)
        if again is not None:  # a second service field: the last one wins, read it all
            raise _Slow
        if len(tail) <= _TAIL_MAX:
            if len(_tails) >= _CACHE:
                _tails.clear()
            _tails[tail] = namespaces
    return _name(service), namespaces


def _name(service: bytes | None) -> str:
    if service is None:
        return ""
    name = _names.get(service)
    if name is None:
        name = service.decode()
        if len(_names) < _CACHE:
            _names[service] = name
    return name


def _scan(body: bytes, pos: int) -> tuple[bytes | None, list[str]]:
    """(the last service field, None if there is none; namespace values) from ``pos`` on."""
    end = len(body)
    service: bytes | None = None
    namespaces: list[str] = []
    while pos < end:
        tag = body[pos]
        if tag >= 0x80 or tag < 8:
            raise _Slow
        pos += 1
        wire = tag & 7
        if wire == 2:
            n = body[pos]
            pos += 1
            if n >= 0x80:
                n, pos = read_varint(body, pos - 1)
            stop = pos + n
            if stop > end:
                raise _Slow
            if tag == 0x0A:
                service = body[pos:stop]
            elif tag == 0x2A and body.startswith(_KEY_FIELD, pos):
                at = pos + len(_KEY_FIELD)
                if at == stop:
                    namespaces.append("")  # proto3 leaves an empty value out
                else:
                    if body[at] != 0x12:
                        raise _Slow
                    vlen = body[at + 1]
                    if vlen >= 0x80 or at + 2 + vlen != stop:
                        raise _Slow
                    namespaces.append(body[at + 2 : stop].decode())
            pos = stop
        elif wire == 0:
            while body[pos] >= 0x80:
                pos += 1
            pos += 1
            if pos > end:
                raise _Slow
        else:
            raise _Slow
    return service, namespaces
