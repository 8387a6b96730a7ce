"""Sandbox events reach subscribers through the proxy, in order, with the caller's namespace."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moorage.namespaces import NAMESPACE_KEY, current_namespace
from moorage.services.sandbox.contract import CreateOptions, Runtime, Sandbox

from .test_conformance import HOSTNET


async def test_sandbox_events_through_proxy(tmp_path: Path) -> None:
    suite = pytest.importorskip("suite")
    from google.protobuf import any_pb2

    from moorage.api.containerd.events import sandbox_pb2 as events_pb
    from moorage.api.containerd.services.events.v1 import events_pb2
    from moorage.api.containerd.services.events.v1.events_ttrpc import EventsClient
    from moorage.rpc import connect
    from moorage.services.sandbox.client import ControllerClient, StoreClient

    config = {"sandbox": {"cni_conf_dir": str(tmp_path / "net.d"), "reconcile": False}}
    token = current_namespace.set("evtest")
    try:
        async with suite.running(["sandbox"], config=config) as s:
            client = await connect(s.address)
            try:
                events = EventsClient(client)
                stream = events.Subscribe(events_pb2.SubscribeRequest(filters=['topic~="^/(sandboxes|marker)/"']))
                seen: list[tuple[str, str, str]] = []
                marker = asyncio.Event()
                done = asyncio.Event()

                async def collect() -> None:
                    async for env in stream:
                        if env.topic == "/marker/ready":
                            marker.set()
                            continue
                        msg = {"/sandboxes/create": events_pb.SandboxCreate, "/sandboxes/start": events_pb.SandboxStart}.get(
                            env.topic, events_pb.SandboxExit
                        )()
                        msg.ParseFromString(env.event.value)
                        seen.append((env.namespace, env.topic, msg.sandbox_id))
                        if env.topic == "/sandboxes/exit":
                            done.set()

                task = asyncio.ensure_future(collect())
                md = {NAMESPACE_KEY: "evtest"}
                while not marker.is_set():  # the subscription is live once our own event comes back
                    await events.Publish(events_pb2.PublishRequest(topic="/marker/ready", event=any_pb2.Any(type_url="x")), metadata=md)
                    try:
                        await asyncio.wait_for(marker.wait(), 0.5)
                    except TimeoutError:
                        pass
                store, ctl = StoreClient(client), ControllerClient(client, "podsandbox")
                await store.create(Sandbox("ev", Runtime("io.containerd.runc.v2"), sandboxer="podsandbox"))
                await ctl.create("ev", HOSTNET)
                await ctl.start("ev")
                await ctl.stop("ev")
                await asyncio.wait_for(done.wait(), 10)
                task.cancel()
                assert seen == [
                    ("evtest", "/sandboxes/create", "ev"),
                    ("evtest", "/sandboxes/start", "ev"),
                    ("evtest", "/sandboxes/exit", "ev"),
                ]
                await ctl.shutdown("ev")
                await store.delete("ev")
            finally:
                await client.close()
    finally:
        current_namespace.reset(token)


async def test_publisher_sink_queues_in_order_and_flushes_on_close() -> None:
    """Replies do not wait on the events round trip: publish queues (with the caller's
    namespace), one sender keeps the order, close sends what is left."""
    from google.protobuf.message import Message

    from moorage.services.sandbox.contract import SandboxEvent
    from moorage.services.sandbox.controller import PublisherSink

    gate = asyncio.Event()
    sent: list[tuple[str | None, str, str]] = []

    class Slow:
        async def publish(self, topic: str, event: Message, namespace: str | None = None) -> None:
            await gate.wait()
            if topic == "/sandboxes/start":
                raise OSError("events service unreachable")  # best effort: the rest still goes
            sent.append((namespace, topic, getattr(event, "sandbox_id")))

    sink = PublisherSink(Slow())
    for ns, topic in (("a", "/sandboxes/create"), ("a", "/sandboxes/start"), ("b", "/sandboxes/exit")):
        token = current_namespace.set(ns)
        try:
            await sink.publish(SandboxEvent(topic, "s1"))  # returns although nothing was sent yet
        finally:
            current_namespace.reset(token)
    assert sent == []
    gate.set()
    await sink.close()
    assert sent == [("a", "/sandboxes/create", "s1"), ("b", "/sandboxes/exit", "s1")]
