"""CPU and memory of a cgroup from cgroupfs (v1 controllers or the v2 unified tree).

``usage(path)`` reads a pod's cgroup, or a container's without a running task (one with a
task is measured by its shim, through Tasks.Metrics), cgroupfs driver:
cumulative CPU time, memory usage and the working set (usage minus inactive file pages,
as kubelet computes it). A cgroup that is gone reads as zeros with a timestamp.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from moorage.services.runtime.metrics import V1, V2, CgroupUsage

from .contract import Usage

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def is_v2(root: Path = CGROUP_ROOT) -> bool:
    return (root / "cgroup.controllers").exists()


def usage(cgroup: str, root: Path = CGROUP_ROOT) -> Usage:
    rel = cgroup.strip("/")
    now = time.time_ns()
    if not rel:
        return Usage(timestamp=now)
    if is_v2(root):
        d = root / rel
        cpu = _read_kv(d / "cpu.stat").get("usage_usec", 0) * 1000
        mem = _read_int(d / "memory.current")
        stat = _read_kv(d / "memory.stat")
        inactive = stat.get("inactive_file", 0)
        return Usage(now, CgroupUsage(V2, cpu, mem, 0, max(mem - inactive, 0), stat.get("anon", 0),
                                      stat.get("pgfault", 0), stat.get("pgmajfault", 0)))
    cpu = _read_int(root / "cpuacct" / rel / "cpuacct.usage")
    if not cpu and os.path.isdir(root / "cpu,cpuacct"):
        cpu = _read_int(root / "cpu,cpuacct" / rel / "cpuacct.usage")
    mdir = root / "memory" / rel
    mem = _read_int(mdir / "memory.usage_in_bytes")
    stat = _read_kv(mdir / "memory.stat")
    inactive = stat.get("total_inactive_file", 0)
    return Usage(now, CgroupUsage(V1, cpu, mem, 0, max(mem - inactive, 0), stat.get("total_rss", 0),
                                  stat.get("total_pgfault", 0), stat.get("total_pgmajfault", 0)))


def oom_killed(cgroup: str, root: Path = CGROUP_ROOT) -> bool:
    """Whether the kernel's OOM killer killed a process of the cgroup (read before it goes)."""
    rel = cgroup.strip("/")
    if not rel:
        return False
    if is_v2(root):
        return _read_kv(root / rel / "memory.events").get("oom_kill", 0) > 0
    return _read_kv(root / "memory" / rel / "memory.oom_control").get("oom_kill", 0) > 0


def add(a: Usage, b: Usage) -> Usage:
    """A pod's usage with one more container's counted in (limits are ``a``'s)."""
    x, y = a.counters, b.counters
    return Usage(max(a.timestamp, b.timestamp), x._replace(
        cpu_ns=x.cpu_ns + y.cpu_ns, memory_usage=x.memory_usage + y.memory_usage,
        memory_working_set=x.memory_working_set + y.memory_working_set, memory_rss=x.memory_rss + y.memory_rss,
        page_faults=x.page_faults + y.page_faults, major_page_faults=x.major_page_faults + y.major_page_faults))
