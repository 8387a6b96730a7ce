"""End to end over a real unix socket: unary and the three streaming forms, both clients."""

from __future__ import annotations

import asyncio

import pytest

from ttrpc import Code, RpcError
from ttrpc.blocking import Client as BlockingClient
from ttrpc.client import Client
from ttrpc.server import Server
from ttrpctest.echo_pb2 import EchoRequest, EchoResponse
from ttrpctest.echo_ttrpc import EchoBlockingClient, EchoClient


async def test_unary(client: Client) -> None:
    reply = await EchoClient(client).Echo(EchoRequest(data=b"hi"), metadata={"K": "v", "multi": ["a", "b"]})
    assert reply.data == b"hi"
    assert list(reply.metadata) == ["k=v", "multi=a", "multi=b"]
    assert reply.remaining_ms == -1


async def test_unary_raw(client: Client) -> None:
    payload = await client.unary_raw("moorage.test.v1.Echo", "Echo", EchoRequest(data=b"x").SerializeToString())
    assert EchoResponse.FromString(payload).data == b"x"


async def test_empty_response_is_empty_payload(client: Client) -> None:
    assert await client.unary_raw("moorage.test.v1.Echo", "Sink", b"") == b""


async def test_server_stream(client: Client) -> None:
    got = [r.data async for r in EchoClient(client).Count(EchoRequest(data=b"d", count=5))]
    assert got == [b"d"] * 5


async def test_server_stream_error(client: Client) -> None:
    with pytest.raises(RpcError) as info:
        async for _ in EchoClient(client).Count(EchoRequest(count=3, fail_code=Code.NOT_FOUND, fail_message="nope")):
            pass
    assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "nope")


async def test_client_stream(client: Client) -> None:
    stream = await EchoClient(client).Collect(metadata={"a": "1"})
    for part in (b"ab", b"cd", b""):
        await stream.send(EchoRequest(data=part))
    await stream.close_send()
    reply = await stream.recv()
    assert reply is not None
    assert (reply.data, list(reply.metadata)) == (b"abcd", ["a=1"])
    assert await stream.recv() is None


async def test_bidi(client: Client) -> None:
    stream = await EchoClient(client).Chat()
    for i in range(3):
        await stream.send(EchoRequest(data=bytes([i])))
        reply = await stream.recv()
        assert reply is not None and reply.data == bytes([i])
    await stream.close_send()
    assert await stream.recv() is None


async def test_many_concurrent_calls(client: Client) -> None:
    stub = EchoClient(client)
    replies = await asyncio.gather(*(stub.Echo(EchoRequest(data=str(i).encode())) for i in range(500)))
    assert [r.data for r in replies] == [str(i).encode() for i in range(500)]


async def test_blocking_client(server: Server, sock_path: str) -> None:
    def work() -> tuple[bytes, list[bytes], bytes]:
        with BlockingClient(sock_path) as c:
            stub = EchoBlockingClient(c)
            one = stub.Echo(EchoRequest(data=b"b"), metadata={"x": "y"}).data
            many = [r.data for r in stub.Count(EchoRequest(data=b"c", count=3))]
            stream = stub.Collect()
            stream.send(EchoRequest(data=b"1"))
            stream.send(EchoRequest(data=b"2"))
            stream.close_send()
            reply = stream.recv()
            assert reply is not None
            return one, many, reply.data

    assert await asyncio.to_thread(work) == (b"b", [b"c"] * 3, b"12")


async def test_raw_stream_tells_response_from_data(client: Client) -> None:
    collect = await client.open_stream("moorage.test.v1.Echo", "Collect", None, 0x02)
    await collect.send(EchoRequest(data=b"a").SerializeToString())
    await collect.close_send()
    assert EchoResponse.FromString(await collect.recv() or b"").data == b"a"
    assert collect.last_was_response
    assert await collect.recv() is None
    chat = await client.open_stream("moorage.test.v1.Echo", "Chat", None, 0x02)
    await chat.send(EchoRequest(data=b"b").SerializeToString())
    assert EchoResponse.FromString(await chat.recv() or b"").data == b"b"
    assert not chat.last_was_response
    await chat.close_send()
    assert await chat.recv() is None
