"""Events versus plugin synchronization: a new plugin's Synchronize must see every
container an event created before it, and every event after it must see the plugin.

:class:`Gate` lets any number of events run together (``async with gate.event()``) and
gives a synchronization the place to itself (``async with gate.sync()``): it waits for
running events to finish and holds new ones back until the plugin is synchronized and
inserted (as containerd/nri blocks events during a plugin's sync). Syncs run one at a time.
Plugin-initiated UpdateContainers never goes through the gate, so a plugin calling it from
a handler cannot deadlock with a sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Gate:
    def __init__(self) -> None:
        self._active = 0
        self._syncing = False
        self._changed = asyncio.Condition()
        self._sync_lock = asyncio.Lock()

    @property
    def syncing(self) -> bool:
        """A sync holds the gate, or waits for running events to finish."""
        return self._syncing

    @contextlib.asynccontextmanager
    async def event(self) -> AsyncIterator[None]:
        if self._syncing:
            async with self._changed:
                await self._changed.wait_for(lambda: not self._syncing)
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            if self._syncing and self._active == 0:
                async with self._changed:
                    self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def sync(self) -> AsyncIterator[None]:
        async with self._sync_lock:
            self._syncing = True
            try:
                async with self._changed:
                    await self._changed.wait_for(lambda: self._active == 0)
                yield
            finally:
                self._syncing = False
                async with self._changed:
                    self._changed.notify_all()


class _HasGate(Protocol):
    gate: Gate


S = TypeVar("S", bound=_HasGate)


def gated(fn: Callable[Concatenate[S, P], Awaitable[T]]) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Run a hook method of an object with a ``gate`` as an event."""

    @functools.wraps(fn)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self.gate.event():
            return await fn(self, *args, **kwargs)

    return wrapper


__all__ = ["Gate", "gated"]
