"""Controllers by sandboxer name, and the event sink that feeds the suite's publisher."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

from moorage import errdefs
from moorage.namespaces import namespace

from .contract import Controller, SandboxEvent

if TYPE_CHECKING:
    from moorage.events import EventPublisher

log = logging.getLogger(__name__)


class Sandboxers:
    """contract.Controllers over a fixed mapping (built once from config)."""

    def __init__(self, controllers: Mapping[str, Controller]) -> None:
        self.controllers = dict(controllers)

    def get(self, sandboxer: str) -> Controller:
        if not sandboxer:
            raise errdefs.InvalidArgument("sandboxer name must not be empty")
        try:
            return self.controllers[sandboxer]
        except KeyError:
            raise errdefs.NotFound(f"sandboxer {sandboxer!r} not found (have: {', '.join(sorted(self.controllers))})") from None


class PublisherSink:
    """contract.EventSink onto moorage.events, sent in order by one background task.

    ``publish`` records the running call's namespace and queues the event; the call's reply
    does not wait for the round trip through the proxy to the events service (events are
    best effort and not durable, as in containerd). Order is kept: one sender, FIFO.
    ``close`` flushes what is queued, bounded. Past ``limit`` queued events new ones are
    dropped and logged (a stuck events service must not grow memory without bound).
    """

    def __init__(self, publisher: EventPublisher, limit: int = 4096) -> None:
        self.publisher = publisher
        self.limit = limit
        self._queue: deque[tuple[str, SandboxEvent]] = deque()
        self._sender: asyncio.Task[None] | None = None

    async def publish(self, event: SandboxEvent) -> None:
        try:
            ns = namespace()
        except errdefs.Error as exc:
            log.warning("publish %s for %s: %s", event.topic, event.sandbox_id, exc)
            return
        if len(self._queue) >= self.limit:
            log.warning("publish %s for %s: %d events queued, dropped", event.topic, event.sandbox_id, len(self._queue))
            return
        self._queue.append((ns, event))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        from .wire import event_to_pb

        while self._queue:
            ns, event = self._queue.popleft()
            try:
                await self.publisher.publish(event.topic, event_to_pb(event), namespace=ns)
            except Exception as exc:  # noqa: BLE001 - events are best effort
                log.warning("publish %s for %s: %s", event.topic, event.sandbox_id, exc)

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop."""
        sender = self._sender
        if sender is None or sender.done():
            return
        done, _ = await asyncio.wait({sender}, timeout=timeout)
        if not done:
            sender.cancel()
            log.warning("dropped %d queued sandbox events at close", len(self._queue))
            self._queue.clear()
