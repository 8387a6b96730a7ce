"""Routing: every call the proxy does not serve itself goes, bytes unchanged, to a backend.

A :class:`Route` maps one ttrpc service name to a :class:`Pool` of replicas (one backend
socket each). The router picks the connected replica with the fewest outstanding calls
(ties: the first), connecting lazily; a replica whose socket refuses is skipped. With no
replica reachable the call fails at once with UNAVAILABLE naming the service. The chosen
backend gets the Request's payload, flags, metadata and the time left of its deadline;
whatever it answers (Response, data frames, close, status) goes back unchanged.

A backend that dies fails its in-flight calls with UNAVAILABLE; the next call reconnects,
so a restarted backend is used again without restarting the proxy or its clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ttrpc.client import Client
from ttrpc.errors import RpcError


class Backend:
    """One replica: a socket path and a lazily (re)connected client."""

    def __init__(self, process: str, path: str) -> None:
        self.process = process
        self.path = path
        self.client: Client | None = None
        self._connecting: asyncio.Task[Client] | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed

    async def get(self) -> Client:
        client = self.client
        if client is not None and not client.closed:
            return client
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._connect())
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._connecting = None

    async def _connect(self) -> Client:
        client = await Client.connect(self.path, error_factory=RpcError)
        self.client = client
        return client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


class Pool:
    """The replicas of one process."""

    def __init__(self, process: str, paths: Sequence[str]) -> None:
        self.process = process
        self.backends = [Backend(process, p) for p in paths]


async def ping(backend: Backend, timeout: float = 1.0) -> tuple[bool, float | None, str]:
    """(healthy, round trip µs, error) of one replica's internal Health call."""
    from moorage.runner import INTERNAL_SERVICE

    try:
        client = await asyncio.wait_for(backend.get(), timeout)
        start = time.perf_counter()
        await client.unary_raw(INTERNAL_SERVICE, "Health", b"", int(timeout * 1e9))
        return True, (time.perf_counter() - start) * 1e6, ""
    except (OSError, RpcError, TimeoutError) as exc:
        return False, None, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
