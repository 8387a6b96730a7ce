"""A record for a backend this suite does not run: the Go peer's Echo, reached through
``[goecho] sockets = [...]`` (the proxy routes to sockets that config names)."""

from __future__ import annotations

from moorage.registry import BuildContext, Process


async def _build(ctx: BuildContext) -> list[object]:
    raise RuntimeError("goecho is served by the Go peer, not by moorage serve")


PROCESS = Process(name="goecho", services=("moorage.test.v1.Echo",), build=_build)
