"""Container store conformance: the SQLite store, and the runtime's service through the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moorage.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from moorage.namespaces import current_namespace
from moorage.services.runtime.containers import SqliteContainerStore
from moorage.services.runtime.contract import AnyValue, Container, RuntimeInfo
from moorage.services.runtime.spec import SPEC_TYPE_URL

SPEC = AnyValue(SPEC_TYPE_URL, b'{"ociVersion":"1.0.2-dev"}')


def ctr(id: str, **kw: Any) -> Container:
    return Container(id=id, runtime=RuntimeInfo("io.containerd.runc.v2"), spec=SPEC, **kw)


@pytest.fixture(params=["store", "proxy"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    token = current_namespace.set("default")
    try:
        if request.param == "store":
            s = SqliteContainerStore(tmp_path / "c.db")
            yield s
            s.close()
        else:
            from suite import Suite

            from moorage import rpc
            from moorage.services.runtime.client import ContainersClient

            suite = Suite(tmp_path)
            try:
                await asyncio.to_thread(suite.start, "proxy")
                await asyncio.to_thread(suite.start, "runtime")
                client = await rpc.connect(suite.address)
                yield ContainersClient(client)
                await client.close()
            finally:
                await asyncio.to_thread(suite.close)
    finally:
        current_namespace.reset(token)


async def test_create_get_list_delete(store: Any) -> None:
    c = await store.create(ctr("c1", image="docker.io/library/busybox:latest",
                               labels={"a": "1"}, snapshotter="overlayfs", snapshot_key="c1",
                               extensions={"x": AnyValue("t/x", b"\x01")}))
    assert c.created_at > 0 and c.updated_at == c.created_at
    got = await store.get("c1")
    assert got.image == "docker.io/library/busybox:latest" and got.labels == {"a": "1"}
    assert got.spec == SPEC and got.runtime.name == "io.containerd.runc.v2"
    assert got.extensions == {"x": AnyValue("t/x", b"\x01")}
    assert got.snapshot_key == "c1" and got.snapshotter == "overlayfs"
    await store.create(ctr("c2"))
    assert [x.id for x in await store.list()] == ["c1", "c2"]
    assert [x.id for x in await store.list(["labels.a==1"])] == ["c1"]
    assert [x.id for x in await store.list(["id==c2"])] == ["c2"]
    await store.delete("c1")
    with pytest.raises(NotFound):
        await store.get("c1")
    with pytest.raises(NotFound):
        await store.delete("c1")


async def test_already_exists_and_validation(store: Any) -> None:
    await store.create(ctr("c1"))
    with pytest.raises(AlreadyExists):
        await store.create(ctr("c1"))
    with pytest.raises(InvalidArgument):
        await store.create(ctr("bad/id"))
    with pytest.raises(InvalidArgument):
        await store.create(Container(id="c3", runtime=RuntimeInfo(""), spec=SPEC))
    with pytest.raises(InvalidArgument):
        await store.create(Container(id="c4", runtime=RuntimeInfo("io.containerd.runc.v2")))


async def test_update_fieldpaths(store: Any) -> None:
    await store.create(ctr("c1", labels={"a": "1", "b": "2"}, image="i1"))
    u = await store.update(ctr("c1", labels={"a": "9"}, image="i2"), ["labels.a"])
    assert u.labels == {"a": "9", "b": "2"} and u.image == "i1"
    u = await store.update(ctr("c1", labels={}, image="i2"), ["labels.b", "image"])
    assert u.labels == {"a": "9"} and u.image == "i2"
    u = await store.update(ctr("c1", labels={"z": "1"}, image="i3"))
    assert u.labels == {"z": "1"} and u.image == "i3"
    with pytest.raises(InvalidArgument):
        await store.update(ctr("c1"), ["runtime"])
    with pytest.raises(InvalidArgument):
        await store.update(Container(id="c1", runtime=RuntimeInfo("io.other.v1"), spec=SPEC))
    with pytest.raises(NotFound):
        await store.update(ctr("nope"))


async def test_namespaces_are_separate(store: Any) -> None:
    await store.create(ctr("c1"))
    token = current_namespace.set("other")
    try:
        assert await store.list() == []
        with pytest.raises(NotFound):
            await store.get("c1")
        await store.create(ctr("c1"))
    finally:
        current_namespace.reset(token)
    assert len(await store.list()) == 1


async def test_no_namespace_is_refused(tmp_path: Path) -> None:
    s = SqliteContainerStore(tmp_path / "c.db")
    token = current_namespace.set(None)
    try:
        with pytest.raises(FailedPrecondition):
            await s.list()
    finally:
        current_namespace.reset(token)
