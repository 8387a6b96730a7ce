"""``moor stats [--no-stream] [ID...]``: what the shims measure of each running task.

Tasks.Metrics answers one Metric per task whose ``data`` is the shim's own measurement, an
Any of ``io.containerd.cgroups.v1.Metrics`` or ``io.containerd.cgroups.v2.Metrics`` (as
``ctr tasks metrics`` decodes it); ``task_stats`` turns either into the same few numbers.
"""

from __future__ import annotations

from moorage.errdefs import InvalidArgument, NotFound
from ttrpc.lighttyping import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from moorage.cli.context import CliContext

TASKS = "containerd.services.tasks.v1.Tasks"
V1 = "io.containerd.cgroups.v1.Metrics"
V2 = "io.containerd.cgroups.v2.Metrics"
UNLIMITED = 1 << 62
"""Limits at or above this are "no limit" (cgroup v1 reports about 2^63 for max)."""


class TaskStats(NamedTuple):
    """One task's usage; a limit of 0 means none is set."""

    id: str
    cpu_ns: int = 0
    memory: int = 0
    memory_limit: int = 0
    pids: int = 0
    pids_limit: int = 0
    metrics_type: str = ""


def _limit(value: int) -> int:
    return 0 if value >= UNLIMITED else value


def task_stats(id: str, type_url: str, value: bytes) -> TaskStats:
    """Decode a shim's metrics Any; another type is InvalidArgument naming it."""
    kind = type_url.rsplit("/", 1)[-1]
    if kind == V1:
        from moorage.api.containerd.cgroups.cgroup1.stats import metrics_pb2 as m1

        v1 = m1.Metrics.FromString(value)
        return TaskStats(id, cpu_ns=v1.cpu.usage.total, memory=v1.memory.usage.usage,
                         memory_limit=_limit(v1.memory.usage.limit), pids=v1.pids.current,
                         pids_limit=_limit(v1.pids.limit), metrics_type=kind)
    if kind == V2:
        from moorage.api.containerd.cgroups.cgroup2.stats import metrics_pb2 as m2

        v2 = m2.Metrics.FromString(value)
        return TaskStats(id, cpu_ns=v2.cpu.usage_usec * 1000, memory=v2.memory.usage,
                         memory_limit=_limit(v2.memory.usage_limit), pids=v2.pids.current,
                         pids_limit=_limit(v2.pids.limit), metrics_type=kind)
    raise InvalidArgument(f"task {id}: metrics of type {type_url!r} cannot be read "
                          f"(expected {V1} or {V2})")


def collect(ctx: CliContext, ids: list[str]) -> list[TaskStats]:
    """The stats of ``ids`` (every task when empty), in that order; an unknown id, or one
    without a running task, is NotFound."""
    from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

    filters = [f"id=={i}" for i in ids]
    resp = ctx.connect().unary(TASKS, "Metrics", tpb.MetricsRequest(filters=filters),
                               tpb.MetricsResponse, timeout=ctx.timeout, metadata=ctx.metadata())
    found = {m.id: task_stats(m.id, m.data.type_url, m.data.value) for m in resp.metrics
             if m.data.type_url}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no running task for {', '.join(missing)}")
    return [found[i] for i in ids] if ids else sorted(found.values(), key=lambda s: s.id)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    for flag in argv:
        if flag.startswith("-") and flag not in ("--no-stream", "-h", "--help"):
            raise InvalidArgument(f"stats: unknown flag {flag}")
    if "-h" in argv or "--help" in argv:
        print("usage: moor stats [--no-stream] [ID...]\n\nCPU, memory and pids of running "
              "tasks, as their shims measure them (one snapshot).")
        return 0
    rows = collect(ctx, ids)
    if ctx.json:
        ctx.emit_json([r._asdict() for r in rows])
        return 0
    ctx.table(["container", "cpu (s)", "memory", "limit", "pids"],
              [[r.id, f"{r.cpu_ns / 1e9:.3f}", _bytes(r.memory),
                _bytes(r.memory_limit) if r.memory_limit else "-",
                f"{r.pids}/{r.pids_limit}" if r.pids_limit else str(r.pids)] for r in rows])
    return 0
