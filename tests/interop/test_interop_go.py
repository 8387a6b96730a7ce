"""Interop with containerd/ttrpc 1.1.1 (Go, Debian's package), both directions."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from ttrpc import Code, RpcError
from ttrpc.blocking import Client as BlockingClient
from ttrpc.client import Client
from ttrpc.frame import FrameDecoder
from ttrpc.messages import decode_request
from ttrpc.protocol import ClientConnection
from ttrpc.server import Server
from ttrpctest.echo_pb2 import EchoRequest
from ttrpctest.echo_ttrpc import EchoBlockingClient, EchoClient
from ttrpctest.impl import Echo

pytestmark = pytest.mark.interop

NS = {"containerd-namespace-ttrpc": "default", "x-multi": ["a", "b"]}


async def test_python_client_to_go_server(go_server: str) -> None:
    client = await Client.connect(go_server)
    echo = EchoClient(client)
    try:
        reply = await echo.Echo(EchoRequest(data=b"hello"), metadata=NS)
        assert reply.data == b"hello"
        assert list(reply.metadata) == ["containerd-namespace-ttrpc=default", "x-multi=a", "x-multi=b"]
        assert reply.remaining_ms == -1

        reply = await echo.Echo(EchoRequest(data=b"d"), timeout=10)
        assert 9000 < reply.remaining_ms <= 10000

        big = bytes(range(256)) * (3 << 12)
        assert (await echo.Echo(EchoRequest(data=big))).data == big

        with pytest.raises(RpcError) as err:
            await echo.Echo(EchoRequest(fail_code=Code.NOT_FOUND, fail_message="no such thing"))
        assert (err.value.code, err.value.message) == (Code.NOT_FOUND, "no such thing")

        with pytest.raises(RpcError) as err:
            await echo.Echo(EchoRequest(sleep_ms=5000), timeout=0.2)
        assert err.value.code == Code.DEADLINE_EXCEEDED

        with pytest.raises(RpcError) as err:
            await client.unary_raw("moorage.test.v1.Echo", "Nope", b"")
        assert (err.value.code, err.value.message) == (Code.UNIMPLEMENTED, "method Nope")
        with pytest.raises(RpcError) as err:
            await client.unary_raw("moorage.test.v1.Missing", "Echo", b"")
        assert (err.value.code, err.value.message) == (Code.UNIMPLEMENTED, "service moorage.test.v1.Missing")

        with pytest.raises(RpcError) as err:
            await echo.Echo(EchoRequest(data=b"x" * (5 << 20)))
        assert err.value.code == Code.RESOURCE_EXHAUSTED

        replies = await asyncio.gather(*(echo.Echo(EchoRequest(data=str(i).encode())) for i in range(300)))
        assert [r.data for r in replies] == [str(i).encode() for i in range(300)]
    finally:
        await client.close()


def test_blocking_client_to_go_server(go_server: str) -> None:
    with BlockingClient(go_server) as client:
        echo = EchoBlockingClient(client)
        assert echo.Echo(EchoRequest(data=b"blocking"), metadata=NS).data == b"blocking"
        with pytest.raises(RpcError) as err:
            echo.Echo(EchoRequest(sleep_ms=5000), timeout=0.2)
        assert err.value.code == Code.DEADLINE_EXCEEDED
        assert echo.Echo(EchoRequest(data=b"after")).data == b"after"


async def test_go_client_to_python_server(gopeer: Path, tmp_path: Path) -> None:
    sock = str(tmp_path / "py.sock")
    echo = Echo()
    server = Server()
    server.register(echo)
    await server.listen_unix(sock)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(gopeer), "client", "-addr", sock, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
    finally:
        server.close()
    got = json.loads(out)
    assert got["echo"]["data"] == "hello"
    assert got["echo"]["metadata"] == ["containerd-namespace-ttrpc=default", "x-multi=a", "x-multi=b"]
    assert got["large"] == {"ok": True, "equal": True}
    assert (got["error"]["code"], got["error"]["message"]) == (Code.NOT_FOUND, "no such thing")
    assert got["timeout"]["code"] == Code.DEADLINE_EXCEEDED and got["timeout"]["elapsed_ms"] < 2000
    assert echo.cancelled == 1
    assert 9000 < got["deadline"]["remaining_ms"] <= 10000
    assert (got["no_method"]["code"], got["no_method"]["message"]) == (Code.UNIMPLEMENTED, "method Nope")
    assert (got["no_service"]["code"], got["no_service"]["message"]) == (
        Code.UNIMPLEMENTED,
        "service moorage.test.v1.Missing",
    )
    assert got["oversize"]["code"] == Code.RESOURCE_EXHAUSTED
    assert "exceed maximum message size of 4194304" in got["oversize"]["message"]
    assert got["after_oversize"]["data"] == "still here"
    assert got["concurrent"] == 200


async def test_go_client_request_bytes_match_ours(gopeer: Path, tmp_path: Path) -> None:
    """Golden check: the Request frame Go sends is byte-identical to the one we encode."""
    sock_path = str(tmp_path / "raw.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        str(gopeer), "client", "-addr", sock_path, stdout=asyncio.subprocess.DEVNULL
    )
    conn, _ = await loop.sock_accept(listener)
    decoder = FrameDecoder()
    raw = b""
    frames: list[object] = []
    while not frames:
        chunk = await loop.sock_recv(conn, 65536)
        raw += chunk
        frames = list(decoder.feed(chunk))
    conn.close()
    listener.close()
    await proc.wait()
    request = decode_request(frames[0].body)  # type: ignore[attr-defined]
    assert sorted(request.metadata) == [("containerd-namespace-ttrpc", "default"), ("x-multi", "a"), ("x-multi", "b")]
    _, ours = ClientConnection().request(
        "moorage.test.v1.Echo", "Echo", EchoRequest(data=b"hello").SerializeToString(), metadata=request.metadata
    )
    assert raw[: len(ours)] == ours
