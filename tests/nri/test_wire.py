"""Wire compatibility with containerd/nri's multiplexer (reference/nri.md §1.3, §2) with
golden bytes, and the SDK against a hand-framed runtime that frames like the Go mux."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.mux import FrameDecoder, MessageSplitter, MuxError, encode_message
from moorage.nri.stub import Adjustment, Plugin, Stub
from ttrpc import ttrpc_pb2

REGISTER_GOLDEN = bytes.fromhex(
    "00000002" "0000004f"                      # mux: conn 2 (runtime service), 79 bytes
    "00000045" "00000001" "01" "00"            # ttrpc: 69 bytes, stream 1, request, no flags
    "0a1c") + b"nri.pkg.api.v1alpha1.Runtime" + bytes.fromhex("120e") + b"RegisterPlugin" + bytes.fromhex(
    "1a15" "0a06") + b"logger" + bytes.fromhex("1202") + b"10" + bytes.fromhex("1a07") + b"v0.12.2"


def test_small_message_is_one_frame() -> None:
    msg = bytes(range(14))
    assert encode_message(1, msg) == b"\x00\x00\x00\x01\x00\x00\x00\x0e" + msg
    assert encode_message(2, b"") == b"\x00\x00\x00\x02\x00\x00\x00\x00"


def test_message_over_4096_is_header_frame_then_payload_frame() -> None:
    payload = b"p" * (39 * 1024)
    msg = struct.pack(">IIBB", len(payload), 3, 2, 0) + payload
    out = encode_message(1, msg)
    assert out[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x0a"
    assert out[8:18] == msg[:10]
    assert out[18:26] == struct.pack(">II", 1, len(payload))
    assert out[26:] == payload
    exactly = struct.pack(">IIBB", 4086, 3, 2, 0) + b"q" * 4086  # 4096 bytes: still one frame
    assert encode_message(1, exactly)[:8] == struct.pack(">II", 1, 4096)


def test_frame_decoder_whole_bytewise_and_trailing() -> None:
    wire = encode_message(1, b"abc") + encode_message(2, b"") + encode_message(2, b"defg") + b"\x00\x00"
    assert FrameDecoder().feed(wire) == [(1, b"abc"), (2, b""), (2, b"defg")]
    d = FrameDecoder()
    got = []
    for i in range(len(wire)):
        got += d.feed(wire[i : i + 1])
    assert got == [(1, b"abc"), (2, b""), (2, b"defg")]
    assert d.feed(b"\x00\x00\x00\x00\x00\x01\x01") == [(0, b"\x01")]


def test_frame_decoder_refuses_oversized_frames() -> None:
    with pytest.raises(MuxError):
        FrameDecoder().feed(b"\x00\x00\x00\x01\xff\xff\xff\xff")


def test_message_splitter_reassembles_arbitrary_chunks() -> None:
    a = struct.pack(">IIBB", 3, 1, 1, 0) + b"abc"
    b = struct.pack(">IIBB", 0, 3, 1, 0)
    s = MessageSplitter()
    assert s.feed((a + b)[:5]) == []
    assert s.feed((a + b)[5:]) == [a, b]


def go_frames(conn: int, message: bytes) -> bytes:
    """How a Go peer may frame one ttrpc message: the first 4096 bytes, then the rest."""
    out = b""
    for i in range(0, len(message), 4096):
        chunk = message[i : i + 4096]
        out += struct.pack(">II", conn, len(chunk)) + chunk
    return out


def ttrpc_request(stream: int, method: str, payload: bytes) -> bytes:
    body = ttrpc_pb2.Request(service="nri.pkg.api.v1alpha1.Plugin", method=method, payload=payload,
                             timeout_nano=2_000_000_000).SerializeToString()
    return struct.pack(">IIBB", len(body), stream, 1, 0) + body


def ttrpc_response(stream: int, payload: bytes) -> bytes:
    body = ttrpc_pb2.Response(payload=payload).SerializeToString()
    return struct.pack(">IIBB", len(body), stream, 2, 0) + body


class FakeRuntime:
    """The runtime end of a trunk, reading raw frames (a stand-in for containerd's Go mux)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.frames: list[tuple[int, bytes]] = []
        self.raw = b""

    async def frame(self) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        while not self.frames:
            data = await loop.sock_recv(self.sock, 65536)
            assert data, "plugin closed the trunk"
            self.raw += data
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    async def message(self, conn: int) -> tuple[list[int], bytes]:
        """One ttrpc message on ``conn`` and the sizes of the frames it came in."""
        sizes: list[int] = []
        buf = b""
        while True:
            cid, payload = await self.frame()
            assert cid == conn
            sizes.append(len(payload))
            buf += payload
            if len(buf) >= 10 and len(buf) == 10 + struct.unpack(">I", buf[:4])[0]:
                return sizes, buf

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)


