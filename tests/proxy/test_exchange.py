"""The proxy's events exchange on its own: how a stopping proxy ends subscriptions."""

from __future__ import annotations

import asyncio

from moorage.api.containerd.types import event_pb2
from moorage.proxy.events import QUEUE_LIMIT, Exchange


def _envelope(topic: str) -> event_pb2.Envelope:
    return event_pb2.Envelope(namespace="default", topic=topic)


def _drained(queue: asyncio.Queue[event_pb2.Envelope | None]) -> list[str | None]:
    out: list[str | None] = []
    while not queue.empty():
        env = queue.get_nowait()
        out.append(None if env is None else env.topic)
    return out


async def test_closing_keeping_what_is_queued_ends_each_subscription_after_it() -> None:
    ex = Exchange()
    sub = ex.subscribe([])
    ex.forward(_envelope("/a"))
    ex.close(keep_queued=True)
    ex.forward(_envelope("/b"))  # after the close: nobody gets it
    assert _drained(sub.queue) == ["/a", None]


async def test_closing_drops_what_is_queued() -> None:
    ex = Exchange()
    sub = ex.subscribe([])
    ex.forward(_envelope("/a"))
    ex.close()
    assert _drained(sub.queue) == [None]


async def test_a_full_queue_is_ended_all_the_same() -> None:
    ex = Exchange()
    sub = ex.subscribe([])
    for i in range(QUEUE_LIMIT):
        sub.queue.put_nowait(_envelope(f"/{i}"))
    ex.close(keep_queued=True)
    assert _drained(sub.queue) == [None]


async def test_a_subscription_made_after_the_close_ends_at_once() -> None:
    """A Subscribe that comes while the proxy stops (before its doors refuse calls) would
    otherwise hold the drain for all its grace."""
    ex = Exchange()
    ex.close(keep_queued=True)
    sub = ex.subscribe(['topic=="/a"'])
    ex.forward(_envelope("/a"))
    assert _drained(sub.queue) == [None]
