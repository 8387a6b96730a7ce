"""What the router reads of a ttrpc Request: its service and namespace, nothing else.

``route_of(frame, start)`` scans the encoded Request (from ``start``, so a whole frame can be
scanned past its header without a copy) without decoding the payload or the other
metadata (the backend decodes those; it gets the same bytes). Anything unusual (multi-byte
tags, other wire types, odd KeyValues) falls back to ttrpc's full decoder, so the answer is
always the one ``ttrpc.messages.decode_request`` would give; bad input raises ProtocolError.
"""

from __future__ import annotations

from ttrpc.messages import decode_request

from moorage.namespaces import NAMESPACE_KEY

_KEY = NAMESPACE_KEY.encode()
_KEY_FIELD = bytes((0x0A, len(_KEY))) + _KEY
_names: dict[bytes, str] = {}


class _Slow(Exception):
    pass


def route_of(body: bytes, start: int = 0) -> tuple[str, list[str]]:
    """(service, namespace values in order) of the ttrpc Request encoded in ``body[start:]``."""
    try:
        return _scan(body, start)
    except (_Slow, IndexError, UnicodeDecodeError):
        req = decode_request(body[start:])
        return req.service, [v for k, v in req.metadata if k == NAMESPACE_KEY]


def _scan(body: bytes, pos: int) -> tuple[str, list[str]]:
    end = len(body)
    service = b""
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
                n &= 0x7F
                shift = 7
                while True:
                    b = body[pos]
                    pos += 1
                    n |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 28:
                        raise _Slow
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
    name = _names.get(service)
    if name is None:
        name = service.decode()
        if len(_names) < 1024:
            _names[service] = name
    return name, namespaces
