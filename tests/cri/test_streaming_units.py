"""The streaming server's pure parts: SPDY/3 framing (whole, byte by byte, bad input),
the remotecommand conventions, the token cache."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.services.cri.streaming import remotecommand as rc
from moorage.services.cri.streaming import spdy
from moorage.services.cri.streaming import websocket as ws
from moorage.services.cri.streaming.contract import TermSize
from moorage.services.cri.streaming.server import StreamingServer
from moorage.services.cri.streaming.session import Session
from moorage.services.cri.streaming.tokens import TokenCache

GO_DICTIONARY = Path("/usr/share/gocode/src/github.com/moby/spdystream/spdy/dictionary.go")

FRAMES: list[spdy.Frame] = [
    spdy.SynStream(1, {"streamtype": ["error"], "port": ["80"]}),
    spdy.SynStream(3, {"x": ["a", "b"]}, spdy.FLAG_FIN, associated_id=1, priority=7),
    spdy.SynReply(1, {}),
    spdy.DataFrame(1, b"hello"),
    spdy.DataFrame(3, b"", spdy.FLAG_FIN),
    spdy.HeadersFrame(1, {"k": ["v"]}),
    spdy.RstStream(3, spdy.CANCEL),
    spdy.Settings(((1, 4, 65536), (0, 7, 1))),
    spdy.Ping(42),
    spdy.WindowUpdate(1, 1000),
    spdy.GoAway(3, 0),
]


def test_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b",utf-,*,enq=0.")
    if GO_DICTIONARY.exists():  # the same bytes spdystream primes zlib with
        body = GO_DICTIONARY.read_text().split("headerDictionary = []byte{", 1)[1].split("}")[0]
        assert bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", body)) == spdy.DICTIONARY


def test_round_trip_whole_and_byte_by_byte() -> None:
    enc = spdy.Encoder()  # one compression context per direction, as on a connection
    wire = b"".join(enc.encode(f) for f in FRAMES)
    assert spdy.Decoder().feed(wire) == FRAMES
    d = spdy.Decoder()
    got: list[spdy.Frame] = []
    for i in range(len(wire)):
        got += d.feed(wire[i:i + 1])
    assert got == FRAMES


def test_wire_layout() -> None:
    e = spdy.Encoder()
    assert e.encode(spdy.DataFrame(5, b"ab", spdy.FLAG_FIN)) == b"\x00\x00\x00\x05\x01\x00\x00\x02ab"
    assert e.encode(spdy.Ping(9)) == b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x09"
    assert e.encode(spdy.RstStream(1, 5)) == \
        b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x05"
    syn = e.encode(spdy.SynReply(1, {"a": ["b"]}))
    assert syn[:4] == b"\x80\x03\x00\x02"
    block = zlib.decompressobj(zdict=spdy.DICTIONARY).decompress(syn[12:])
    assert block == struct.pack(">I", 1) + b"\x00\x00\x00\x01a\x00\x00\x00\x01b"


def test_trailing_bytes_wait_for_the_rest() -> None:
    wire = spdy.Encoder().encode(spdy.DataFrame(1, b"x" * 10))
    d = spdy.Decoder()
    assert d.feed(wire + wire[:5]) == [spdy.DataFrame(1, b"x" * 10)]
    assert d.feed(wire[5:]) == [spdy.DataFrame(1, b"x" * 10)]


@pytest.mark.parametrize("wire", [
    b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01",  # SPDY/2
    b"\x80\x03\x00\x63\x00\x00\x00\x00",  # unknown type
    b"\x80\x03\x00\x06\x00\x00\x00\x02\x00\x00",  # short PING
    b"\x80\x03\x00\x02\x00\x00\x00\x08\x00\x00\x00\x01garbage!",  # headers not zlib
    b"\x80\x03\x00\x04\x00\x00\x00\x04\x00\x00\x01\x00",  # SETTINGS count past the end
])
def test_bad_input_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(spdy.ProtocolError):
        spdy.Decoder().feed(wire)


def test_header_bomb_is_refused() -> None:
    c = zlib.compressobj(zdict=spdy.DICTIONARY)
    block = c.compress(struct.pack(">I", 1) + b"\0" * (2 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    frame = struct.pack(">HHI", 0x8003, spdy.SYN_REPLY, 4 + len(block)) + b"\0\0\0\1" + block
    with pytest.raises(spdy.ProtocolError):
        spdy.Decoder().feed(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_frames_or_a_protocol_error(data: bytes) -> None:
    try:
        spdy.Decoder().feed(data)
    except spdy.ProtocolError:
        pass


def test_negotiation() -> None:
    assert rc.negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io"], rc.REMOTECOMMAND_SPDY) == rc.V4
    assert rc.negotiate(["v2.channel.k8s.io, channel.k8s.io"], rc.REMOTECOMMAND_SPDY) == rc.V2
    assert rc.negotiate([], rc.REMOTECOMMAND_SPDY) == ""
    with pytest.raises(rc.NoCommonProtocol):
        rc.negotiate(["v9"], rc.REMOTECOMMAND_SPDY)
    assert rc.expected_streams(rc.V4, True, True, True, True) == {"error", "stdin", "stdout", "resize"}
    assert rc.expected_streams(rc.V2, False, True, True, True) == {"error", "stdout"}


def test_statuses() -> None:
    st_ = json.loads(rc.exit_failure(["sh"], 3))
    assert st_["status"] == "Failure" and st_["reason"] == "NonZeroExitCode"
    assert st_["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert json.loads(rc.success()) == {"metadata": {}, "status": "Success"}
    assert rc.v1_message(rc.success()) == b""
    assert rc.v1_message(rc.internal_error("boom")) == b"Internal error occurred: boom"


def test_resize_decoder_takes_any_chunks() -> None:
    wire = b'{"Width":80,"Height":24}\n{"Width":100,"Height":40}'
    d = rc.ResizeDecoder()
    got: list[TermSize] = []
    for i in range(len(wire)):
        got += d.feed(wire[i:i + 1])
    assert got == [TermSize(80, 24), TermSize(100, 40)]
    with pytest.raises(ValueError):
        rc.ResizeDecoder().feed(b"[1]")


def test_tokens_single_use_expiry_and_bound() -> None:
    now = [0.0]
    c: TokenCache[str] = TokenCache(10.0, max_size=2, clock=lambda: now[0])
    a = c.put("a")
    assert c.take(a) == "a" and c.take(a) is None
    b = c.put("b")
    now[0] = 10.0
    assert c.take(b) is None
    x, y, z = c.put("x"), c.put("y"), c.put("z")
    assert c.take(x) is None and c.take(y) == "y" and c.take(z) == "z"
    assert c.take("nope") is None


# ---- WebSocket framing -----------------------------------------------------------------

def _client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_websocket_accept_key_is_rfc6455s() -> None:
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_websocket_messages_whole_fragmented_and_byte_by_byte() -> None:
    wire = (_client_frame(ws.BINARY, b"\x00hello") + _client_frame(ws.TEXT, b"ab", fin=False)
            + _client_frame(ws.PING, b"p") + _client_frame(ws.CONT, b"cd")
            + _client_frame(ws.BINARY, b"x" * 70000) + _client_frame(ws.CLOSE, b"\x03\xe8"))
    want = [(ws.BINARY, b"\x00hello"), (ws.PING, b"p"), (ws.TEXT, b"abcd"),
            (ws.BINARY, b"x" * 70000), (ws.CLOSE, b"\x03\xe8")]
    assert ws.Decoder().feed(wire) == want
    d = ws.Decoder()
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(wire), 3):
        got += d.feed(wire[i:i + 3])
    assert got == want
    assert ws.frame(ws.BINARY, b"ab") == b"\x82\x02ab"
    assert ws.frame(ws.BINARY, b"y" * 300)[:4] == b"\x82\x7e\x01\x2c"


@pytest.mark.parametrize("wire", [
    b"\x82\x02ab",  # unmasked client frame
    b"\xc2\x80\0\0\0\0",  # reserved bit
    _client_frame(ws.CONT, b"x"),  # continuation of nothing
    _client_frame(ws.PING, b"x", fin=False),  # fragmented control frame
    _client_frame(0x3, b"x"),  # unknown opcode
    b"\x82\xff" + struct.pack(">Q", 1 << 40),  # too large
])
def test_websocket_bad_input_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(ws.WsProtocolError):
        ws.Decoder().feed(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_websocket_any_bytes_give_messages_or_a_protocol_error(data: bytes) -> None:
    try:
        ws.Decoder().feed(data)
    except ws.WsProtocolError:
        pass


# ---- one SPDY session over a socket pair, driven frame by frame ---------------------------

class _Peer:
    """The client side of a socket pair, speaking frames through our own codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.enc, self.dec = spdy.Encoder(), spdy.Decoder()
        self.frames: list[spdy.Frame] = []

    def send(self, *frames: spdy.Frame) -> None:
        for f in frames:
            self.writer.write(self.enc.encode(f))

    async def next(self) -> spdy.Frame:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "connection closed"
            self.frames += self.dec.feed(data)
        return self.frames.pop(0)


