"""``moor stats [--no-stream] [ID...]``: what the shims measure of each running task.

Tasks.Metrics answers one Metric per task whose ``data`` is the shim's own measurement, a
cgroup v1 or v2 Metrics Any; ``task_stats`` takes the few numbers shown here from what
:mod:`.metrics` decodes.
"""

from __future__ import annotations

from moorage.errdefs import InvalidArgument, NotFound
from ttrpc.lighttyping import NamedTuple

from .metrics import decode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from moorage.cli.context import CliContext

TASKS = "containerd.services.tasks.v1.Tasks"


class TaskStats(NamedTuple):
    """One task's usage; a limit of 0 means none is set."""

    id: str
    cpu_ns: int = 0
    memory: int = 0
    memory_limit: int = 0
    pids: int = 0
    pids_limit: int = 0
    metrics_type: str = ""


def task_stats(id: str, type_url: str, value: bytes) -> TaskStats:
    """Decode a shim's metrics Any; another type is InvalidArgument naming it and the task."""
    try:
        u = decode(type_url, value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"task {id}: {exc}") from None
    return TaskStats(id, cpu_ns=u.cpu_ns, memory=u.memory_usage, memory_limit=u.memory_limit,
                     pids=u.pids, pids_limit=u.pids_limit, metrics_type=u.kind)


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
