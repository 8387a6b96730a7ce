"""moorage.events.QueuedPublisher: publish returns before the event is sent, events go out
in order with the namespace of the call that queued them, failures and overflow only log,
close flushes."""

from __future__ import annotations

import asyncio

import pytest

from moorage import errdefs
from moorage.api.containerd.events import container_pb2 as cev
from moorage.events import QueuedPublisher
from moorage.namespaces import current_namespace


class SlowPublisher:
    """Sends only when released; fails the topics it is told to."""

    def __init__(self, fail: str = "") -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def publish(self, topic: str, event: object, namespace: str | None = None) -> None:
        await self.release.wait()
        if topic == self.fail:
            raise errdefs.Unavailable("events service down")
        assert isinstance(event, cev.ContainerCreate)
        self.sent.append((namespace or "", topic, event.id))


async def test_publish_returns_at_once_and_order_is_kept() -> None:
    slow = SlowPublisher(fail="/containers/update")
    q = QueuedPublisher(slow)
    token = current_namespace.set("ns1")
    try:
        await asyncio.wait_for(q.publish("/containers/create", cev.ContainerCreate(id="a")), 1)
        await q.publish("/containers/update", cev.ContainerCreate(id="b"))
    finally:
        current_namespace.reset(token)
    await q.publish("/containers/create", cev.ContainerCreate(id="c"), namespace="ns2")
    assert slow.sent == []
    slow.release.set()
    await q.close()
    assert slow.sent == [("ns1", "/containers/create", "a"), ("ns2", "/containers/create", "c")]


async def test_bad_topic_or_namespace_fail_the_caller() -> None:
    q = QueuedPublisher(SlowPublisher())
    with pytest.raises(errdefs.InvalidArgument):
        await q.publish("no-slash", cev.ContainerCreate(id="a"), namespace="ns")
    with pytest.raises(errdefs.FailedPrecondition):
        await q.publish("/containers/create", cev.ContainerCreate(id="a"))  # no namespace


async def test_overflow_drops_and_close_is_bounded() -> None:
    slow = SlowPublisher()
    q = QueuedPublisher(slow, limit=2)
    for i in range(4):
        await q.publish("/containers/create", cev.ContainerCreate(id=str(i)), namespace="ns")
    await q.close(timeout=0.05)  # never released: gives up, drops the rest
    assert slow.sent == []
    slow.release.set()
    await q.publish("/containers/create", cev.ContainerCreate(id="x"), namespace="ns")
    await q.close()
    assert slow.sent == [("ns", "/containers/create", "x")]
