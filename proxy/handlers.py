"""Adapters from typed async functions to raw ttrpc handlers, for the proxy's own services.

``unary(Req, fn)``: decode the payload as ``Req``, ``await fn(req, ctx)``, encode the result.
Errors are raised as errdefs kinds; the server turns them into a status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from moorage import errdefs
from moorage.namespaces import current_namespace, from_metadata
from ttrpc.server import Context, RawCall

Req = TypeVar("Req")
RawHandler = Callable[[Context, RawCall], Awaitable[None]]


def decode(cls: type[Req], payload: bytes) -> Req:
    try:
        return cls.FromString(payload)  # type: ignore[attr-defined,no-any-return]
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise errdefs.InvalidArgument(f"cannot decode {cls.__name__}: {exc}") from exc


def unary(cls: type[Req], fn: Callable[[Req, Context], Awaitable[Any]]) -> RawHandler:
    async def handler(ctx: Context, call: RawCall) -> None:
        current_namespace.set(from_metadata(ctx.metadata))
        result = await fn(decode(cls, call.payload), ctx)
        await call.respond(result.SerializeToString())

    return handler
