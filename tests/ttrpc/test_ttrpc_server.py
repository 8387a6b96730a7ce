"""Server behaviour: dispatch, errors, deadlines, metadata, credentials, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from ttrpc import Code, RpcError
from ttrpc.client import Client
from ttrpc.frame import FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN
from ttrpc.server import Context, RawCall, Server, current_context
from ttrpctest.echo_pb2 import EchoRequest
from ttrpctest.echo_ttrpc import EchoClient, EchoServicer
from ttrpctest.impl import Echo

SVC = "moorage.test.v1.Echo"


async def serve(path: str, *servicers: object, **kwargs: object) -> Server:
    server = Server(**kwargs)  # type: ignore[arg-type]
    for s in servicers:
        server.register(s)
    await server.listen_unix(path)
    return server


async def test_unknown_service_and_method_are_unimplemented(client: Client) -> None:
    with pytest.raises(RpcError) as err:
        await client.unary_raw(SVC, "Nope", b"")
    assert (err.value.code, err.value.message) == (Code.UNIMPLEMENTED, "method Nope")
    with pytest.raises(RpcError) as err:
        await client.unary_raw("x.y.Z", "Echo", b"")
    assert (err.value.code, err.value.message) == (Code.UNIMPLEMENTED, "service x.y.Z")


async def test_unimplemented_servicer_method(sock_path: str) -> None:
    server = await serve(sock_path, EchoServicer())
    client = await Client.connect(sock_path)
    with pytest.raises(RpcError) as err:
        await EchoClient(client).Echo(EchoRequest())
    assert err.value.code == Code.UNIMPLEMENTED
    with pytest.raises(RpcError) as err:
        async for _ in EchoClient(client).Count(EchoRequest()):
            pass
    assert err.value.code == Code.UNIMPLEMENTED
    await client.close()
    server.close()


def test_register_twice_raises() -> None:
    server = Server()
    server.register(Echo())
    with pytest.raises(ValueError, match="already registered"):
        server.register(Echo())

    async def raw(ctx: Context, call: RawCall) -> None: ...

    with pytest.raises(ValueError):
        server.register_raw(SVC, "Echo", raw)
    server.register_raw("other.Svc", "M", raw)
    with pytest.raises(ValueError):
        server.register_raw("other.Svc", "M", raw)


class Faulty(EchoServicer):
    async def Echo(self, request: EchoRequest, ctx: Context) -> None:  # type: ignore[override]
        if request.data == b"lookup":
            raise KeyError("thing")
        if request.data == b"none":
            return None
        raise ZeroDivisionError("boom")


async def test_exception_is_unknown_with_traceback_logged(sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    server = await serve(sock_path, Faulty())
    client = await Client.connect(sock_path)
    with caplog.at_level(logging.ERROR, logger="ttrpc.server"):
        with pytest.raises(RpcError) as err:
            await EchoClient(client).Echo(EchoRequest(data=b"x"))
    assert (err.value.code, err.value.message) == (Code.UNKNOWN, "boom")
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    assert "/moorage.test.v1.Echo/Echo" in caplog.text
    with pytest.raises(RpcError) as err:
        await EchoClient(client).Echo(EchoRequest(data=b"none"))
    assert err.value.code == Code.UNKNOWN
    await client.close()
    server.close()


async def test_status_of_maps_known_kinds(sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    def status_of(exc: BaseException) -> tuple[int, str] | None:
        if isinstance(exc, KeyError):
            return Code.NOT_FOUND, f"not found: {exc.args[0]}"
        return None

    server = await serve(sock_path, Faulty(), status_of=status_of)

    class NotFound(Exception):
        def __init__(self, code: int, message: str) -> None:
            super().__init__(code, message)

    client = await Client.connect(sock_path, error_factory=NotFound)
    with caplog.at_level(logging.ERROR, logger="ttrpc.server"):
        with pytest.raises(NotFound) as err:
            await EchoClient(client).Echo(EchoRequest(data=b"lookup"))
    assert err.value.args == (Code.NOT_FOUND, "not found: thing")
    assert not caplog.records
    await client.close()
    server.close()


async def test_deadline_cancels_handler_and_answers_deadline_exceeded(client: Client, echo: Echo) -> None:
    # A raw call carries timeout_nano but waits without a local timeout: the server decides.
    from ttrpctest.echo_pb2 import EchoResponse

    stream = await client.open_stream(
        SVC, "Echo", EchoRequest(sleep_ms=60_000).SerializeToString(), 0, timeout_nano=50_000_000
    )
    with pytest.raises(RpcError) as err:
        await asyncio.wait_for(stream.recv(), 10)
    assert err.value.code == Code.DEADLINE_EXCEEDED
    assert echo.cancelled == 1
    reply = await EchoClient(client).Echo(EchoRequest(data=b"x"), timeout=30)
    assert isinstance(reply, EchoResponse) and 29_000 < reply.remaining_ms <= 30_000


async def test_client_timeout(client: Client) -> None:
    with pytest.raises(RpcError) as err:
        await EchoClient(client).Echo(EchoRequest(sleep_ms=60_000), timeout=0.05)
    assert err.value.code == Code.DEADLINE_EXCEEDED
    assert (await EchoClient(client).Echo(EchoRequest(data=b"ok"))).data == b"ok"


async def test_context_metadata_peer_and_contextvar(sock_path: str) -> None:
    seen: list[Context] = []

    async def raw(ctx: Context, call: RawCall) -> None:
        assert current_context() is ctx
        seen.append(ctx)
        await call.respond(call.payload)

    server = Server()
    server.register_raw("t.Raw", "Call", raw)
    await server.listen_unix(sock_path)
    client = await Client.connect(sock_path)
    assert await client.unary_raw("t.Raw", "Call", b"p", metadata={"Key": ["1", "2"], "other": "x"}) == b"p"
    (ctx,) = seen
    assert ctx.metadata == {"key": ["1", "2"], "other": ["x"]}
    assert (ctx.service, ctx.method, ctx.deadline, ctx.time_remaining()) == ("t.Raw", "Call", None, None)
    assert (ctx.peer.pid, ctx.peer.uid, ctx.peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    await client.close()
    server.close()


async def test_raw_streaming_and_fallback(sock_path: str) -> None:
    async def fallback(ctx: Context, call: RawCall) -> None:
        assert call.flags == FLAG_REMOTE_OPEN
        parts = [call.payload]
        while (part := await call.recv()) is not None:
            parts.append(part)
            await call.send(part.upper())
        await call.send(b"|".join(parts))
        await call.close()

    server = Server()
    server.register(Echo())
    server.set_fallback(fallback)
    await server.listen_unix(sock_path)
    client = await Client.connect(sock_path)
    stream = await client.open_stream("any.Service", "Any", b"first", FLAG_REMOTE_OPEN)
    await stream.send(b"a")
    assert await stream.recv() == b"A"
    await stream.send(b"b")
    await stream.close_send()
    assert [m async for m in stream] == [b"B", b"first|a|b"]
    with pytest.raises(RpcError) as err:
        await client.unary_raw(SVC, "Nope", b"")
    assert err.value.message == "method Nope"
    await client.close()
    server.close()


async def test_streaming_method_without_stream_flags_is_refused(client: Client) -> None:
    # A ttrpc 1.1 peer (flags 0) must never be answered with data frames.
    with pytest.raises(RpcError) as err:
        await client.unary_raw(SVC, "Count", EchoRequest(count=3).SerializeToString())
    assert err.value.code == Code.UNIMPLEMENTED
    stream = await client.open_stream(SVC, "Count", EchoRequest(count=2).SerializeToString(), FLAG_REMOTE_CLOSED)
    assert len([m async for m in stream]) == 2


async def test_disconnect_fails_pending_calls_with_unavailable(server: Server, client: Client) -> None:
    stub = EchoClient(client)
    calls = [asyncio.ensure_future(stub.Echo(EchoRequest(sleep_ms=60_000))) for _ in range(20)]
    stream = await stub.Chat()
    while server.connections == 0 or not any(True for c in server._connections if len(c.calls) == 21):
        await asyncio.sleep(0.001)
    server.close()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(r, RpcError) and r.code == Code.UNAVAILABLE for r in results)
    with pytest.raises(RpcError) as err:
        await stream.recv()
    assert err.value.code == Code.UNAVAILABLE
    with pytest.raises(RpcError) as err:
        await stub.Echo(EchoRequest())
    assert err.value.code == Code.UNAVAILABLE


async def test_graceful_shutdown_drains_then_cancels(sock_path: str) -> None:
    echo = Echo()
    server = await serve(sock_path, echo)
    client = await Client.connect(sock_path)
    stub = EchoClient(client)
    quick = asyncio.ensure_future(stub.Echo(EchoRequest(data=b"q", sleep_ms=100)))
    stuck = asyncio.ensure_future(stub.Echo(EchoRequest(sleep_ms=60_000)))
    await echo.started.wait()
    while len(next(iter(server._connections)).calls) < 2:
        await asyncio.sleep(0.001)
    await server.shutdown(2.0)
    assert (await quick).data == b"q"
    with pytest.raises(RpcError) as err:
        await stuck
    assert err.value.code in (Code.CANCELLED, Code.UNAVAILABLE)
    assert echo.cancelled == 1
    assert not os.path.exists(sock_path) or not await _connectable(sock_path)


async def test_shutdown_of_idle_server_is_immediate(sock_path: str) -> None:
    server = await serve(sock_path, Echo())
    client = await Client.connect(sock_path)
    await EchoClient(client).Echo(EchoRequest())
    await asyncio.wait_for(server.shutdown(30), 5)
    await asyncio.wait_for(client.wait_closed(), 5)


async def _connectable(path: str) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True


async def test_socket_mode_and_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = await serve(path, Echo())
    assert os.stat(path).st_mode & 0o777 == 0o660
    with pytest.raises(OSError):
        await serve(path, Echo())
    server.close()
    await asyncio.sleep(0)
    again = await serve(path, Echo())
    again.close()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
async def test_require_same_uid_refuses_other_users() -> None:
    # The venv and pytest's tmp dirs are unreachable for another uid: use /tmp and Debian's python.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    folder = tempfile.mkdtemp(prefix="ttrpc-uid-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "uid.sock")
    server = await serve(path, Echo(), require_same_uid=True)
    os.chmod(path, 0o666)
    probe = textwrap.dedent(
        f"""
        import socket, struct
        s = socket.socket(socket.AF_UNIX)
        s.connect({path!r})
        try:
            s.sendall(struct.pack(">IIBB", 0, 1, 1, 0))
            print("refused" if s.recv(100) == b"" else "answered")
        except ConnectionError:
            print("refused")
        """
    )
    proc = await asyncio.to_thread(
        subprocess.run, [python, "-I", "-c", probe], user=65534, group=65534, capture_output=True, timeout=30
    )
    assert proc.stdout.strip() == b"refused"
    client = await Client.connect(path)
    assert (await EchoClient(client).Echo(EchoRequest(data=b"me"))).data == b"me"
    await client.close()
    server.close()
    shutil.rmtree(folder)
