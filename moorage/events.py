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


class NullPublisher:
    """Drops every event (tests, tools); still validates like the real one."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Message]] = []

    async def publish(self, topic: str, event: Message, namespace: str | None = None) -> None:
        ns = validate_namespace(namespace or current())
        self.published.append((ns, validate_topic(topic), event))
