"""Tiny test processes for the skeleton's tests: raw-handler services, no protos.

``echo`` serves moorage.test.v1.Echo, ``other`` serves moorage.test.v1.Other (the same
methods): Echo (unary: payload back), Namespace (unary: the call's namespace), Sleep
(unary: sleeps float(payload) seconds), Stream (server stream: int(payload) frames),
Bidi (each frame back), Concat (client stream: one Response with all frames joined),
Hold (bidi: echoes each frame and
counts itself open until its input ends), Holding (unary: how many Hold calls are open),
Who (unary: "<program> <pid>"), Publish (unary: publishes /echo/published through the
proxy with the process's events publisher, a NamespaceUpdate named by the payload).
A namespace whose name starts with ``busy`` is reported as holding "thing".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from moorage.namespaces import namespace
from moorage.registry import BuildContext, Process, RawService
from ttrpc.server import Context, RawCall


async def _echo(ctx: Context, call: RawCall) -> None:
    await call.respond(call.payload)


async def _namespace(ctx: Context, call: RawCall) -> None:
    await call.respond(namespace().encode())


async def _sleep(ctx: Context, call: RawCall) -> None:
    await asyncio.sleep(float(call.payload.decode() or "0"))
    await call.respond(call.payload)


async def _stream(ctx: Context, call: RawCall) -> None:
    for i in range(int(call.payload.decode() or "0")):
        await call.send(str(i).encode())
    await call.close()


async def _bidi(ctx: Context, call: RawCall) -> None:
    while (data := await call.recv()) is not None:
        await call.send(data)
    await call.close()


async def _concat(ctx: Context, call: RawCall) -> None:
    parts = []
    while (data := await call.recv()) is not None:
        parts.append(data)
    await call.respond(b"".join(parts))


_holding = 0


async def _hold(ctx: Context, call: RawCall) -> None:
    global _holding
    _holding += 1
    try:
        while (data := await call.recv()) is not None:
            await call.send(data)
        await call.close()
    finally:
        _holding -= 1


async def _holding_count(ctx: Context, call: RawCall) -> None:
    await call.respond(str(_holding).encode())


METHODS = {
    "Hold": _hold,
    "Holding": _holding_count,
    "Echo": _echo,
    "Namespace": _namespace,
    "Sleep": _sleep,
    "Stream": _stream,
    "Bidi": _bidi,
    "Concat": _concat,
}


def _record(name: str, service: str) -> Process:
    async def build(ctx: BuildContext) -> list[object]:
        async def usage(ns: str) -> Sequence[str]:
            return ["thing"] if ns.startswith("busy") else []

        program = name if ctx.replica is None else f"{name}-{ctx.replica}"

        async def who(c: Context, call: RawCall) -> None:
            await call.respond(f"{program} {os.getpid()}".encode())

        async def publish(c: Context, call: RawCall) -> None:
            from moorage.api.containerd.events import namespace_pb2

            await ctx.publisher.publish("/echo/published", namespace_pb2.NamespaceUpdate(name=call.payload.decode()))
            await call.respond(b"")

        ctx.namespace_usage(usage)
        return [RawService(service, {**METHODS, "Who": who, "Publish": publish})]

    return Process(name=name, services=(service,), build=build, replica_safe=True, description=f"test {name}")


PROCESS = _record("echo", "moorage.test.v1.Echo")
OTHER = _record("other", "moorage.test.v1.Other")
