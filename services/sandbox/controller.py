"""Controllers by sandboxer name, and the event sink that feeds the suite's publisher."""

from __future__ import annotations

import logging
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
    """contract.EventSink onto moorage.events through one :class:`QueuedPublisher`: the
    call's reply does not wait for the round trip through the proxy, order is kept, and
    ``close`` flushes what is queued, bounded (events are best effort, as in containerd)."""

    def __init__(self, publisher: EventPublisher, limit: int = 4096) -> None:
        from moorage.events import QueuedPublisher

        self.queue = QueuedPublisher(publisher, limit, log)

    async def publish(self, event: SandboxEvent) -> None:
        from .wire import event_to_pb

        try:
            ns = namespace()
        except errdefs.Error as exc:
            log.warning("publish %s for %s: %s", event.topic, event.sandbox_id, exc)
            return
        await self.queue.publish(event.topic, event_to_pb(event), ns)

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop."""
        await self.queue.close(timeout)
