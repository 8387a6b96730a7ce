"""The Python implementation of moorage.test.v1.Echo (mirrors tests/interop/gopeer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ttrpc import RpcError
from ttrpc.server import Context, ServerStream

from .echo_pb2 import EchoRequest, EchoResponse
from .echo_ttrpc import EchoServicer


def _metadata(ctx: Context) -> list[str]:
    return sorted(f"{k}={v}" for k, values in ctx.metadata.items() for v in values)


def _remaining_ms(ctx: Context) -> int:
    left = ctx.time_remaining()
    return -1 if left is None else int(left * 1000)


async def _behave(request: EchoRequest) -> None:
    if request.sleep_ms:
        await asyncio.sleep(request.sleep_ms / 1000)
    if request.fail_code:
        raise RpcError(request.fail_code, request.fail_message)


class Echo(EchoServicer):
    def __init__(self) -> None:
        self.cancelled = 0
        self.started = asyncio.Event()

    async def Echo(self, request: EchoRequest, ctx: Context) -> EchoResponse:
        self.started.set()
        try:
            await _behave(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return EchoResponse(data=request.data, metadata=_metadata(ctx), remaining_ms=_remaining_ms(ctx))

    async def Sink(self, request: EchoRequest, ctx: Context) -> EchoResponse:
        return EchoResponse()

    async def Count(self, request: EchoRequest, ctx: Context) -> AsyncIterator[EchoResponse]:
        await _behave(request)
        for _ in range(request.count):
            yield EchoResponse(data=request.data)

    async def Collect(self, requests: AsyncIterator[EchoRequest], ctx: Context) -> EchoResponse:
        data = b""
        async for request in requests:
            await _behave(request)
            data += request.data
        return EchoResponse(data=data, metadata=_metadata(ctx))

    async def Chat(self, stream: ServerStream[EchoRequest, EchoResponse], ctx: Context) -> None:
        async for request in stream:
            await _behave(request)
            await stream.send(EchoResponse(data=request.data))
