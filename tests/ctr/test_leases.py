"""Leases (proxy/leases.py): the store's rules, durability, and `moor leases` through the proxy."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.proxy.leases import EXPIRE_LABEL, LeaseStore, LeasesService
from suite import Suite

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def store(tmp_path: Path) -> LeaseStore:
    s = LeaseStore(tmp_path / "leases.db")
    yield s  # type: ignore[misc]
    s.close()


def test_create_list_delete_per_namespace(store: LeaseStore) -> None:
    store.create("a", "l1", {"k": "v"})
    store.create("b", "l1", {})
    with pytest.raises(errdefs.AlreadyExists, match='lease "l1"'):
        store.create("a", "l1", {})
    assert [(x.id, x.labels) for x in store.leases("a")] == [("l1", {"k": "v"})]
    store.delete("a", "l1")
    assert store.leases("a") == [] and [x.id for x in store.leases("b")] == ["l1"]
    with pytest.raises(errdefs.NotFound):
        store.delete("a", "l1")
    with pytest.raises(errdefs.InvalidArgument):
        store.create("a", "", {})
    with pytest.raises(errdefs.InvalidArgument):
        store.create("a", "x", {"k": "v" * 5000})


def test_resources(store: LeaseStore) -> None:
    store.create("ns", "l", {})
    store.add_resource("ns", "l", "content", DIGEST)
    store.add_resource("ns", "l", "content", DIGEST)  # twice: no error
    store.add_resource("ns", "l", "ingests", "pull-ref-1")
    store.add_resource("ns", "l", "snapshots/overlayfs", "extract-1 sha256:x")
    assert store.resources("ns", "l") == [
        ("content", DIGEST), ("ingests", "pull-ref-1"), ("snapshots/overlayfs", "extract-1 sha256:x"),
    ]
    store.add_resource("ns", "l", "images", "docker.io/library/x:1")  # containerd 2
    store.delete_resource("ns", "l", "images", "docker.io/library/x:1")
    for rtype, rid in (("containers", "x"), ("images", ""), ("content", "sha256:12"), ("content", "nodigest"), ("snapshots", "k")):
        with pytest.raises(errdefs.InvalidArgument):
            store.add_resource("ns", "l", rtype, rid)
    with pytest.raises(errdefs.NotFound):
        store.add_resource("ns", "other", "ingests", "r")
    with pytest.raises(errdefs.NotFound):
        store.resources("other-ns", "l")
    store.delete_resource("ns", "l", "ingests", "pull-ref-1")
    store.delete_resource("ns", "l", "ingests", "never-held")
    assert [t for t, _ in store.resources("ns", "l")] == ["content", "snapshots/overlayfs"]
    store.delete("ns", "l")
    store.create("ns", "l", {})
    assert store.resources("ns", "l") == []  # a lease's resources go with it


def test_expiry_and_durability(tmp_path: Path) -> None:
    s = LeaseStore(tmp_path / "leases.db")
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    s.create("ns", "old", {EXPIRE_LABEL: past})
    s.create("ns", "new", {EXPIRE_LABEL: future})
    s.create("ns", "bad", {EXPIRE_LABEL: "not a time"})
    s.add_resource("ns", "new", "ingests", "r")
    assert sorted(x.id for x in s.leases("ns")) == ["bad", "new"]
    s.close()
    s = LeaseStore(tmp_path / "leases.db")
    assert sorted(x.id for x in s.leases("ns")) == ["bad", "new"]
    assert s.resources("ns", "new") == [("ingests", "r")]
    s.close()


async def test_service_filters(store: LeaseStore) -> None:
    from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb
    from moorage.namespaces import current_namespace

    svc = LeasesService(store)
    current_namespace.set(None)
    with pytest.raises(errdefs.FailedPrecondition, match="namespace is required"):
        await svc.list(pb.ListRequest(), None)  # type: ignore[arg-type]
    current_namespace.set("ns")
    await svc.create(pb.CreateRequest(id="a", labels={"team": "x"}), None)  # type: ignore[arg-type]
    await svc.create(pb.CreateRequest(id="b"), None)  # type: ignore[arg-type]
    made = await svc.create(pb.CreateRequest(), None)  # type: ignore[arg-type]
    assert made.lease.id and made.lease.created_at.seconds > 0
    got = await svc.list(pb.ListRequest(filters=["labels.team==x", "id==b"]), None)  # type: ignore[arg-type]
    assert sorted(x.id for x in got.leases) == ["a", "b"]
    with pytest.raises(errdefs.InvalidArgument):
        await svc.list(pb.ListRequest(filters=["id=="]), None)  # type: ignore[arg-type]


def test_moor_leases(suite: Suite) -> None:
    suite.start("proxy")
    r = suite.moor("leases", "create", "--id", "mine", "purpose=test")
    assert r.returncode == 0 and r.stdout.strip() == "mine", r.stderr
    r = suite.moor("leases", "create", "--expires", "0")
    assert r.returncode == 0
    other = r.stdout.strip()
    r = suite.moor("--json", "leases", "ls")
    items = {x["id"]: x for x in json.loads(r.stdout)}
    assert set(items) == {"mine", other}
    assert items["mine"]["labels"]["purpose"] == "test" and EXPIRE_LABEL in items["mine"]["labels"]
    assert items[other]["labels"] == {}
    assert suite.moor("leases", "ls", "-q", "id==mine").stdout.split() == ["mine"]
    assert suite.moor("-n", "elsewhere", "leases", "ls", "-q").stdout.split() == []
    r = suite.moor("leases", "rm", "mine", other)
    assert r.returncode == 0 and r.stdout.split() == ["mine", other]
    r = suite.moor("leases", "rm", "mine")
    assert r.returncode == 3 and "not found" in r.stderr
    assert suite.moor("leases", "create", "--id", "kept").returncode == 0
    suite.stop("proxy")
    suite.start("proxy")
    assert suite.moor("leases", "ls", "-q").stdout.split() == ["kept"]


async def test_grpc_writes_under_a_lease_header_are_held(grpc_address: str) -> None:
    """containerd's clients (ctr's pull) over gRPC: a Content.Write carrying ``containerd-lease``
    is recorded to that lease through the door; an unknown lease is NotFound."""
    import hashlib

    import grpc
    import grpc.aio

    from moorage.api.containerd.services.content.v1 import content_pb2 as cpb
    from moorage.api.containerd.services.leases.v1 import leases_pb2 as lpb

    data = f"held over grpc {time.time_ns()}".encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    leases = "/containerd.services.leases.v1.Leases/"
    async with grpc.aio.insecure_channel(f"unix:{grpc_address}") as ch:
        ns = (("containerd-namespace", "default"),)
        await ch.unary_unary(leases + "Create")(lpb.CreateRequest(id="grpc-held").SerializeToString(),
                                                metadata=ns, timeout=10)

        async def write(lease: str) -> None:
            req = cpb.WriteContentRequest(action=cpb.COMMIT, ref=f"grpc-{lease}", total=len(data),
                                          expected=digest, data=data)
            call = ch.stream_stream("/containerd.services.content.v1.Content/Write")(
                iter([req.SerializeToString()]), metadata=(*ns, ("containerd-lease", lease)), timeout=10)
            async for _ in call:
                pass

        await write("grpc-held")
        raw = await ch.unary_unary(leases + "ListResources")(
            lpb.ListResourcesRequest(id="grpc-held").SerializeToString(), metadata=ns, timeout=10)
        held = {(r.type, r.id) for r in lpb.ListResourcesResponse.FromString(raw).resources}
        assert held == {("content", digest)}
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await write("no-such-lease")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await ch.unary_unary(leases + "Delete")(lpb.DeleteRequest(id="grpc-held").SerializeToString(),
                                                metadata=ns, timeout=10)
