"""Framing and envelope: golden bytes, every split of the input, bounded discard, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttrpc import ProtocolError
from ttrpc import ttrpc_pb2 as pb
from ttrpc.frame import MAX_MESSAGE_SIZE, Frame, FrameDecoder, Oversized, encode_frame
from ttrpc.messages import (
    Request,
    Response,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_response,
)
from ttrpc.protocol import ClientConnection, ServerConnection

# Request{service "containerd.task.v2.Task", method "Connect", payload 0a0161,
#         metadata [{containerd-namespace-ttrpc: default}]} on stream 1, as Go 1.1 sends it.
GOLDEN_REQUEST = bytes.fromhex(
    "0000004e" "00000001" "01" "00"
    "0a17" + b"containerd.task.v2.Task".hex() + "1207" + b"Connect".hex() + "1a030a0161"
    "2a25" "0a1a" + b"containerd-namespace-ttrpc".hex() + "1207" + b"default".hex()
)
# Response OK with payload 08a0e001 (verified against containerd 1.6's shim).
GOLDEN_OK = bytes.fromhex("00000006" "00000001" "02" "00" "120408a0e001")
# Response with status {code 5, message "not found"}, no payload.
GOLDEN_ERROR = bytes.fromhex("0000000f" "00000003" "02" "00" "0a0d0805" "1209" + b"not found".hex())
GOLDEN_EMPTY = bytes.fromhex("00000000" "00000005" "02" "00")
GOLDEN_DATA_CLOSE = bytes.fromhex("00000000" "00000007" "03" "05")


def test_golden_request_matches_encoder_and_pb2() -> None:
    conn = ClientConnection()
    sid, frame = conn.request(
        "containerd.task.v2.Task", "Connect", b"\x0a\x01a", metadata=[("containerd-namespace-ttrpc", "default")]
    )
    assert (sid, frame) == (1, GOLDEN_REQUEST)
    msg = pb.Request(
        service="containerd.task.v2.Task",
        method="Connect",
        payload=b"\x0a\x01a",
        metadata=[pb.KeyValue(key="containerd-namespace-ttrpc", value="default")],
    )
    assert frame[10:] == msg.SerializeToString()


def test_golden_responses() -> None:
    assert ServerConnection.response(1, b"\x08\xa0\xe0\x01") == GOLDEN_OK
    assert ServerConnection.error(3, 5, "not found") == GOLDEN_ERROR
    assert ServerConnection.response(5) == GOLDEN_EMPTY
    assert ServerConnection.close(7) == GOLDEN_DATA_CLOSE
    assert encode_error(5, "not found") == pb.Response(status=pb.Status(code=5, message="not found")).SerializeToString()


def test_golden_frames_decode() -> None:
    frames = FrameDecoder().feed(GOLDEN_REQUEST + GOLDEN_OK + GOLDEN_ERROR + GOLDEN_EMPTY + GOLDEN_DATA_CLOSE)
    assert [(f.stream_id, f.type, f.flags) for f in frames] == [(1, 1, 0), (1, 2, 0), (3, 2, 0), (5, 2, 0), (7, 3, 5)]
    assert decode_response(frames[1].body) == Response(0, "", b"\x08\xa0\xe0\x01")
    assert decode_response(frames[2].body) == Response(5, "not found", b"")


@pytest.mark.parametrize("step", [1, 2, 3, 7, 10, 11, 64])
def test_any_split_gives_the_same_frames(step: int) -> None:
    stream = GOLDEN_REQUEST + GOLDEN_OK + GOLDEN_ERROR + GOLDEN_EMPTY + GOLDEN_DATA_CLOSE
    whole = FrameDecoder().feed(stream)
    decoder = FrameDecoder()
    parts = []
    for i in range(0, len(stream), step):
        parts += decoder.feed(stream[i : i + step])
    assert parts == whole
    assert not decoder.in_frame


def test_trailing_partial_frame_is_kept() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(GOLDEN_OK + GOLDEN_ERROR[:12]) == [Frame(1, 2, 0, b"\x12\x04\x08\xa0\xe0\x01")]
    assert decoder.in_frame
    assert len(decoder.feed(GOLDEN_ERROR[12:])) == 1


def _receive(decoder: FrameDecoder, data: bytes) -> int:
    target = decoder.get_buffer()
    target[: len(data)] = data
    return len(data)


def test_take_one_consumes_exactly_one_whole_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.take_one(_receive(decoder, GOLDEN_OK)) == (1, 2, 0, b"\x12\x04\x08\xa0\xe0\x01")
    assert not decoder.in_frame
    assert decoder.take_one(_receive(decoder, GOLDEN_DATA_CLOSE)) == (7, 3, 5, b"")


@pytest.mark.parametrize(
    "data", [GOLDEN_OK + GOLDEN_ERROR, GOLDEN_OK[:7], GOLDEN_OK[:12], (MAX_MESSAGE_SIZE + 1).to_bytes(4, "big") + bytes(6)]
)
def test_take_one_leaves_anything_else_to_buffer_updated(data: bytes) -> None:
    decoder, reference = FrameDecoder(), FrameDecoder()
    n = _receive(decoder, data)
    assert decoder.take_one(n) is None
    assert decoder.buffer_updated(n) == reference.feed(data)


def test_take_one_declines_while_bytes_are_buffered() -> None:
    decoder = FrameDecoder()
    decoder.buffer_updated(_receive(decoder, GOLDEN_ERROR[:5]))
    n = _receive(decoder, GOLDEN_ERROR[5:])
    assert decoder.take_one(n) is None
    assert [f.stream_id for f in decoder.buffer_updated(n)] == [3]


def test_large_frames_and_buffer_reuse() -> None:
    body = bytes(range(256)) * 8192
    decoder = FrameDecoder()
    stream = encode_frame(1, 1, 0, body) * 3
    got = []
    for i in range(0, len(stream), 100_000):
        got += decoder.feed(stream[i : i + 100_000])
    assert [f.body == body for f in got] == [True] * 3


@pytest.mark.parametrize("length", [MAX_MESSAGE_SIZE + 1, 0xFFFFFFFF])
def test_oversized_body_is_discarded_in_bounded_chunks(length: int) -> None:
    decoder = FrameDecoder()
    header = length.to_bytes(4, "big") + (9).to_bytes(4, "big") + b"\x01\x00"
    assert decoder.feed(header) == [Oversized(9, 1, 0, length)]
    chunk = b"\xff" * (1 << 20)
    sent = 0
    limit = min(length, 64 << 20)
    while sent < limit:
        assert decoder.feed(chunk[: limit - sent]) == []
        sent += min(len(chunk), limit - sent)
        assert len(decoder._buf) <= 2 * (256 << 10)
    if length == MAX_MESSAGE_SIZE + 1:
        assert decoder.feed(GOLDEN_OK) == [Frame(1, 2, 0, b"\x12\x04\x08\xa0\xe0\x01")]
    else:
        assert decoder.in_frame


def test_exactly_max_size_is_accepted() -> None:
    body = b"x" * MAX_MESSAGE_SIZE
    assert FrameDecoder().feed(encode_frame(1, 3, 0, body)) == [Frame(1, 3, 0, body)]


def test_zero_length_data_is_an_empty_message() -> None:
    server = ServerConnection()
    _, frame = ClientConnection().request("s", "m", flags=2)
    server.receive_data(frame)
    (event,) = server.receive_data(encode_frame(1, 3, 0))
    assert event.payload == b"" and not event.end  # type: ignore[union-attr]


requests = st.builds(
    Request,
    service=st.text(max_size=40),
    method=st.text(max_size=20),
    payload=st.binary(max_size=300),
    timeout_nano=st.integers(-(2**63), 2**63 - 1),
    metadata=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=4),
)


@given(requests)
def test_request_roundtrip_and_matches_pb2(req: Request) -> None:
    data = encode_request(*req)
    assert decode_request(data) == req
    msg = pb.Request(
        service=req.service,
        method=req.method,
        payload=req.payload,
        timeout_nano=req.timeout_nano,
        metadata=[pb.KeyValue(key=k, value=v) for k, v in req.metadata],
    )
    assert data == msg.SerializeToString()
    assert decode_request(msg.SerializeToString()) == req


@given(st.integers(-(2**31), 2**31 - 1), st.text(max_size=30), st.binary(max_size=50))
def test_response_matches_pb2(code: int, message: str, payload: bytes) -> None:
    msg = pb.Response(status=pb.Status(code=code, message=message), payload=payload)
    assert decode_response(msg.SerializeToString()) == Response(code, message, payload)
    assert decode_response(encode_response(payload)) == Response(0, "", payload)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_envelope_decoders_parse_or_raise_protocol_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(data)
        except ProtocolError:
            pass


frame_bytes = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            encode_frame,
            st.integers(0, 12),
            st.integers(0, 8),
            st.integers(0, 7),
            st.one_of(st.binary(max_size=30), st.builds(encode_request, st.sampled_from(["s", "t"]), st.just("m"))),
        ),
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(frame_bytes, st.integers(1, 50))
def test_connections_never_raise_on_any_bytes(data: bytes, step: int) -> None:
    server = ServerConnection()
    client = ClientConnection()
    for sid in range(1, 13, 2):
        client.streams.add(sid)
    for i in range(0, len(data), step):
        server.receive_data(data[i : i + step])
        client.receive_data(data[i : i + step])
