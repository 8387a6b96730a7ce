"""Bad input and misbehaving peers (reliability.md §4, cases 1-5), over real unix sockets."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct

import pytest

from ttrpc import Code, RpcError
from ttrpc.client import Client
from ttrpc.frame import (
    DATA,
    FLAG_NO_DATA,
    FLAG_REMOTE_CLOSED,
    FLAG_REMOTE_OPEN,
    MAX_MESSAGE_SIZE,
    REQUEST,
    RESPONSE,
    Frame,
    FrameDecoder,
    encode_frame,
)
from ttrpc.messages import Response, decode_response, encode_request
from ttrpc.server import Server
from ttrpctest.echo_pb2 import EchoRequest, EchoResponse
from ttrpctest.echo_ttrpc import EchoClient
from ttrpctest.impl import Echo

SVC = "moorage.test.v1.Echo"


def echo_request(sid: int, data: bytes = b"", flags: int = 0, method: str = "Echo", **fields: int) -> bytes:
    payload = EchoRequest(data=data, **fields).SerializeToString()  # type: ignore[arg-type]
    return encode_frame(sid, REQUEST, flags, encode_request(SVC, method, payload))


class Peer:
    """A hand-driven client: raw frames out, decoded frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, path: str) -> Peer:
        return cls(*await asyncio.open_unix_connection(path, limit=1 << 24))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self) -> Frame:
        while not self.frames:
            chunk = await asyncio.wait_for(self.reader.read(1 << 20), 10)
            assert chunk, "connection closed"
            self.frames += [f for f in self.decoder.feed(chunk) if isinstance(f, Frame)]
        return self.frames.pop(0)

    async def response(self) -> tuple[int, Response]:
        frame = await self.frame()
        assert frame.type == RESPONSE
        return frame.stream_id, decode_response(frame.body)

    def close(self) -> None:
        self.writer.close()


async def test_oversized_request_is_skipped_and_connection_lives(server: Server, sock_path: str) -> None:
    peer = await Peer.connect(sock_path)
    length = MAX_MESSAGE_SIZE + 1
    await peer.send(struct.pack(">IIBB", length, 1, REQUEST, 0))
    sid, resp = await peer.response()
    assert (sid, resp.code) == (1, Code.RESOURCE_EXHAUSTED)
    assert resp.message == f"message length {length} exceed maximum message size of 4194304"
    chunk = b"\x00" * (1 << 20)
    for _ in range(4):
        await peer.send(chunk)
    await peer.send(b"\x00" + echo_request(3, b"next"))
    sid, resp = await peer.response()
    assert (sid, resp.code, EchoResponse.FromString(resp.payload).data) == (3, 0, b"next")
    peer.close()


async def test_huge_length_is_answered_at_the_header(server: Server, sock_path: str) -> None:
    peer = await Peer.connect(sock_path)
    await peer.send(struct.pack(">IIBB", 0xFFFFFFFF, 1, REQUEST, 0) + b"\xff" * (8 << 20))
    sid, resp = await peer.response()
    assert (sid, resp.code) == (1, Code.RESOURCE_EXHAUSTED)
    (conn,) = server._connections
    assert len(conn.core.decoder._buf) < 1 << 20
    peer.close()


async def test_oversized_data_ends_only_that_stream(server: Server, sock_path: str) -> None:
    peer = await Peer.connect(sock_path)
    await peer.send(echo_request(1, flags=FLAG_REMOTE_OPEN, method="Collect"))
    await peer.send(struct.pack(">IIBB", MAX_MESSAGE_SIZE + 10, 1, DATA, 0) + bytes(MAX_MESSAGE_SIZE + 10))
    sid, resp = await peer.response()
    assert (sid, resp.code) == (1, Code.RESOURCE_EXHAUSTED)
    await peer.send(echo_request(3, b"ok"))
    assert (await peer.response())[0] == 3
    peer.close()


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (None, 2, "StreamID must be odd for client initiated streams"),
        (5, 5, "StreamID cannot be re-used and must increment"),
        (5, 3, "StreamID cannot be re-used and must increment"),
    ],
)
async def test_bad_stream_ids(server: Server, sock_path: str, first: int | None, second: int, message: str) -> None:
    peer = await Peer.connect(sock_path)
    if first is not None:
        await peer.send(echo_request(first, b"a"))
        assert (await peer.response())[0] == first
    await peer.send(echo_request(second, b"b"))
    sid, resp = await peer.response()
    assert (sid, resp.code, resp.message) == (second, Code.INVALID_ARGUMENT, message)
    await peer.send(echo_request(101, b"c"))
    assert (await peer.response())[0] == 101
    peer.close()


async def test_data_for_unknown_or_closed_stream(server: Server, sock_path: str) -> None:
    peer = await Peer.connect(sock_path)
    await peer.send(encode_frame(9, DATA, 0, b"x"))
    sid, resp = await peer.response()
    assert (sid, resp.code, resp.message) == (9, Code.INVALID_ARGUMENT, "StreamID is no longer active")
    # a stream whose client side is closed: data after remote-closed
    await peer.send(echo_request(11, flags=FLAG_REMOTE_OPEN, method="Chat"))
    await peer.send(encode_frame(11, DATA, FLAG_REMOTE_CLOSED | FLAG_NO_DATA))
    assert await peer.frame() == Frame(11, DATA, FLAG_REMOTE_CLOSED | FLAG_NO_DATA, b"")
    await peer.send(encode_frame(11, DATA, 0, b""))
    sid, resp = await peer.response()
    assert (sid, resp.code, resp.message) == (11, Code.INVALID_ARGUMENT, "StreamID is no longer active")
    peer.close()


