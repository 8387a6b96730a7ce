"""The gRPC front door in process, over real unix sockets, in front of the ttrpc test Echo
service (tests/ttrpc/ttrpctest): every call kind, metadata, deadlines, statuses."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ttrpc"))

from ttrpc.server import Server  # noqa: E402
from ttrpctest.echo_pb2 import EchoRequest, EchoResponse  # noqa: E402
from ttrpctest.impl import Echo  # noqa: E402

from moorage.proxy.grpc_front import GrpcFront, MethodTable  # noqa: E402

SVC = "/moorage.test.v1.Echo/"

@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[str]:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    ttrpc_path = str(tmp_path / "echo.sock")
    server = Server()
    server.register(Echo())
    await server.listen_unix(ttrpc_path)
    door = GrpcFront(tmp_path / "moorage.sock", ttrpc_path, private, methods=MethodTable("ttrpctest"))
    await door.start()
    try:
        yield str(tmp_path / "moorage.sock")
    finally:
        await door.stop(1.0)
        server.close()


@pytest.fixture
async def channel(front: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"unix:{front}") as ch:
        yield ch


def _req(**kw: object) -> bytes:
    return EchoRequest(**kw).SerializeToString()  # type: ignore[arg-type]


async def test_socket_is_0660_and_removed_on_stop(tmp_path: Path, front: str) -> None:
    assert stat.S_IMODE(os.stat(front).st_mode) == 0o660
    assert not (tmp_path / "private" / "moorage.sock").exists()


async def test_unary_maps_namespace_passes_lease_and_deadline(channel: grpc.aio.Channel) -> None:
    md = (("containerd-namespace", "ns1"), ("containerd-lease", "l1"), ("other", "x"))
    raw = await channel.unary_unary(SVC + "Echo")(_req(data=b"hi"), metadata=md, timeout=5)
    resp = EchoResponse.FromString(raw)
    assert resp.data == b"hi"
    assert list(resp.metadata) == ["containerd-lease=l1", "containerd-namespace-ttrpc=ns1"]
    # gRPC rounds the grpc-timeout header up (to three significant digits), so the backend
    # may see a few ms more than the caller asked for, never a second more.
    assert 4000 < resp.remaining_ms <= 5100


async def test_status_and_deadline(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(SVC + "Echo")(_req(fail_code=5, fail_message="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "nope"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(SVC + "Echo")(_req(sleep_ms=5000), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_server_stream(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(SVC + "Count")(_req(data=b"x", count=5))
    got = [EchoResponse.FromString(r).data async for r in call]
    assert got == [b"x"] * 5


async def test_client_stream(channel: grpc.aio.Channel) -> None:
    async def requests() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            yield _req(data=part)

    raw = await channel.stream_unary(SVC + "Collect")(requests(), metadata=(("containerd-namespace", "n"),))
    resp = EchoResponse.FromString(raw)
    assert resp.data == b"abc" and list(resp.metadata) == ["containerd-namespace-ttrpc=n"]


async def test_bidi_stream(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream(SVC + "Chat")()
    for i in range(3):
        await call.write(_req(data=str(i).encode()))
        assert EchoResponse.FromString(await call.read()).data == str(i).encode()
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_unknown_names(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary("/moorage.test.v1.Echo/Nope")(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details() == "unknown method Nope for service moorage.test.v1.Echo"


async def test_backend_down_is_unavailable(tmp_path: Path) -> None:
    private = tmp_path / "p"
    private.mkdir(mode=0o700)
    door = GrpcFront(tmp_path / "g.sock", str(tmp_path / "nobody.sock"), private, methods=MethodTable("ttrpctest"))
    await door.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{tmp_path / 'g.sock'}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary(SVC + "Echo")(_req(data=b"x"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await door.stop(1.0)


async def test_stale_socket_is_replaced_live_one_refused(tmp_path: Path, front: str) -> None:
    from moorage import errdefs

    private = tmp_path / "q"
    private.mkdir(mode=0o700)
    live = GrpcFront(Path(front), str(tmp_path / "echo.sock"), private, methods=MethodTable("ttrpctest"))
    with pytest.raises(errdefs.AlreadyExists):
        await live.start()
    import socket

    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    door = GrpcFront(stale, str(tmp_path / "echo.sock"), private, methods=MethodTable("ttrpctest"))
    await door.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{stale}") as ch:
            raw = await ch.unary_unary(SVC + "Echo")(_req(data=b"ok"))
        assert EchoResponse.FromString(raw).data == b"ok"
    finally:
        await door.stop(1.0)
