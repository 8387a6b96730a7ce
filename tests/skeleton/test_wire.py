"""moorage.cli.wire: what it writes parses as containerd's generated messages, and what
they write it reads (the messages `moor run` exchanges); what protobuf refuses to write or
read it refuses too, and a reply that does not parse is an INTERNAL error naming the method."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import Int64Value, UInt64Value
from hypothesis import given
from hypothesis import strategies as st

from moorage import errdefs
from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
from moorage.api.containerd.services.content.v1 import content_pb2
from moorage.api.containerd.services.events.v1 import events_pb2
from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.cli.wire import Fields, Msg, rfc3339
from moorage.protowire import varint
from ttrpc.blocking import Client as BlockingClient
from ttrpc.frame import REQUEST, RESPONSE, Frame, FrameDecoder, encode_frame
from ttrpc.messages import encode_response


def test_container_create_request_parses_as_protobuf() -> None:
    runtime = Msg({1: "io.containerd.runc.v2", 2: Msg({1: "containerd.runc.v1.Options",
                                                       2: Msg({6: "crun"}).SerializeToString()})})
    c = Msg({1: "c1", 2: {"a": "1", "b": ""}, 3: "docker.io/library/busybox:latest",
             4: runtime, 5: Msg({1: "types.containerd.io/x", 2: b'{"ociVersion":"1"}'}),
             6: "overlayfs", 7: "c1", 11: ""})
    m = cpb.CreateContainerRequest.FromString(Msg({1: c}).SerializeToString())
    assert m.container.id == "c1" and m.container.snapshot_key == "c1"
    assert dict(m.container.labels) == {"a": "1", "b": ""}
    assert m.container.runtime.name == "io.containerd.runc.v2"
    assert m.container.runtime.options.type_url == "containerd.runc.v1.Options"
    assert m.container.spec.value == b'{"ociVersion":"1"}'
    assert not m.container.sandbox


def test_defaults_are_left_out_and_nested_messages_kept() -> None:
    assert Msg({1: "", 2: 0, 3: False, 4: b"", 5: [], 6: {}}).SerializeToString() == b""
    assert Msg({1: Msg({})}).SerializeToString() == b"\x0a\x00"
    k = tpb.KillRequest.FromString(Msg({1: "c", 2: "", 3: 9, 4: True}).SerializeToString())
    assert (k.container_id, k.exec_id, k.signal, k.all) == ("c", "", 9, True)


def test_reads_protobuf_replies() -> None:
    prep = spb.PrepareSnapshotResponse()
    prep.mounts.add(type="overlay", source="overlay", options=["lowerdir=/a:/b", "upperdir=/u"])
    prep.mounts.add(type="bind", source="/x", options=["rbind"])
    mounts = Fields.FromString(prep.SerializeToString()).msgs(1)
    assert [(m.text(1), m.text(2), m.texts(4)) for m in mounts] == [
        ("overlay", "overlay", ["lowerdir=/a:/b", "upperdir=/u"]), ("bind", "/x", ["rbind"])]
    # raw mounts pass through into the task request unchanged
    req = tpb.CreateTaskRequest.FromString(Msg({1: "c", 3: mounts}).SerializeToString())
    assert list(req.rootfs) == list(prep.mounts)
    d = tpb.DeleteResponse(id="c", pid=42, exit_status=137)
    d.exited_at.seconds = 5
    f = Fields.FromString(d.SerializeToString())
    assert (f.text(1), f.uint(2), f.uint(3), f.msg(4).uint(1)) == ("c", 42, 137, 5)
    r = cpb.CreateContainerResponse()
    r.container.labels["moorage/log-path"] = "/l"
    assert Fields.FromString(r.SerializeToString()).msg(1).pairs(2) == {"moorage/log-path": "/l"}
    assert Fields.FromString(b"").uint(7) == 0 and Fields(b"").text(1) == ""


@given(st.integers(min_value=0, max_value=2**32 - 1), st.text(), st.binary())
def test_round_trip(n: int, s: str, b: bytes) -> None:
    f = Fields.FromString(Msg({1: n, 2: s, 15: b, 300: [s, s]}).SerializeToString())
    assert (f.uint(1), f.text(2), f.blob(15), f.texts(300)) == (n, s, b, [s, s])
    assert tpb.StartResponse.FromString(Msg({1: n}).SerializeToString()).pid == n


@pytest.mark.parametrize("data", [b"\x08", b"\x0a\x05ab", b"\x0b", b"\x80",
                                  b"\x09\x01\x02", b"\x09", b"\x0d\x01\x02\x03", b"\x0d",  # fixed64, fixed32
                                  b"\x00\x01", b"\x02\x00", varint(1 << 29 << 3) + b"\x00"])  # field 0, 2**29
def test_truncated_or_bad_input_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        Fields.FromString(data)
    with pytest.raises(DecodeError):  # as protobuf rejects it
        Timestamp.FromString(data)


def test_fixed_fields_and_the_last_field_number_are_read() -> None:
    data = b"\x09" + bytes(range(8)) + b"\x15" + bytes(4) + varint(((1 << 29) - 1) << 3) + b"\x07"
    f = Fields.FromString(data)
    assert (f.blob(1), f.blob(2), f.uint((1 << 29) - 1)) == (bytes(range(8)), bytes(4), 7)


@pytest.mark.parametrize("value", [-(1 << 63), -1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1])
def test_ints_at_the_ends_of_a_varint_are_written_as_protobuf_does(value: int) -> None:
    data = Msg({1: value}).SerializeToString()
    assert Fields.FromString(data).uint(1) == value % (1 << 64)
    typed = Int64Value(value=value) if value < 1 << 63 else UInt64Value(value=value)
    assert data == typed.SerializeToString()


@pytest.mark.parametrize("value", [1 << 64, 1 << 70, -(1 << 63) - 1, -(1 << 70)])
def test_ints_outside_a_varint_are_a_value_error(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Msg({3: value})
    with pytest.raises(ValueError, match="out of range"):
        Msg({1: [Msg({3: [value]})]})
    with pytest.raises(ValueError):  # as protobuf raises for a uint64 or int64 field
        content_pb2.WriteContentRequest(total=value)


@given(st.lists(st.text(max_size=3)))
def test_lists_write_every_element(filters: list[str]) -> None:
    assert (Msg({1: filters}).SerializeToString()
            == events_pb2.SubscribeRequest(filters=filters).SerializeToString()
            == content_pb2.ListContentRequest(filters=filters).SerializeToString())
    assert Fields.FromString(Msg({1: filters}).SerializeToString()).texts(1) == filters
    assert Msg({1: ["", ""]}).SerializeToString() == b"\x0a\x00\x0a\x00"
    assert Fields.FromString(Msg({1: [0, 5]}).SerializeToString()).uint(1) == 5


@pytest.mark.parametrize(("seconds", "nanos"), [(0, 0), (-1, 999_999_999), (-62135596800, 0), (253402300799, 999_999_999),
                                                (1700000000, 120_000_000), (1, 1000), (1, 1)])
def test_rfc3339_is_protobufs_to_json_string(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    assert rfc3339(Fields.FromString(ts.SerializeToString())) == ts.ToJsonString()
    # nanos is an int32: protobuf keeps a wider varint's low 32 bits
    wide = Msg({1: seconds, 2: nanos + (5 << 32)}).SerializeToString()
    assert rfc3339(Fields.FromString(wide)) == Timestamp.FromString(wide).ToJsonString()


@pytest.mark.parametrize(("seconds", "nanos"), [(0, -1), (0, 1_000_000_000), (0, -(1 << 31)), (0, (1 << 31) - 1),
                                                (253402300800, 0), (-62135596801, 0), (1 << 62, 0), (-(1 << 63), 0)])
def test_rfc3339_of_an_invalid_timestamp_is_a_value_error_as_in_protobuf(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    with pytest.raises(ValueError, match="Timestamp is not valid") as ours:
        rfc3339(Fields.FromString(ts.SerializeToString()))
    with pytest.raises(ValueError, match="Timestamp is not valid") as theirs:
        ts.ToJsonString()
    assert str(ours.value).split(" must")[0] == str(theirs.value).split(" must")[0]


@pytest.fixture
def bad_replies(tmp_path: Path) -> Iterator[str]:
    """A ttrpc server at the returned path that answers every call with the bytes of a
    truncated message (field 1, a fixed64 of 2 bytes)."""
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                frames = FrameDecoder()
                while data := conn.recv(65536):
                    for f in frames.feed(data):
                        if isinstance(f, Frame) and f.type == REQUEST:
                            conn.sendall(encode_frame(f.stream_id, RESPONSE, 0, encode_response(b"\x09\x01\x02")))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path
    listener.close()
    t.join(5)


def test_a_reply_that_does_not_parse_is_internal_naming_the_method(bad_replies: str) -> None:
    with BlockingClient(bad_replies, error_factory=errdefs.from_status) as c:
        with pytest.raises(errdefs.Internal, match="^/s.v1.S/Get: cannot parse the reply: truncated field 1$"):
            c.unary("s.v1.S", "Get", Msg({}), Fields)
        with pytest.raises(errdefs.Internal, match="^/s.v1.S/List: cannot parse the reply: .*"):
            list(c.server_stream("s.v1.S", "List", Msg({}), Timestamp))  # protobuf's DecodeError too


def test_moor_shows_a_reply_that_does_not_parse_as_internal(bad_replies: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from moorage.cli import main as moor

    assert moor.main(["--address", bad_replies, "version"]) == 1
    assert capsys.readouterr().err == ("moor: /containerd.services.version.v1.Version/Version: "
                                       "cannot parse the reply: truncated field 1\n")
