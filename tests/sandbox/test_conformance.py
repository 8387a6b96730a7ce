"""One conformance suite for sandbox.v1 Store and Controller, run against the local
implementations, their clients over a real unix socket, and the path through the proxy of a
real suite. The controller cases use host-network pods (no namespace, no CNI), so they need
no root; tests/sandbox/test_network.py covers real networking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.namespaces import current_namespace
from moorage.services.sandbox.config import SandboxConfig
from moorage.services.sandbox.contract import (
    NOT_READY,
    POD_CONFIG_TYPE,
    READY,
    AnyValue,
    CreateOptions,
    PodConfig,
    Runtime,
    Sandbox,
)

NS = "conformance"
OTHER = "conformance-other"
HOSTNET = CreateOptions(options=AnyValue(POD_CONFIG_TYPE, PodConfig(host_network=True).to_json()))


@contextlib.contextmanager
def using(ns: str) -> Iterator[None]:
    token = current_namespace.set(ns)
    try:
        yield
    finally:
        current_namespace.reset(token)


@pytest.fixture(autouse=True)
def _namespace() -> Iterator[None]:
    with using(NS):
        yield


@dataclass
class Api:
    store: Any
    controller: Callable[[str], Any]


def _config(tmp: Path) -> dict[str, Any]:
    return {"cni_conf_dir": str(tmp / "net.d"), "netns_prefix": f"mrgc-{os.getpid()}-", "reconcile": False}


async def _local(tmp: Path) -> AsyncIterator[Api]:
    from moorage.services.sandbox.controller import Sandboxers
    from moorage.services.sandbox.db import Database
    from moorage.services.sandbox.pod import PodController
    from moorage.services.sandbox.store import SqliteStore

    db = Database(tmp / "sandbox.db")
    store = SqliteStore(db)
    pods = Sandboxers({"podsandbox": PodController("podsandbox", db, store, SandboxConfig(**_config(tmp)), tmp)})
    yield Api(store, pods.get)
    db.close()


async def _socket(tmp: Path) -> AsyncIterator[Api]:
    from ttrpc.server import Server

    from moorage.rpc import connect, status_of
    from moorage.runner import with_namespace
    from moorage.services.sandbox.api import ControllerService, StoreService
    from moorage.services.sandbox.client import ControllerClient, StoreClient
    from moorage.services.sandbox.controller import Sandboxers
    from moorage.services.sandbox.db import Database
    from moorage.services.sandbox.pod import PodController
    from moorage.services.sandbox.store import SqliteStore

    db = Database(tmp / "sandbox.db")
    store = SqliteStore(db)
    pods = Sandboxers({"podsandbox": PodController("podsandbox", db, store, SandboxConfig(**_config(tmp)), tmp)})
    server = Server(status_of=status_of)
    server.register(with_namespace(StoreService(store)))
    server.register(with_namespace(ControllerService(pods)))
    sockdir = tempfile.mkdtemp(prefix="moor-sb-")
    os.chmod(sockdir, 0o700)
    sock = os.path.join(sockdir, "sandbox.sock")
    await server.listen_unix(sock)
    client = await connect(sock)
    try:
        yield Api(StoreClient(client), lambda name: ControllerClient(client, name))
    finally:
        await client.close()
        await server.shutdown(1.0)
        db.close()
        with contextlib.suppress(OSError):
            os.unlink(sock)
        os.rmdir(sockdir)


async def _proxy(tmp: Path) -> AsyncIterator[Api]:
    suite = pytest.importorskip("suite")
    from moorage.rpc import connect
    from moorage.services.sandbox.client import ControllerClient, StoreClient

    async with suite.running(["sandbox"], config={"sandbox": _config(tmp)}) as s:
        client = await connect(s.address)
        try:
            yield Api(StoreClient(client), lambda name: ControllerClient(client, name))
        finally:
            await client.close()


_KINDS = {"local": _local, "socket": _socket, "proxy": _proxy}


@pytest.fixture(params=sorted(_KINDS))
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    gen = _KINDS[request.param](tmp_path)
    value = await gen.__anext__()
    try:
        yield value
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await gen.__anext__()


def record(sandbox_id: str, **kw: Any) -> Sandbox:
    kw.setdefault("sandboxer", "podsandbox")
    return Sandbox(sandbox_id, Runtime("io.containerd.runc.v2", AnyValue("x.Options", b"\x08\x01")), **kw)


# Store -----------------------------------------------------------------------------------


async def test_store_create_get_list_delete(api: Api) -> None:
    created = await api.store.create(record("one", labels={"a": "1"}, spec=AnyValue("x.Spec", b"{}")))
    assert created.created_at > 0 and created.updated_at == created.created_at
    got = await api.store.get("one")
    assert got == created
    assert got.runtime.options == AnyValue("x.Options", b"\x08\x01")
    await api.store.create(record("two"))
    assert [s.id for s in await api.store.list()] == ["one", "two"]
    await api.store.delete("one")
    with pytest.raises(errdefs.NotFound):
        await api.store.get("one")
    with pytest.raises(errdefs.NotFound):
        await api.store.delete("one")


async def test_store_errors(api: Api) -> None:
    await api.store.create(record("dup"))
    with pytest.raises(errdefs.AlreadyExists):
        await api.store.create(record("dup"))
    for bad in ("", "has space", "x" * 77, "-lead"):
        with pytest.raises(errdefs.InvalidArgument):
            await api.store.create(record(bad))
    with pytest.raises(errdefs.InvalidArgument):
        await api.store.create(Sandbox("noruntime", Runtime("")))
    with pytest.raises(errdefs.NotFound):
        await api.store.update(record("absent"))


async def test_store_update_fields(api: Api) -> None:
    await api.store.create(record("u", labels={"keep": "1", "drop": "2"}, extensions={"e": AnyValue("x.E", b"1")}))
    new = record("u", labels={"keep": "changed", "add": "3"}, extensions={"f": AnyValue("x.F", b"2")}, sandboxer="other")
    up = await api.store.update(new, ["labels.add", "labels.drop", "extensions.f"])
    assert up.labels == {"keep": "1", "add": "3"}
    assert set(up.extensions) == {"e", "f"}
    assert up.sandboxer == "podsandbox"
    up = await api.store.update(new, ["sandboxer", "labels"])
    assert up.sandboxer == "other" and up.labels == {"keep": "changed", "add": "3"}
    assert up.updated_at >= up.created_at
    with pytest.raises(errdefs.InvalidArgument):
        await api.store.update(new, ["created_at"])
    whole = await api.store.update(record("u", labels={"only": "this"}))
    assert whole.labels == {"only": "this"} and whole.extensions == {} and whole.created_at == up.created_at


async def test_store_filters(api: Api) -> None:
    await api.store.create(record("f1", labels={"tier": "web"}))
    await api.store.create(record("f2", labels={"tier": "db"}))
    assert [s.id for s in await api.store.list(["labels.tier==web"])] == ["f1"]
    assert [s.id for s in await api.store.list(["id==f2", "id==f1"])] == ["f1", "f2"]
    assert [s.id for s in await api.store.list(["labels.tier"])] == ["f1", "f2"]
    with pytest.raises(errdefs.InvalidArgument):
        await api.store.list(["labels.tier=="])


async def test_store_namespaces_are_separate(api: Api) -> None:
    await api.store.create(record("shared"))
    with using(OTHER):
        with pytest.raises(errdefs.NotFound):
            await api.store.get("shared")
        await api.store.create(record("shared", labels={"ns": "other"}))
        assert [s.labels for s in await api.store.list()] == [{"ns": "other"}]
    assert (await api.store.get("shared")).labels == {}


# Controller ------------------------------------------------------------------------------


async def test_controller_lifecycle(api: Api) -> None:
    ctl = api.controller("podsandbox")
    await api.store.create(record("life"))
    await ctl.create("life", HOSTNET)
    status = await ctl.status("life")
    assert status.state == NOT_READY and status.created_at > 0 and status.info["netns_path"] == ""
    inst = await ctl.start("life")
    assert inst.sandbox_id == "life" and inst.created_at == status.created_at
    assert (await ctl.status("life")).state == READY
    platform = await ctl.platform("life")
    assert platform.os == "linux" and platform.architecture
    waiter = asyncio.ensure_future(ctl.wait("life"))
    await ctl.stop("life", 5)
    exit_status = await asyncio.wait_for(waiter, 10)
    assert exit_status.exit_status == 0 and exit_status.exited_at > 0
    await ctl.stop("life")  # idempotent
    stopped = await ctl.status("life")
    assert stopped.state == NOT_READY and stopped.exited_at == exit_status.exited_at
    await ctl.metrics("life")
    with pytest.raises(errdefs.FailedPrecondition):  # the record outlives no instance
        await api.store.delete("life")
    await ctl.shutdown("life")
    with pytest.raises(errdefs.NotFound):
        await ctl.status("life")
    with pytest.raises(errdefs.NotFound):
        await ctl.shutdown("life")
    await api.store.delete("life")


async def test_controller_errors(api: Api) -> None:
    ctl = api.controller("podsandbox")
    with pytest.raises(errdefs.NotFound):
        await ctl.start("nothing")
    with pytest.raises(errdefs.NotFound):
        await ctl.stop("nothing")
    with pytest.raises(errdefs.InvalidArgument):
        await ctl.create("bad id", HOSTNET)
    with pytest.raises(errdefs.InvalidArgument):
        await ctl.create("badopts", CreateOptions(options=AnyValue(POD_CONFIG_TYPE, b"[1,2")))
    await ctl.create("twice", HOSTNET)
    with pytest.raises(errdefs.AlreadyExists):
        await ctl.create("twice", HOSTNET)
    with using(OTHER):
        with pytest.raises(errdefs.NotFound):
            await ctl.status("twice")
    await ctl.shutdown("twice")
    with pytest.raises(errdefs.InvalidArgument):
        await api.controller("").status("x")
    with pytest.raises(errdefs.NotFound):
        await api.controller("no-such-sandboxer").status("x")
