"""The gRPC door's drain stays within the grace it is given, open streams or not.

`moorage up` gives the proxy ``shutdown_timeout + 5`` seconds before supervisord's SIGKILL;
a `ctr events` subscription (a gRPC stream that never ends by itself) used to hold the gRPC
stop for the whole grace and then the ttrpc front door's drain got the whole grace again,
so the proxy was killed instead of stopping. Here the inner drain gets what is left."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ttrpc"))

from ttrpc.server import Server  # noqa: E402
from ttrpctest.echo_pb2 import EchoRequest, EchoResponse  # noqa: E402
from ttrpctest.impl import Echo  # noqa: E402

from moorage.proxy.grpc_front import GrpcFront, MethodTable  # noqa: E402
from moorage.registry import Listener  # noqa: E402


async def test_drain_with_an_open_stream_takes_at_most_the_grace(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    ttrpc_path = str(tmp_path / "echo.sock")
    server = Server()
    server.register(Echo())
    await server.listen_unix(ttrpc_path)
    door = GrpcFront(tmp_path / "moorage.sock", ttrpc_path, private, methods=MethodTable("ttrpctest"))
    given: list[float] = []

    async def serve(server: object, sock: object) -> None:
        pass

    async def inner_drain(grace: float) -> None:  # a front door whose streams never end
        given.append(grace)
        await asyncio.sleep(grace)

    listener = door.around(Listener(serve, inner_drain))
    await listener.serve(None, None)
    try:
        async with grpc.aio.insecure_channel(f"unix:{tmp_path / 'moorage.sock'}") as ch:
            call = ch.stream_stream("/moorage.test.v1.Echo/Chat")()
            await call.write(EchoRequest(data=b"x").SerializeToString())
            assert EchoResponse.FromString(await call.read()).data == b"x"  # open on the backend, and stays
            t0 = time.monotonic()
            await listener.drain(1.0)
            took = time.monotonic() - t0
            call.cancel()
    finally:
        server.close()
    assert given and given[0] <= 1.0 - 0.5, given  # the gRPC stop used its part of the grace
    assert took < 1.5, took