async def test_garbage_frames(server: Server, sock_path: str) -> None:
    peer = await Peer.connect(sock_path)
    await peer.send(encode_frame(1, 0x07, 0, b"whatever"))  # unknown type: ignored
    await peer.send(encode_frame(1, RESPONSE, 0, b"\x12\x00"))  # a response to a server: ignored
    await peer.send(encode_frame(3, REQUEST, 0, b"\xff\xff\xff"))  # not protobuf
    sid, resp = await peer.response()
    assert (sid, resp.code) == (3, Code.INVALID_ARGUMENT)
    await peer.send(encode_frame(5, REQUEST, 0, encode_request(SVC, "Echo", b"\x0a\x05ab")))  # bad payload
    sid, resp = await peer.response()
    assert (sid, resp.code) == (5, Code.INVALID_ARGUMENT)
    await peer.send(echo_request(7, flags=FLAG_REMOTE_OPEN, method="Chat"))
    await peer.send(encode_frame(7, DATA, FLAG_REMOTE_CLOSED, b"carries bytes"))
    sid, resp = await peer.response()
    assert (sid, resp.code, resp.message) == (7, Code.INVALID_ARGUMENT, "data close message cannot include data")
    await peer.send(echo_request(9, b"alive"))
    sid, resp = await peer.response()
    assert (sid, EchoResponse.FromString(resp.payload).data) == (9, b"alive")
    peer.close()


def _counts() -> tuple[int, int]:
    return len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())


async def _settle(server: Server, tasks: int = 1) -> None:
    """Let cancelled handlers and closing transports finish (bounded poll)."""
    for _ in range(2000):
        if not server._connections and len(asyncio.all_tasks()) <= tasks:
            break
        await asyncio.sleep(0.001)
    gc.collect()


@pytest.mark.slow
async def test_fds_and_tasks_return_to_baseline_after_10000_broken_connections(
    server: Server, sock_path: str
) -> None:
    await _settle(server)
    baseline = _counts()
    cuts = [
        echo_request(1, b"x")[:5],  # mid-header
        echo_request(1, b"x" * 100)[:40],  # mid-body
        echo_request(1, b"x", sleep_ms=60_000),  # a handler running when the peer goes
        echo_request(1, flags=FLAG_REMOTE_OPEN, method="Chat"),  # an open stream
    ]

    def break_connections() -> None:
        for i in range(10_000):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(sock_path)
                try:
                    sock.sendall(cuts[i % len(cuts)])
                except ConnectionError:
                    pass
                if i % 3 == 0:  # ECONNRESET rather than a clean close
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    await asyncio.to_thread(break_connections)
    await _settle(server)
    assert server.connections == 0
    assert _counts() == baseline


async def test_unread_stream_and_slow_reader_do_not_block_others(sock_path: str) -> None:
    echo = Echo()
    server = Server(stall_timeout=0.2)
    server.register(echo)
    await server.listen_unix(sock_path)
    client = await Client.connect(sock_path, stall_timeout=0.2)
    stub = EchoClient(client)
    # A server stream the client never reads: its buffer overflows into an error for that
    # stream only, while unary calls on the same connection complete.
    unread = await client.open_stream(
        SVC, "Count", EchoRequest(count=3000, data=b"z" * 1000).SerializeToString(), FLAG_REMOTE_CLOSED
    )
    replies = await asyncio.wait_for(
        asyncio.gather(*(stub.Echo(EchoRequest(data=str(i).encode())) for i in range(1000))), 30
    )
    assert [r.data for r in replies] == [str(i).encode() for i in range(1000)]
    with pytest.raises(RpcError) as err:
        while await asyncio.wait_for(unread.recv(), 10) is not None:
            pass
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    # A client stream whose handler never reads: the server fails that stream alone.
    stuck = await stub.Collect()
    await stuck.send(EchoRequest(sleep_ms=60_000))
    for _ in range(200):
        await stuck.send(EchoRequest(data=b"y"))
    assert (await stub.Echo(EchoRequest(data=b"after"))).data == b"after"
    with pytest.raises(RpcError) as err:
        await asyncio.wait_for(stuck.recv(), 10)
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    await client.close()
    server.close()


async def test_1000_calls_from_a_peer_that_reads_slowly(server: Server, sock_path: str) -> None:
    peer = await Peer.connect(sock_path)
    big = b"r" * 20_000
    await peer.send(b"".join(echo_request(2 * i + 1, big) for i in range(1000)))
    seen = set()
    while len(seen) < 1000:
        chunk = await asyncio.wait_for(peer.reader.read(4096), 10)
        assert chunk
        for frame in peer.decoder.feed(chunk):
            assert isinstance(frame, Frame)
            assert EchoResponse.FromString(decode_response(frame.body).payload).data == big
            seen.add(frame.stream_id)
        await asyncio.sleep(0)
    peer.close()
