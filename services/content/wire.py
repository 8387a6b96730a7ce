"""Contract types to and from containerd's content.v1 messages, and the hot-path encoders.

``encode_write`` builds a WriteContentRequest WRITE message by hand (action, ref, offset,
data: four fields) so a chunk is copied once into its payload instead of through a message
object; tests check it against protobuf's own encoding. Everything else goes through the
generated classes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from moorage.api.containerd.services.content.v1 import content_pb2 as pb

from .contract import Info, Status

SERVICE = "containerd.services.content.v1.Content"
EPOCH = datetime.fromtimestamp(0, UTC)


def timestamp(t: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(t)
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    if ts.seconds == 0 and ts.nanos == 0:
        return EPOCH
    return ts.ToDatetime(tzinfo=UTC)


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(
        digest=info.digest,
        size=info.size,
        created_at=timestamp(info.created_at),
        updated_at=timestamp(info.updated_at),
        labels=dict(info.labels),
    )


def info_from_pb(m: pb.Info) -> Info:
    return Info(
        digest=m.digest,
        size=m.size,
        created_at=from_timestamp(m.created_at),
        updated_at=from_timestamp(m.updated_at),
        labels=dict(m.labels),
    )


def status_to_pb(st: Status) -> pb.Status:
    return pb.Status(
        started_at=timestamp(st.started_at),
        updated_at=timestamp(st.updated_at),
        ref=st.ref,
        offset=st.offset,
        total=st.total,
        expected=st.expected,
    )


def status_from_pb(m: pb.Status) -> Status:
    return Status(
        ref=m.ref,
        offset=m.offset,
        total=m.total,
        started_at=from_timestamp(m.started_at),
        updated_at=from_timestamp(m.updated_at),
        expected=m.expected,
    )


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_prefix(ref: bytes, offset: int, size: int) -> bytes:
    """Every field of a WRITE request before the data bytes (which follow verbatim)."""
    head = b"\x08\x01"  # action = WRITE
    if ref:
        head += b"\x12" + _varint(len(ref)) + ref
    if offset:
        head += b"\x28" + _varint(offset)
    if size:
        head += b"\x32" + _varint(size)
    return head


def encode_write(ref: bytes, offset: int, data: bytes | memoryview) -> bytes:
    """A serialized WriteContentRequest{action: WRITE, ref, offset, data}."""
    return write_prefix(ref, offset, len(data)) + data
