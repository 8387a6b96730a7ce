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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moorage import errdefs
from moorage.namespaces import NAMESPACE_KEY, validate_namespace
from ttrpc.client import Client, ClientStream
from ttrpc.codes import Code
from ttrpc.errors import RpcError
from ttrpc.frame import FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN
from ttrpc.server import Context, RawCall

log = logging.getLogger("moorage.proxy.router")


class Backend:
    """One replica: a socket path, a lazily (re)connected client, its outstanding calls."""

    def __init__(self, process: str, path: str) -> None:
        self.process = process
        self.path = path
        self.outstanding = 0
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
    """The replicas of one process, shared by every service that process serves."""

    def __init__(self, process: str, paths: Sequence[str]) -> None:
        self.process = process
        self.backends = [Backend(process, p) for p in paths]

    async def acquire(self, service: str) -> tuple[Backend, Client]:
        """The least busy reachable replica, its outstanding count already raised;
        the caller lowers it when the call ends."""
        backends = self.backends
        if len(backends) == 1:
            order = backends
        else:
            order = sorted(backends, key=lambda b: (b.outstanding, not b.connected))
        last: BaseException | None = None
        for backend in order:
            backend.outstanding += 1
            try:
                return backend, await backend.get()
            except OSError as exc:
                backend.outstanding -= 1
                last = exc
        reason = getattr(last, "strerror", None) or str(last)
        raise errdefs.Unavailable(f"service {service} is unavailable: {self.process} is not running ({reason})")


@dataclass(frozen=True)
class Route:
    service: str
    pool: Pool


NamespaceSeen = Callable[[str], Awaitable[None]]


class Router:
    """The proxy's fallback handler: route by service name, forward bytes."""

    def __init__(self, routes: Mapping[str, Pool], on_namespace: NamespaceSeen | None = None) -> None:
        self.routes = dict(routes)
        self.on_namespace = on_namespace
        self.known_namespaces: set[str] = set()

    def pools(self) -> list[Pool]:
        seen: dict[int, Pool] = {}
        for pool in self.routes.values():
            seen.setdefault(id(pool), pool)
        return list(seen.values())

    async def close(self) -> None:
        for pool in self.pools():
            for backend in pool.backends:
                await backend.close()

    async def _check_namespace(self, metadata: Any) -> None:
        values = metadata.get(NAMESPACE_KEY) if metadata else None
        if not values:
            return
        for ns in values:
            if not ns or ns in self.known_namespaces:
                continue  # empty: absent, as containerd reads it ("namespace is required")
            validate_namespace(ns)
            if self.on_namespace is not None:
                await self.on_namespace(ns)
            self.known_namespaces.add(ns)

    async def __call__(self, ctx: Context, call: RawCall) -> None:
        pool = self.routes.get(call.service)
        if pool is None:
            await call.fail(Code.UNIMPLEMENTED, f"service {call.service}")
            return
        try:
            await self._check_namespace(ctx.metadata)
            backend, client = await pool.acquire(call.service)
        except errdefs.Error as exc:
            await call.fail(int(exc.code), exc.message)
            return
        remaining = ctx.time_remaining()
        timeout_nano = 0 if remaining is None else max(1, int(remaining * 1e9))
        try:
            if call.flags == 0:
                payload = await client.unary_raw(call.service, call.method, call.payload, timeout_nano, ctx.metadata)
                await call.respond(payload)
            else:
                await self._stream(call, client, timeout_nano, ctx.metadata)
        except RpcError as exc:
            if call.finished:
                return
            if client.closed and exc.code == Code.UNAVAILABLE:
                await call.fail(
                    Code.UNAVAILABLE,
                    f"service {call.service} is unavailable: {backend.process} went away during the call",
                )
            else:
                await call.fail(exc.code, exc.message)
        finally:
            backend.outstanding -= 1

    async def _stream(self, call: RawCall, client: Client, timeout_nano: int, metadata: Any) -> None:
        stream = await client.open_stream(call.service, call.method, call.payload, call.flags, timeout_nano, metadata)
        by_response = _watch_response(stream)
        pump: asyncio.Task[None] | None = None
        if call.flags & FLAG_REMOTE_OPEN and not call.flags & FLAG_REMOTE_CLOSED:
            pump = asyncio.get_running_loop().create_task(_upstream(call, stream))
        try:
            while True:
                data = await stream.recv()
                if by_response[0]:
                    # the backend answered with a Response (client-streaming method)
                    await call.respond(data or b"")
                    return
                if data is None:
                    await call.close()
                    return
                await call.send(data)
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            await stream.aclose()


async def _upstream(call: RawCall, stream: ClientStream[bytes, bytes]) -> None:
    with contextlib.suppress(RpcError):
        while (data := await call.recv()) is not None:
            await stream.send(data)
        await stream.close_send()


def _watch_response(stream: ClientStream[bytes, bytes]) -> list[bool]:
    """Note whether ``stream`` ended with a Response frame (client-streaming) rather than
    data frames: the proxy must answer its own caller the same way."""
    flag = [False]
    original = stream._on_response

    def on_response(response: Any) -> None:
        if not response.code:
            flag[0] = True
        original(response)

    stream._on_response = on_response  # type: ignore[method-assign]
    return flag


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
