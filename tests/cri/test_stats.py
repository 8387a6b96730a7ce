"""Container stats from the runtime's Tasks.Metrics (the shim's cgroup v1/v2 Metrics), without a suite."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage.api.containerd.cgroups.cgroup1.stats import metrics_pb2 as m1
from moorage.api.containerd.cgroups.cgroup2.stats import metrics_pb2 as m2
from moorage.errdefs import InvalidArgument, Unavailable
from moorage.services.cri.config import CriConfig
from moorage.services.cri.contract import Container, ContainerConfig, ContainerMetadata, ContainerState
from moorage.services.cri.store import CriRuntime
from moorage.services.runtime import metrics
from moorage.services.runtime.stats import json_row, task_usage

V1 = "types.containerd.io/io.containerd.cgroups.v1.Metrics"
V2 = "types.containerd.io/io.containerd.cgroups.v2.Metrics"


def v1_metrics() -> bytes:
    m = m1.Metrics()
    m.cpu.usage.total = 7_000_000_123
    m.memory.usage.usage = 50 << 20
    m.memory.usage.limit = 1 << 63
    m.memory.total_inactive_file = 8 << 20
    m.memory.total_rss = 30 << 20
    m.memory.total_pg_fault = 1234
    m.memory.total_pg_maj_fault = 5
    m.pids.current, m.pids.limit = 3, 100
    return m.SerializeToString()


def v2_metrics() -> bytes:
    m = m2.Metrics()
    m.cpu.usage_usec = 2_500_000
    m.memory.usage = 20 << 20
    m.memory.usage_limit = 64 << 20
    m.memory.inactive_file = 4 << 20
    m.memory.anon = 12 << 20
    m.memory.pgfault, m.memory.pgmajfault = 99, 2
    m.pids.current = 1
    return m.SerializeToString()


def filled(message: Any, draw: Callable[[], int]) -> Any:
    """``message`` with every scalar field, nested messages' too, set by ``draw``."""
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if hasattr(value, "DESCRIPTOR"):
            filled(value, draw)
        elif isinstance(value, int) and field.type in (field.TYPE_UINT64, field.TYPE_UINT32):
            setattr(message, field.name, draw() & ((1 << (64 if field.type == field.TYPE_UINT64 else 32)) - 1))
    return message


@given(st.randoms(use_true_random=False))
def test_decode_reads_what_protobuf_reads(rnd: Any) -> None:
    """The decoder reads the fields by number as the generated messages read them (every
    other field set too; limits at and above UNLIMITED)."""
    def draw() -> int:
        return rnd.choice([0, 1, rnd.getrandbits(20), rnd.getrandbits(64), metrics.UNLIMITED, 1 << 63])

    v1 = filled(m1.Metrics(), draw)
    mem = v1.memory
    assert metrics.decode(V1, v1.SerializeToString()) == metrics.CgroupUsage(
        metrics.V1, v1.cpu.usage.total, mem.usage.usage, metrics._limit(mem.usage.limit),
        max(mem.usage.usage - mem.total_inactive_file, 0), mem.total_rss, mem.total_pg_fault,
        mem.total_pg_maj_fault, v1.pids.current, metrics._limit(v1.pids.limit))
    v2 = filled(m2.Metrics(), draw)
    m = v2.memory
    assert metrics.decode(V2, v2.SerializeToString()) == metrics.CgroupUsage(
        metrics.V2, v2.cpu.usage_usec * 1000, m.usage, metrics._limit(m.usage_limit),
        max(m.usage - m.inactive_file, 0), m.anon, m.pgfault, m.pgmajfault, v2.pids.current,
        metrics._limit(v2.pids.limit))


