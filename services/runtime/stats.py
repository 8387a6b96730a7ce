"""``moor stats [--no-stream] [ID...]``: what the shims measure of each running task.

Tasks.Metrics answers one Metric per task whose ``data`` is the shim's own measurement, a
cgroup v1 or v2 Metrics Any; each row is the task id beside the :class:`.metrics.CgroupUsage`
that :mod:`.metrics` decodes, of which the table and ``--json`` show a few numbers.
"""

from __future__ import annotations

from moorage.cli.wire import Fields, Msg
from moorage.errdefs import InvalidArgument, NotFound

from .metrics import CgroupUsage, decode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from moorage.cli.context import CliContext

TASKS = "containerd.services.tasks.v1.Tasks"


def task_usage(id: str, type_url: str, value: bytes) -> CgroupUsage:
    """Decode task ``id``'s metrics Any; another type is InvalidArgument naming it and the task."""
    try:
        return decode(type_url, value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"task {id}: {exc}") from None


def json_row(id: str, u: CgroupUsage) -> dict[str, object]:
    """One task in ``moor --json stats``; a limit of 0 means none is set."""
    return {"id": id, "cpu_ns": u.cpu_ns, "memory": u.memory_usage, "memory_limit": u.memory_limit,
            "pids": u.pids, "pids_limit": u.pids_limit, "metrics_type": u.kind}


def collect(ctx: CliContext, ids: list[str]) -> list[tuple[str, CgroupUsage]]:
    """(id, usage) of ``ids`` (every task when empty, by id), in that order; an unknown id, or one
    without a running task, is NotFound."""
    # MetricsRequest{filters=1} -> MetricsResponse{metrics=1 Metric{id=2, data=3 Any{type_url=1,
    # value=2}}}
    resp: Fields = ctx.connect().unary(TASKS, "Metrics", Msg({1: [f"id=={i}" for i in ids]}), Fields,
                                       timeout=ctx.timeout, metadata=ctx.metadata())
    metrics = [(m.text(2), m.msg(3)) for m in resp.msgs(1)]
    found = {id: task_usage(id, data.text(1), data.blob(2)) for id, data in metrics if data.text(1)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no running task for {', '.join(missing)}")
    return [(i, found[i]) for i in ids] if ids else sorted(found.items())


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
        ctx.emit_json([json_row(id, u) for id, u in rows])
        return 0
    ctx.table(["container", "cpu (s)", "memory", "limit", "pids"],
              [[id, f"{u.cpu_ns / 1e9:.3f}", _bytes(u.memory_usage),
                _bytes(u.memory_limit) if u.memory_limit else "-",
                f"{u.pids}/{u.pids_limit}" if u.pids_limit else str(u.pids)] for id, u in rows])
    return 0
