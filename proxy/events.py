"""The events exchange: containerd.services.events.v1 Events (Publish, Forward, Subscribe)
and the ttrpc containerd.services.events.ttrpc.v1 Events/Forward that shims call.

Envelopes are checked as containerd checks them (valid namespace, ``/``-rooted topic) and
fanned out to every subscriber whose filters match (containerd's syntax, fields
``namespace``, ``topic`` and ``event.<field>``). Each subscriber has a bounded queue: one
that falls :data:`QUEUE_LIMIT` envelopes behind is ended with RESOURCE_EXHAUSTED rather than
holding the proxy's memory. Nothing is stored: a subscriber sees events from when it joins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from google.protobuf import any_pb2, empty_pb2, json_format, symbol_database, timestamp_pb2

from moorage.api.containerd.services.events.v1 import events_pb2 as pb
from moorage.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_pb
from moorage.api.containerd.types import event_pb2
from moorage.events import type_url, validate_topic
from moorage.namespaces import namespace, validate_namespace
from moorage.registry import RawService
from ttrpc.codes import Code
from ttrpc.server import Context, RawCall

from .handlers import decode, unary

SERVICE = "containerd.services.events.v1.Events"
TTRPC_SERVICE = "containerd.services.events.ttrpc.v1.Events"
QUEUE_LIMIT = 4096



class _Fields:
    """Filter adaptor over one envelope; decodes the event only if a filter asks."""

    def __init__(self, env: event_pb2.Envelope) -> None:
        self.env = env
        self._event: dict[str, Any] | None = None

    def __call__(self, fieldpath: Sequence[str]) -> tuple[str, bool]:
        if not fieldpath:
            return "", False
        head = fieldpath[0]
        if head == "namespace":
            return self.env.namespace, len(self.env.namespace) > 0
        if head == "topic":
            return self.env.topic, len(self.env.topic) > 0
        if head == "event":
            value: Any = self._decoded()
            for part in fieldpath[1:]:
                if not isinstance(value, dict) or part not in value:
                    return "", False
                value = value[part]
            if isinstance(value, (dict, list)):
                return "", False
            if isinstance(value, bool):
                return ("true" if value else "false"), True
            return str(value), True
        return "", False

    def _decoded(self) -> dict[str, Any]:
        if self._event is None:
            self._event = {}
            name = self.env.event.type_url.rsplit("/", 1)[-1]
            try:
                cls = symbol_database.Default().GetSymbol(name)
                msg = cls.FromString(self.env.event.value)
                self._event = json_format.MessageToDict(msg, preserving_proto_field_name=True)
            except Exception:  # noqa: BLE001 - unknown or undecodable: no fields
                pass
        return self._event


class Subscriber:
    def __init__(self, filters: Any) -> None:
        self.filter = filters
        self.queue: asyncio.Queue[event_pb2.Envelope | None] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False


class Exchange:
    """Fan-out of envelopes to subscribers; also the proxy's own publisher."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.closed = False
        _load_event_types()

    def forward(self, env: event_pb2.Envelope) -> None:
        validate_namespace(env.namespace)
        validate_topic(env.topic)
        if not self.subscribers:
            return
        fields = _Fields(env)
        for sub in list(self.subscribers):
            if sub.filter is not None and not sub.filter.match(fields):
                continue
            try:
                sub.queue.put_nowait(env)
            except asyncio.QueueFull:
                sub.overflowed = True
                self.subscribers.discard(sub)
                _end(sub.queue)

    def publish_envelope(self, ns: str, topic: str, event: any_pb2.Any) -> None:
        ts = timestamp_pb2.Timestamp()
        ts.GetCurrentTime()
        self.forward(event_pb2.Envelope(timestamp=ts, namespace=ns, topic=topic, event=event))

    async def publish(self, ns: str, topic: str, event: Any) -> None:
        """Publish one of the proxy's own events (a protobuf message)."""
        self.publish_envelope(ns, topic, any_pb2.Any(type_url=type_url(event), value=event.SerializeToString()))

    def subscribe(self, filters: Sequence[str]) -> Subscriber:
        parsed = None
        if filters:
            from moorage import filters as f

            parsed = f.parse(list(filters))
        sub = Subscriber(parsed)
        if self.closed:
            _end(sub.queue)
        else:
            self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close(self, keep_queued: bool = False) -> None:
        """End every subscription, and any made from now on; with ``keep_queued``, after
        what each has queued (a stopping proxy: a Subscribe stream never ends on its own, so
        it would hold the drain for all its grace)."""
        self.closed = True
        for sub in list(self.subscribers):
            if keep_queued and not sub.queue.full():
                sub.queue.put_nowait(None)
            else:
                _end(sub.queue)
        self.subscribers.clear()


def _end(q: asyncio.Queue[event_pb2.Envelope | None]) -> None:
    """Drop what ``q`` holds and leave only the end marker."""
    while not q.empty():
        q.get_nowait()
    q.put_nowait(None)


def _load_event_types() -> None:
    import importlib

    for mod in ("container", "content", "image", "namespace", "sandbox", "snapshot", "task"):
        try:
            importlib.import_module(f"moorage.api.containerd.events.{mod}_pb2")
        except ImportError:
            pass


class EventsService:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def raw(self) -> list[RawService]:
        return [
            RawService(
                SERVICE,
                {
                    "Publish": unary(pb.PublishRequest, self.publish),
                    "Forward": unary(pb.ForwardRequest, self.forward),
                    "Subscribe": self.subscribe,
                },
            ),
            RawService(TTRPC_SERVICE, {"Forward": unary(ttrpc_pb.ForwardRequest, self.forward)}),
        ]

    async def publish(self, req: pb.PublishRequest, ctx: Context) -> empty_pb2.Empty:
        ns = validate_namespace(namespace())
        validate_topic(req.topic)
        self.exchange.publish_envelope(ns, req.topic, req.event)
        return empty_pb2.Empty()

    async def forward(self, req: pb.ForwardRequest | ttrpc_pb.ForwardRequest, ctx: Context) -> empty_pb2.Empty:
        env = event_pb2.Envelope()
        env.ParseFromString(req.envelope.SerializeToString())
        if not env.HasField("timestamp"):
            env.timestamp.GetCurrentTime()
        self.exchange.forward(env)
        return empty_pb2.Empty()

    async def subscribe(self, ctx: Context, call: RawCall) -> None:
        req = decode(pb.SubscribeRequest, call.payload)
        sub = self.exchange.subscribe(req.filters)
        try:
            while True:
                env = await sub.queue.get()
                if env is None:
                    if sub.overflowed:
                        await call.fail(Code.RESOURCE_EXHAUSTED, "events: subscriber fell too far behind")
                    else:
                        await call.close()
                    return
                await call.send(env.SerializeToString())
        finally:
            self.exchange.unsubscribe(sub)

