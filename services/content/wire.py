"""Contract types to and from containerd's content.v1 messages, and the hot-path codecs.

``encode_write`` builds a WriteContentRequest WRITE message by hand (action, ref, offset,
data) so a chunk is copied once into its payload instead of through a message object.
``parse_write`` reads one without copying its data: a request made only of fields 1-6 is
decoded here (data as a view of the payload); anything else (labels, unknown fields, any
irregularity) goes to protobuf, whose DecodeError becomes InvalidArgument. Tests check both
against protobuf's own encoding and decoding. Everything else uses the generated classes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from moorage.api.containerd.services.content.v1 import content_pb2 as pb

from moorage.errdefs import InvalidArgument
from moorage.protowire import read_varint

from .contract import Info, Status
from .writes import write_prefix

SERVICE = "containerd.services.content.v1.Content"
SWEEP_SERVICE = "moorage.internal.v1.ContentSweep"
"""moorage's own (not containerd's), for the garbage collector, on the call's namespace:
``Delete`` removes many blobs at once, msgpack in ``{"digests": [...]}``, out ``{"deleted":
[...], "errors": {digest: message}}`` (a digest the namespace lacks is in neither; no events,
as containerd's collector publishes none for what it sweeps); ``List`` pages through the
blobs, in ``{"after": digest, "limit": n}``, out ``{"blobs": [[digest, size, created_at ns,
msgpack labels], ...]}`` in digest order (fewer than ``limit``: the end)."""
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


def encode_write(ref: bytes, offset: int, data: bytes | memoryview) -> bytes:
    """A serialized WriteContentRequest{action: WRITE, ref, offset, data}."""
    return write_prefix(ref, offset, len(data)) + data


class WriteRequest:
    """The fields of a WriteContentRequest; ``data`` may be a view of the payload."""

    __slots__ = ("action", "ref", "total", "expected", "offset", "data", "labels")

    def __init__(
        self,
        action: int = 0,
        ref: str = "",
        total: int = 0,
        expected: str = "",
        offset: int = 0,
        data: bytes | memoryview = b"",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.action = action
        self.ref = ref
        self.total = total
        self.expected = expected
        self.offset = offset
        self.data = data
        self.labels = labels or {}


class _Irregular(Exception):
    pass


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    try:
        return read_varint(buf, pos)
    except ValueError:
        raise _Irregular from None



def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def _fast_write(payload: bytes) -> WriteRequest:
    req = WriteRequest()
    view = memoryview(payload)
    pos, end = 0, len(payload)
    while pos < end:
        tag, pos = _read_varint(payload, pos)
        field, kind = tag >> 3, tag & 7
        if kind == 0 and field in (1, 3, 5):
            v, pos = _read_varint(payload, pos)
            if field == 1:
                req.action = _signed(v, 32)
            elif field == 3:
                req.total = _signed(v, 64)
            else:
                req.offset = _signed(v, 64)
        elif kind == 2 and field in (2, 4, 6):
            n, pos = _read_varint(payload, pos)
            stop = pos + n
            if stop > end:
                raise _Irregular
            if field == 6:
                req.data = view[pos:stop]
            else:
                try:
                    text = str(view[pos:stop], "utf-8")
                except UnicodeDecodeError:
                    raise _Irregular from None
                if field == 2:
                    req.ref = text
                else:
                    req.expected = text
            pos = stop
        else:
            raise _Irregular
    return req


def parse_write(payload: bytes) -> WriteRequest:
    """A WriteContentRequest from its encoding (InvalidArgument if it is not one)."""
    try:
        return _fast_write(payload)
    except _Irregular:
        pass
    try:
        m = pb.WriteContentRequest.FromString(payload)
    except DecodeError as exc:
        raise InvalidArgument(f"failed to decode request: {exc}") from None
    return WriteRequest(m.action, m.ref, m.total, m.expected, m.offset, m.data, dict(m.labels))
