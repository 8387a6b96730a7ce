"""The proxy's own services: namespaces.v1, events.v1 (+ ttrpc Forward), introspection.v1,
version.v1, and the moor commands that drive them."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys

import pytest
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

from moorage import errdefs
from moorage.api.containerd.events import namespace_pb2 as ns_events
from moorage.api.containerd.services.events.v1 import events_pb2 as ev
from moorage.api.containerd.services.introspection.v1 import introspection_pb2 as intro
from moorage.api.containerd.services.namespaces.v1 import namespace_pb2 as ns
from moorage.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_ev
from moorage.api.containerd.services.version.v1 import version_pb2 as ver
from moorage.api.containerd.types import event_pb2
from suite import Suite
from ttrpc.client import Client

NS = "containerd.services.namespaces.v1.Namespaces"
EV = "containerd.services.events.v1.Events"
TTRPC_EV = "containerd.services.events.ttrpc.v1.Events"
INTRO = "containerd.services.introspection.v1.Introspection"
VERSION = "containerd.services.version.v1.Version"
ECHO = "moorage.test.v1.Echo"


def md(name: str = "default") -> dict[str, str]:
    return {"containerd-namespace-ttrpc": name}




async def names(client: Client) -> dict[str, dict[str, str]]:
    resp = await client.unary(NS, "List", ns.ListNamespacesRequest(), ns.ListNamespacesResponse)
    return {n.name: dict(n.labels) for n in resp.namespaces}


async def test_namespaces_crud_with_labels(client: Client) -> None:
    await client.unary(
        NS, "Create", ns.CreateNamespaceRequest(namespace=ns.Namespace(name="team-a", labels={"o": "1"})),
        ns.CreateNamespaceResponse,
    )
    with pytest.raises(errdefs.AlreadyExists):
        await client.unary(NS, "Create", ns.CreateNamespaceRequest(namespace=ns.Namespace(name="team-a")),
                           ns.CreateNamespaceResponse)
    got = await client.unary(NS, "Get", ns.GetNamespaceRequest(name="team-a"), ns.GetNamespaceResponse)
    assert dict(got.namespace.labels) == {"o": "1"}
    upd = await client.unary(
        NS, "Update",
        ns.UpdateNamespaceRequest(
            namespace=ns.Namespace(name="team-a", labels={"p": "2"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels.p", "labels.o"]),
        ),
        ns.UpdateNamespaceResponse,
    )
    assert dict(upd.namespace.labels) == {"p": "2"}
    assert (await names(client))["team-a"] == {"p": "2"}
    await client.unary(NS, "Delete", ns.DeleteNamespaceRequest(name="team-a"), empty_pb2.Empty)
    assert "team-a" not in await names(client)
    with pytest.raises(errdefs.NotFound):
        await client.unary(NS, "Get", ns.GetNamespaceRequest(name="team-a"), ns.GetNamespaceResponse)


@pytest.mark.parametrize("bad", ["", "a..b", "-x", "x" * 77, "UP/DOWN"])
async def test_namespace_create_refuses_invalid_names(client: Client, bad: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        await client.unary(NS, "Create", ns.CreateNamespaceRequest(namespace=ns.Namespace(name=bad)),
                           ns.CreateNamespaceResponse)


async def test_a_namespace_is_created_by_first_use(client: Client) -> None:
    assert await client.unary_raw(ECHO, "Namespace", b"", metadata=md("implicit")) == b"implicit"
    assert "implicit" in await names(client)


async def test_delete_is_refused_while_a_service_holds_data(client: Client) -> None:
    await client.unary_raw(ECHO, "Echo", b"", metadata=md("busy-ns"))
    with pytest.raises(errdefs.FailedPrecondition, match="must be empty.*echo: thing"):
        await client.unary(NS, "Delete", ns.DeleteNamespaceRequest(name="busy-ns"), empty_pb2.Empty)
    assert "busy-ns" in await names(client)


async def test_delete_is_refused_while_a_service_cannot_be_asked(suite: Suite, client: Client) -> None:
    await client.unary(NS, "Create", ns.CreateNamespaceRequest(namespace=ns.Namespace(name="quiet")),
                       ns.CreateNamespaceResponse)
    suite.stop("echo")
    with pytest.raises(errdefs.Unavailable, match="echo"):
        await client.unary(NS, "Delete", ns.DeleteNamespaceRequest(name="quiet"), empty_pb2.Empty)
    await asyncio.to_thread(suite.start, "echo")
    await client.unary(NS, "Delete", ns.DeleteNamespaceRequest(name="quiet"), empty_pb2.Empty)


_markers = itertools.count()


async def _subscribe(client: Client, *filters: str):  # type: ignore[no-untyped-def]
    stream = await client.open_stream(EV, "Subscribe", ev.SubscribeRequest(filters=list(filters)).SerializeToString(), 0x01)
    return stream


async def _next(stream) -> event_pb2.Envelope:  # type: ignore[no-untyped-def]
    data = await asyncio.wait_for(stream.recv(), 10)
    assert data is not None
    return event_pb2.Envelope.FromString(data)


async def _sync(client: Client, stream, ns_name: str) -> list[event_pb2.Envelope]:  # type: ignore[no-untyped-def]
    """Publish a marker and wait until the subscriber sees it: the subscription is live and
    everything published before it has been read."""
    marker = ns_events.NamespaceUpdate(name=f"marker-{next(_markers)}")
    skipped: list[event_pb2.Envelope] = []
    while True:
        await client.unary(EV, "Publish", ev.PublishRequest(
            topic="/test/marker", event=any_pb2.Any(type_url=marker.DESCRIPTOR.full_name, value=marker.SerializeToString())),
            empty_pb2.Empty, metadata=md(ns_name))
        while True:
            env = await _next(stream)
            if env.topic == "/test/marker" and ns_events.NamespaceUpdate.FromString(env.event.value) == marker:
                return skipped
            if env.topic != "/test/marker":
                skipped.append(env)


async def test_events_publish_subscribe_with_filters(client: Client) -> None:
    everything = await _subscribe(client)
    only_ns = await _subscribe(
        client, 'topic~="/namespaces/",namespace=="filt"', 'topic=="/test/marker",namespace=="sync-only"'
    )
    await _sync(client, only_ns, "sync-only")
    await _sync(client, everything, "default")
    await client.unary(NS, "Create", ns.CreateNamespaceRequest(namespace=ns.Namespace(name="filt", labels={"k": "v"})),
                       ns.CreateNamespaceResponse)
    await client.unary(NS, "Create", ns.CreateNamespaceRequest(namespace=ns.Namespace(name="unfilt")),
                       ns.CreateNamespaceResponse)
    env = await _next(only_ns)
    assert (env.namespace, env.topic) == ("filt", "/namespaces/create")
    assert env.event.type_url == "containerd.events.NamespaceCreate"
    created = ns_events.NamespaceCreate.FromString(env.event.value)
    assert created.name == "filt" and dict(created.labels) == {"k": "v"}
    seen = [await _next(everything), await _next(everything)]
    assert [(e.namespace, e.topic) for e in seen] == [("filt", "/namespaces/create"), ("unfilt", "/namespaces/create")]
    assert await _sync(client, only_ns, "sync-only") == []  # "unfilt" never reached it


async def test_events_by_event_field_and_forward(client: Client) -> None:
    stream = await _subscribe(client, 'event.name=="wanted"', 'topic=="/test/marker"')
    await _sync(client, stream, "default")
    for name in ("unwanted", "wanted"):
        e = ns_events.NamespaceDelete(name=name)
        env = event_pb2.Envelope(namespace="default", topic="/namespaces/delete",
                                 event=any_pb2.Any(type_url=e.DESCRIPTOR.full_name, value=e.SerializeToString()))
        await client.unary(TTRPC_EV, "Forward", ttrpc_ev.ForwardRequest(envelope=env), empty_pb2.Empty)
    got = await _next(stream)
    assert ns_events.NamespaceDelete.FromString(got.event.value).name == "wanted"
    assert got.HasField("timestamp")


@pytest.mark.parametrize("topic", ["", "nope", "/a//b", "/a/b/", "/a b"])
async def test_publish_refuses_bad_topics(client: Client, topic: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        await client.unary(EV, "Publish", ev.PublishRequest(topic=topic), empty_pb2.Empty, metadata=md())


async def test_publish_needs_a_namespace(client: Client) -> None:
    with pytest.raises(errdefs.FailedPrecondition):
        await client.unary(EV, "Publish", ev.PublishRequest(topic="/x"), empty_pb2.Empty)
    env = event_pb2.Envelope(namespace="", topic="/x")
    with pytest.raises(errdefs.InvalidArgument):
        await client.unary(EV, "Forward", ev.ForwardRequest(envelope=env), empty_pb2.Empty)


async def test_subscribe_refuses_bad_filters(client: Client) -> None:
    stream = await _subscribe(client, "topic==")
    with pytest.raises(errdefs.InvalidArgument):
        await asyncio.wait_for(stream.recv(), 10)


async def test_introspection_and_version(suite: Suite, client: Client) -> None:
    server = await client.unary(INTRO, "Server", empty_pb2.Empty(), intro.ServerResponse)
    assert server.uuid and server.pid == suite.procs["proxy"].pid
    plugins = await client.unary(INTRO, "Plugins", intro.PluginsRequest(), intro.PluginsResponse)
    by_id = {p.id: p for p in plugins.plugins}
    assert set(by_id) >= {NS, EV, TTRPC_EV, INTRO, VERSION, ECHO}
    echo = by_id[ECHO]
    assert dict(echo.exports)["process"] == "echo"
    assert dict(echo.exports)["replicas"] == "1" and dict(echo.exports)["healthy"] == "1"
    assert float(dict(echo.exports)["rtt_us"]) > 0
    suite.stop("other")
    plugins = await client.unary(INTRO, "Plugins", intro.PluginsRequest(), intro.PluginsResponse)
    other = {p.id: p for p in plugins.plugins}["moorage.test.v1.Other"]
    assert dict(other.exports)["healthy"] == "0" and other.init_err.code == 14
    filtered = await client.unary(INTRO, "Plugins", intro.PluginsRequest(filters=["exports.process==echo"]),
                                  intro.PluginsResponse)
    assert [p.id for p in filtered.plugins] == [ECHO]
    v = await client.unary(VERSION, "Version", empty_pb2.Empty(), ver.VersionResponse)
    assert v.version


def _moor(suite: Suite, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moorage.cli.main", "--address", suite.address, *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""},
    )


async def test_moor_commands(suite: Suite, client: Client) -> None:
    out = await asyncio.to_thread(_moor, suite, "services")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "PROCESS", "REPLICAS", "HEALTH", "RTT"]
    assert any(line.split()[:4] == [ECHO, "echo", "1/1", "ok"] for line in lines)
    out = await asyncio.to_thread(_moor, suite, "--json", "services")
    data = json.loads(out.stdout)
    assert {s["service"]: s["health"] for s in data["services"]}[ECHO] == "ok"
    suite.stop("other")
    out = await asyncio.to_thread(_moor, suite, "services")
    assert out.returncode == 7  # a service is down: scripts can tell
    assert any(line.split()[:4] == ["moorage.test.v1.Other", "other", "0/1", "down"] for line in out.stdout.splitlines())
    await asyncio.to_thread(suite.start, "other")

    assert (await asyncio.to_thread(_moor, suite, "namespaces", "create", "cli-ns", "a=1")).returncode == 0
    assert (await asyncio.to_thread(_moor, suite, "namespaces", "create", "cli-ns")).returncode == 4
    assert (await asyncio.to_thread(_moor, suite, "namespaces", "create", "bad..ns")).returncode == 5
    out = await asyncio.to_thread(_moor, suite, "namespaces", "label", "cli-ns", "b=2", "a=")
    assert out.returncode == 0 and "b=2" in out.stdout and "a=1" not in out.stdout
    out = await asyncio.to_thread(_moor, suite, "--json", "namespaces", "ls")
    assert {"name": "cli-ns", "labels": {"b": "2"}} in json.loads(out.stdout)
    out = await asyncio.to_thread(_moor, suite, "namespaces", "ls", "-q")
    assert "cli-ns" in out.stdout.split()
    assert (await asyncio.to_thread(_moor, suite, "namespaces", "rm", "cli-ns")).returncode == 0
    assert (await asyncio.to_thread(_moor, suite, "namespaces", "rm", "cli-ns")).returncode == 3
    await client.unary_raw(ECHO, "Echo", b"", metadata=md("busy-cli"))
    out = await asyncio.to_thread(_moor, suite, "namespaces", "rm", "busy-cli")
    assert out.returncode == 6 and "must be empty" in out.stderr

    out = await asyncio.to_thread(_moor, suite, "--json", "version")
    assert out.returncode == 0 and json.loads(out.stdout)["server"]["version"]


async def test_moor_events_streams_as_they_come(suite: Suite, client: Client) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moorage.cli.main", "--address", suite.address, "--json", "events",
         "namespace==ev-cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None

        async def first_line() -> str:
            assert proc.stdout is not None
            return await asyncio.to_thread(proc.stdout.readline)

        line_task = asyncio.ensure_future(first_line())
        # the subscriber is live once the proxy counts it; poll the published side instead of sleeping:
        # keep publishing until moor prints something
        e = ns_events.NamespaceUpdate(name="ev-cli")
        while not line_task.done():
            await client.unary(EV, "Publish", ev.PublishRequest(
                topic="/namespaces/update", event=any_pb2.Any(type_url=e.DESCRIPTOR.full_name, value=e.SerializeToString())),
                empty_pb2.Empty, metadata=md("ev-cli"))
            await asyncio.wait([line_task], timeout=0.05)
        got = json.loads(line_task.result())
        assert got["namespace"] == "ev-cli" and got["topic"] == "/namespaces/update"
        assert got["event"] == {"name": "ev-cli"}
    finally:
        proc.terminate()
        proc.wait(10)