@pytest.fixture
async def spdy_pair() -> AsyncIterator[tuple[Session, _Peer]]:
    a, b = socket.socketpair()
    sr, sw = await asyncio.open_connection(sock=a)
    cr, cw = await asyncio.open_connection(sock=b)
    session = Session(sr, sw)
    runner = asyncio.get_running_loop().create_task(session.run())
    yield session, _Peer(cr, cw)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    sw.close()
    cw.close()


async def test_session_streams_ping_and_bad_frames(spdy_pair: tuple[Session, _Peer]) -> None:
    session, peer = spdy_pair
    peer.send(spdy.SynStream(1, {"streamtype": ["stdin"]}), spdy.DataFrame(1, b"abc"),
              spdy.DataFrame(1, b"", spdy.FLAG_FIN), spdy.Ping(7))
    assert await peer.next() == spdy.SynReply(1, {})
    s = await session.accept()
    assert s is not None and s.header("streamType") == "stdin"
    assert await s.read() == b"abc" and await s.read() == b"" and await s.read() == b""
    assert await peer.next() == spdy.Ping(7)
    await s.write(b"out")
    await s.close()
    assert await peer.next() == spdy.DataFrame(1, b"out")
    assert await peer.next() == spdy.DataFrame(1, b"", spdy.FLAG_FIN)
    peer.send(spdy.SynStream(4, {}), spdy.DataFrame(9, b"x"), spdy.SynStream(1, {}))
    assert await peer.next() == spdy.RstStream(4, spdy.PROTOCOL_ERROR)  # even: ours to open
    assert await peer.next() == spdy.RstStream(9, spdy.INVALID_STREAM)
    assert await peer.next() == spdy.RstStream(1, spdy.PROTOCOL_ERROR)  # ids only go up
    peer.send(spdy.SynStream(3, {}), spdy.RstStream(3, spdy.CANCEL))
    assert await peer.next() == spdy.SynReply(3, {})
    s3 = await session.accept()
    assert s3 is not None and await s3.read() == b""
    peer.send(spdy.GoAway(3))
    assert await session.accept() is None


