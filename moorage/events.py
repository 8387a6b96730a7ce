"""Publishing events to the proxy's events.v1 Events service.

A process publishes through the :class:`Publisher` its BuildContext hands it::

    await ctx.publisher.publish("/content/delete", ContentDelete(digest=d))

The namespace is the running call's (:func:`moorage.namespaces.namespace`), or the
``namespace=`` argument. Events are not durable (as in containerd): when the proxy is down
the event is dropped and logged, and the caller's operation is not failed. Topics follow
containerd's rule: ``/`` then ``/``-separated identifiers.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from moorage import errdefs
from moorage.namespaces import NAMESPACE_KEY, namespace as current, validate_namespace

if TYPE_CHECKING:
    import asyncio

    from google.protobuf.message import Message

SERVICE = "containerd.services.events.v1.Events"
_COMPONENT = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is ``/``-rooted identifiers, else raise InvalidArgument."""
    if not topic:
        raise errdefs.InvalidArgument("must not be empty topic")
    if not topic.startswith("/"):
        raise errdefs.InvalidArgument(f"must start with '/': topic {topic!r}")
    for part in topic[1:].split("/"):
        if not _COMPONENT.fullmatch(part):
            raise errdefs.InvalidArgument(f"failed validation on component {part!r}: topic {topic!r}")
    return topic


def type_url(message: Message) -> str:
    """containerd's Any type URL: the bare full name (no ``type.googleapis.com/``)."""
    return message.DESCRIPTOR.full_name


class EventPublisher(Protocol):
    async def publish(self, topic: str, event: Message, namespace: str | None = None) -> None: ...


class Publisher:
    """Sends Events.Publish to the proxy over one lazily (re)connected ttrpc client."""

    def __init__(self, address: Path | str, logger: logging.Logger | None = None, timeout: float = 5.0) -> None:
        from moorage.rpc import Peer

        self.address = str(address)
        self.log = logger or logging.getLogger("moorage.events")
        self.timeout = timeout
        self._peer = Peer(address)

    async def publish(self, topic: str, event: Message, namespace: str | None = None) -> None:
        from google.protobuf import any_pb2

        from moorage.api.containerd.services.events.v1 import events_pb2

        ns = validate_namespace(namespace or current())
        validate_topic(topic)
        req = events_pb2.PublishRequest(
            topic=topic, event=any_pb2.Any(type_url=type_url(event), value=event.SerializeToString())
        )
        try:
            client = await self._peer.client()
            await client.unary_raw(
                SERVICE,
                "Publish",
                req.SerializeToString(),
                timeout_nano=int(self.timeout * 1e9),
                metadata={NAMESPACE_KEY: ns},
            )
        except (OSError, errdefs.Error) as exc:
            self.log.warning("event dropped", extra={"topic": topic, "namespace": ns, "error": str(exc)})

    async def close(self) -> None:
        await self._peer.close()


class QueuedPublisher:
    """An EventPublisher whose ``publish`` returns at once; one background task sends the
    events to ``publisher`` in the order they were queued.

    So a call's reply does not wait for the round trip through the proxy to the events
    service (containerd's in-process exchange does not make a call wait either): it saves
    every call that publishes one round trip. Topic and namespace are checked, and the
    namespace taken, when the event is queued; failures to send are logged by ``publisher``
    (events are best effort, not durable). Past ``limit`` queued events new ones are dropped
    and logged. ``close`` sends what is queued (at most ``timeout`` seconds), then stops.
    """

    def __init__(self, publisher: EventPublisher, limit: int = 4096, logger: logging.Logger | None = None) -> None:
        from collections import deque

        self.publisher = publisher
        self.limit = limit
        self.log = logger or logging.getLogger("moorage.events")
        self._queue: deque[tuple[str, Message, str]] = deque()
        self._sender: asyncio.Task[None] | None = None

    async def publish(self, topic: str, event: Message, namespace: str | None = None) -> None:
        import asyncio

        ns = validate_namespace(namespace or current())
        validate_topic(topic)
        if len(self._queue) >= self.limit:
            self.log.warning("event dropped: queue full", extra={"topic": topic, "namespace": ns})
            return
        self._queue.append((topic, event, ns))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        while self._queue:
            topic, event, ns = self._queue.popleft()
            try:
                await self.publisher.publish(topic, event, namespace=ns)
            except Exception as exc:  # noqa: BLE001 - events are best effort
                self.log.warning("event dropped", extra={"topic": topic, "namespace": ns, "error": str(exc)})

    async def close(self, timeout: float = 5.0) -> None:
        import asyncio

        sender = self._sender
        if sender is None or sender.done():
            return
        done, _ = await asyncio.wait({sender}, timeout=timeout)
        if not done:
            sender.cancel()
            await asyncio.wait({sender})
            self.log.warning("dropped %d queued events at close", len(self._queue))
            self._queue.clear()


class NullPublisher:
    """Drops every event (tests, tools); still validates like the real one."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Message]] = []

    async def publish(self, topic: str, event: Message, namespace: str | None = None) -> None:
        ns = validate_namespace(namespace or current())
        self.published.append((ns, validate_topic(topic), event))