class Big(Plugin):
    def __init__(self) -> None:
        self.config = ""

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        self.config = config

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Adjustment:
        return Adjustment().add_annotation("big", "z" * 20000)


async def test_sdk_against_go_framing(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    monkeypatch.setenv("NRI_PLUGIN_SOCKET", str(theirs.detach()))  # the stub owns it now
    plugin = Big()
    stub = Stub(plugin, name="logger", idx="10")
    started = asyncio.ensure_future(stub.start())
    rt = FakeRuntime(ours)
    try:
        async with asyncio.timeout(10):
            sizes, register = await rt.message(2)
            assert rt.raw[: len(REGISTER_GOLDEN)] == REGISTER_GOLDEN
            assert register == REGISTER_GOLDEN[8:]
            await rt.send(go_frames(2, ttrpc_response(1, b"")))

            config = "c" * 10000  # > 4096: the Go mux splits it, we reassemble
            req = api.ConfigureRequest(config=config, runtime_name="containerd", runtime_version="2.1",
                                       registration_timeout=5000, request_timeout=2000)
            await rt.send(go_frames(1, ttrpc_request(1, "Configure", req.SerializeToString())))
            sizes, msg = await rt.message(1)
            resp = ttrpc_pb2.Response.FromString(msg[10:])
            assert api.ConfigureResponse.FromString(resp.payload).events == 1 << 3
            assert plugin.config == config

            await rt.send(go_frames(1, ttrpc_request(3, "Synchronize", api.SynchronizeRequest().SerializeToString())))
            await rt.message(1)
            await started

            create = api.CreateContainerRequest(pod=api.PodSandbox(id="p"), container=api.Container(id="c"))
            await rt.send(go_frames(1, ttrpc_request(5, "CreateContainer", create.SerializeToString())))
            sizes, msg = await rt.message(1)
            assert sizes[0] == 10 and len(sizes) == 2  # header frame, then the whole payload
            body = ttrpc_pb2.Response.FromString(msg[10:])
            assert api.CreateContainerResponse.FromString(body.payload).adjust.annotations["big"] == "z" * 20000

            ours.close()
            await stub.wait()
    finally:
        stub.close()


@pytest.mark.parametrize("in_memory", [True, False])
async def test_mux_carries_ttrpc_both_ways(in_memory: bool) -> None:
    """Both local-end implementations (in-memory transports, socketpair fallback)."""
    from ttrpc.server import Server

    from moorage.api.nri.pkg.api.api_ttrpc import PluginClient, PluginServicer, RuntimeClient, RuntimeServicer
    from moorage.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux

    class P(PluginServicer):
        async def Configure(self, request: api.ConfigureRequest, ctx: object) -> api.ConfigureResponse:
            return api.ConfigureResponse(events=len(request.config))

    class R(RuntimeServicer):
        async def RegisterPlugin(self, request: api.RegisterPluginRequest, ctx: object) -> api.Empty:
            return api.Empty()

    a, b = socket.socketpair()
    rs, ps = Server(), Server()
    rs.register(R())
    ps.register(P())
    rmux, to_plugin = await Mux.open(a, serve=(RUNTIME_SERVICE_CONN, rs), connect=PLUGIN_SERVICE_CONN,
                                     in_memory=in_memory)
    pmux, to_runtime = await Mux.open(b, serve=(PLUGIN_SERVICE_CONN, ps), connect=RUNTIME_SERVICE_CONN,
                                      in_memory=in_memory)
    await RuntimeClient(to_runtime).RegisterPlugin(api.RegisterPluginRequest(plugin_name="x"), timeout=5)
    big = "b" * 100_000
    resp = await PluginClient(to_plugin).Configure(api.ConfigureRequest(config=big), timeout=5)
    assert resp.events == 100_000
    pmux.close()
    async with asyncio.timeout(5):
        await rmux.closed
    with pytest.raises(Exception):
        await PluginClient(to_plugin).Configure(api.ConfigureRequest(), timeout=1)


def test_frame_decoder_on_arbitrary_bytes() -> None:
    """Untrusted trunk bytes in any chunking: frames out, or MuxError, nothing else."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2048), st.lists(st.integers(min_value=1, max_value=64), max_size=40))
    def check(data: bytes, cuts: list[int]) -> None:
        whole = FrameDecoder(max_frame=1024)
        try:
            expected = whole.feed(data)
        except MuxError:
            expected = None
        chunked = FrameDecoder(max_frame=1024)
        got: list[tuple[int, bytes]] = []
        pos = 0
        try:
            for n in [*cuts, len(data)]:
                got += chunked.feed(data[pos : pos + n])
                pos += n
        except MuxError:
            assert expected is None
            return
        assert expected is not None and got == expected

    check()
