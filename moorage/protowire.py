"""Protocol buffers' base-128 varints, for the few places that read or write the wire format
by field number without the protobuf runtime (the CLI's hot paths, content's raw Write
path, the shim's start reply). No imports: cheap for ``moor``."""

from __future__ import annotations

__all__ = ["read_varint", "varint"]


def varint(n: int) -> bytes:
    """``n`` as a varint; a negative int64 takes ten bytes, as protobuf writes it."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """(value as uint64, the index after it) of the varint at ``data[i]``; ValueError when
    it is truncated or longer than ten bytes."""
    shift = result = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, i
        shift += 7