async def test_session_ends_on_garbage(spdy_pair: tuple[Session, _Peer]) -> None:
    session, peer = spdy_pair
    peer.send(spdy.SynStream(1, {}))
    assert await peer.next() == spdy.SynReply(1, {})
    s = await session.accept()
    assert s is not None
    peer.writer.write(b"\x80\x02\x00\x01" + b"\0" * 12)  # SPDY/2
    assert await s.read() == b""
    assert await session.accept() is None
    await asyncio.wait_for(session.closed.wait(), 10)


async def test_server_stop_ends_live_sessions() -> None:
    class Hanging:
        async def exec(self, *args: object) -> int:
            await asyncio.Event().wait()
            return 0

    srv = StreamingServer(Hanging())  # type: ignore[arg-type]
    await srv.start()
    url = srv.exec_url("c", ["x"], tty=False, stdin=False, stdout=True, stderr=False)
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    w.write(f"POST {url.removeprefix(srv.base_url)} HTTP/1.1\r\nConnection: Upgrade\r\n"
            "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n".encode())
    assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    peer = _Peer(r, w)
    peer.send(spdy.SynStream(1, {"streamtype": ["error"]}), spdy.SynStream(3, {"streamtype": ["stdout"]}))
    assert await peer.next() == spdy.SynReply(1, {})
    assert await peer.next() == spdy.SynReply(3, {})
    await asyncio.wait_for(srv.stop(), 20)
    rest = await asyncio.wait_for(r.read(), 20)  # the connection is closed
    assert isinstance(rest, bytes)
    w.close()
