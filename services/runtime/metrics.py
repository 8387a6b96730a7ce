"""The shims' cgroup measurements (the ``data`` of a Tasks.Metrics Metric) as plain numbers.

A shim answers Stats with an Any of ``io.containerd.cgroups.v1.Metrics`` or
``io.containerd.cgroups.v2.Metrics`` (as ``ctr tasks metrics`` decodes it); ``decode`` turns
either into one :class:`CgroupUsage`. The working set is usage minus inactive file pages, as
kubelet and containerd's CRI compute it; rss is v1's ``total_rss`` or v2's ``anon``. Both
``moor stats`` and the CRI's container stats read the shims through this one decoder, which
reads the few fields it needs by the numbers of containerd's cgroup1/cgroup2 metrics.proto
through moorage.cli.wire (no protobuf: `moor stats` starts ~40 ms sooner).
"""

from __future__ import annotations

from moorage.cli.wire import Fields
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
        # Metrics{pids=2 {current=1, limit=2}, cpu=3 {usage=1 {total=1}}, memory=4 {total_rss=19,
        # total_pg_fault=26, total_pg_maj_fault=27, total_inactive_file=30, usage=33 {limit=1, usage=2}}}
        v1 = Fields(value)
        pids, mem = v1.msg(2), v1.msg(4)
        usage = mem.msg(33)
        return CgroupUsage(kind, cpu_ns=v1.msg(3).msg(1).uint(1), memory_usage=usage.uint(2),
                           memory_limit=_limit(usage.uint(1)),
                           memory_working_set=max(usage.uint(2) - mem.uint(30), 0),
                           memory_rss=mem.uint(19), page_faults=mem.uint(26),
                           major_page_faults=mem.uint(27), pids=pids.uint(1),
                           pids_limit=_limit(pids.uint(2)))
    if kind == V2:
        # Metrics{pids=1 {current=1, limit=2}, cpu=2 {usage_usec=1}, memory=4 {anon=1,
        # inactive_file=13, pgfault=18, pgmajfault=19, usage=32, usage_limit=33}}
        v2 = Fields(value)
        pids, m = v2.msg(1), v2.msg(4)
        return CgroupUsage(kind, cpu_ns=v2.msg(2).uint(1) * 1000, memory_usage=m.uint(32),
                           memory_limit=_limit(m.uint(33)),
                           memory_working_set=max(m.uint(32) - m.uint(13), 0), memory_rss=m.uint(1),
                           page_faults=m.uint(18), major_page_faults=m.uint(19),
                           pids=pids.uint(1), pids_limit=_limit(pids.uint(2)))
    raise InvalidArgument(f"metrics of type {type_url!r} cannot be read (expected {V1} or {V2})")
