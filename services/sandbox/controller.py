"""Controllers by sandboxer name, and the event sink that feeds the suite's publisher."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from moorage import errdefs

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
    """contract.EventSink onto moorage.events (namespace: the running call's)."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher

    async def publish(self, event: SandboxEvent) -> None:
        from .wire import event_to_pb

        try:
            await self.publisher.publish(event.topic, event_to_pb(event))
        except Exception as exc:  # noqa: BLE001 - events are best effort
            log.warning("publish %s for %s: %s", event.topic, event.sandbox_id, exc)
