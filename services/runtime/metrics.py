"""The shims' cgroup measurements (the ``data`` of a Tasks.Metrics Metric) as plain numbers.

A shim answers Stats with an Any of ``io.containerd.cgroups.v1.Metrics`` or
``io.containerd.cgroups.v2.Metrics`` (as ``ctr tasks metrics`` decodes it); ``decode`` turns
either into one :class:`CgroupUsage`. The working set is usage minus inactive file pages, as
kubelet and containerd's CRI compute it; rss is v1's ``total_rss`` or v2's ``anon``. Both
``moor stats`` and the CRI's container stats read the shims through this one decoder.
"""

from __future__ import annotations

from moorage.errdefs import InvalidArgument
from ttrpc.lighttyping import NamedTuple

V1 = "io.containerd.cgroups.v1.Metrics"
V2 = "io.containerd.cgroups.v2.Metrics"
UNLIMITED = 1 << 62
"""Limits at or above this are "no limit" (cgroup v1 reports about 2^63 for max)."""


class CgroupUsage(NamedTuple):
    """One cgroup's usage; a limit of 0 means none is set."""

    kind: str
    cpu_ns: int = 0
    memory_usage: int = 0
    memory_limit: int = 0
    memory_working_set: int = 0
    memory_rss: int = 0
    page_faults: int = 0
    major_page_faults: int = 0
    pids: int = 0
    pids_limit: int = 0


def _limit(value: int) -> int:
    return 0 if value >= UNLIMITED else value


def decode(type_url: str, value: bytes) -> CgroupUsage:
    """Decode a shim's metrics Any; another type is InvalidArgument naming it."""
    kind = type_url.rsplit("/", 1)[-1]
    if kind == V1:
        from moorage.api.containerd.cgroups.cgroup1.stats import metrics_pb2 as m1

        v1 = m1.Metrics.FromString(value)
        mem = v1.memory
        return CgroupUsage(kind, cpu_ns=v1.cpu.usage.total, memory_usage=mem.usage.usage,
                           memory_limit=_limit(mem.usage.limit),
                           memory_working_set=max(mem.usage.usage - mem.total_inactive_file, 0),
                           memory_rss=mem.total_rss, page_faults=mem.total_pg_fault,
                           major_page_faults=mem.total_pg_maj_fault, pids=v1.pids.current,
                           pids_limit=_limit(v1.pids.limit))
    if kind == V2:
        from moorage.api.containerd.cgroups.cgroup2.stats import metrics_pb2 as m2

        v2 = m2.Metrics.FromString(value)
        m = v2.memory
        return CgroupUsage(kind, cpu_ns=v2.cpu.usage_usec * 1000, memory_usage=m.usage,
                           memory_limit=_limit(m.usage_limit),
                           memory_working_set=max(m.usage - m.inactive_file, 0), memory_rss=m.anon,
                           page_faults=m.pgfault, major_page_faults=m.pgmajfault,
                           pids=v2.pids.current, pids_limit=_limit(v2.pids.limit))
    raise InvalidArgument(f"metrics of type {type_url!r} cannot be read (expected {V1} or {V2})")