def test_decode_v1_and_v2() -> None:
    a = metrics.decode(V1, v1_metrics())
    assert (a.cpu_ns, a.memory_usage, a.memory_limit, a.memory_working_set, a.memory_rss) == (
        7_000_000_123, 50 << 20, 0, 42 << 20, 30 << 20)
    assert (a.page_faults, a.major_page_faults, a.pids, a.pids_limit) == (1234, 5, 3, 100)
    b = metrics.decode(V2, v2_metrics())
    assert (b.cpu_ns, b.memory_usage, b.memory_limit, b.memory_working_set, b.memory_rss) == (
        2_500_000_000, 20 << 20, 64 << 20, 16 << 20, 12 << 20)
    assert (b.page_faults, b.major_page_faults, b.pids, b.kind) == (99, 2, 1, metrics.V2)
    with pytest.raises(InvalidArgument, match="cannot be read"):
        metrics.decode("x/other.Metrics", b"")
    # moor stats reads the same decoder
    assert task_usage("web", V2, v2_metrics()) == b
    assert json_row("web", b) == {"id": "web", "cpu_ns": 2_500_000_000, "memory": 20 << 20, "memory_limit": 64 << 20,
                                  "pids": 1, "pids_limit": 0, "metrics_type": metrics.V2}
    with pytest.raises(InvalidArgument, match="task web: metrics of type"):
        task_usage("web", "x/other.Metrics", b"")


class FakePeers:
    """Tasks.Metrics and Snapshots.Usage of the runtime service, as CriRuntime calls them."""

    def __init__(self, data: dict[str, tuple[str, bytes]]) -> None:
        self.data = data
        self.calls: list[list[str]] = []
        self.down = False

    async def metrics(self, container_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        self.calls.append(list(container_ids))
        if self.down:
            raise Unavailable("runtime service gone")
        return {i: self.data[i] for i in container_ids if i in self.data}

    async def snapshot_usage(self, snapshotter: str, key: str) -> tuple[int, int]:
        return 4096, 2


def container(id: str, state: ContainerState) -> Container:
    return Container(id, "pod1", ContainerConfig(metadata=ContainerMetadata(name=id), image="busybox"), "busybox", "sha256:x",
                     state, cgroup_path="")


@pytest.fixture
def runtime(tmp_path: Path) -> tuple[CriRuntime, FakePeers]:
    peers = FakePeers({"v1": (V1, v1_metrics()), "v2": (V2, v2_metrics())})
    rt = CriRuntime(CriConfig(restrict_oom_score_adj="off"), peers, None, tmp_path / "root",  # type: ignore[arg-type]
                    tmp_path / "state", logging.getLogger("test"))
    for id, state in (("v1", ContainerState.RUNNING), ("v2", ContainerState.RUNNING),
                      ("notask", ContainerState.RUNNING), ("created", ContainerState.CREATED),
                      ("exited", ContainerState.EXITED)):
        rt.ctrs.put(container(id, state))
    return rt, peers


async def test_container_stats_come_from_task_metrics(runtime: tuple[CriRuntime, FakePeers]) -> None:
    rt, peers = runtime
    one = await rt.container_stats("v1")
    u = one.usage.counters
    assert (u.cpu_ns, u.memory_usage, u.memory_working_set, u.memory_rss) == (
        7_000_000_123, 50 << 20, 42 << 20, 30 << 20)
    assert (u.page_faults, u.major_page_faults, one.usage.timestamp > 0) == (1234, 5, True)
    assert (one.writable_bytes, one.writable_inodes) == (4096, 2)
    assert peers.calls == [["v1"]]

    every = await rt.list_container_stats()
    listed = {s.id: s.usage.counters for s in every}
    stamps = {s.id: s.usage.timestamp for s in every}
    assert sorted(listed) == ["created", "notask", "v1", "v2"]
    assert peers.calls[-1] == ["v1", "v2", "notask"], "one Metrics call for the running containers"
    assert (listed["v2"].cpu_ns, listed["v2"].memory_working_set, listed["v2"].memory_rss) == (
        2_500_000_000, 16 << 20, 12 << 20)
    # no task (or not started): today's reading of the container's cgroup (none here: zeros)
    assert listed["notask"].cpu_ns == listed["created"].cpu_ns == 0 and stamps["notask"] > 0
    assert (await rt.container_stats("exited")).usage.counters.memory_usage == 0
    assert peers.calls[-1] == []


async def test_runtime_service_down_reads_the_cgroup(runtime: tuple[CriRuntime, FakePeers]) -> None:
    rt, peers = runtime
    peers.down = True
    s = await rt.container_stats("v1")
    assert s.usage.counters.cpu_ns == 0 and s.usage.timestamp > 0 and s.writable_bytes == 4096
