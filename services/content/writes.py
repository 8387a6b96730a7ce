"""The head of a content.v1 WriteContentRequest WRITE message, written by hand without the
protobuf runtime: ``moor content ingest`` and the async client's Write path put the data
bytes right after it (services/content/wire.py re-exports it; tests check it against
protobuf's own encoding)."""

from __future__ import annotations

from moorage.protowire import varint


def write_prefix(ref: bytes, offset: int, size: int) -> bytes:
    """Every field of a WRITE request before the data bytes (which follow verbatim):
    action=1 (WRITE), ref=2, offset=5, and the data's key and length (data=6)."""
    head = b"\x08\x01"  # action = WRITE
    if ref:
        head += b"\x12" + varint(len(ref)) + ref
    if offset:
        head += b"\x28" + varint(offset)
    if size:
        head += b"\x32" + varint(size)
    return head
