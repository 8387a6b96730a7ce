"""Conversions between the contract's dataclasses and containerd's protobuf messages."""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, timestamp_pb2

from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
from moorage.api.containerd.types import mount_pb2
from moorage.api.containerd.types.task import task_pb2

from .contract import AnyValue, Container, ExitInfo, Mount, ProcessState, RuntimeInfo


def ts(ns: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.seconds, t.nanos = divmod(ns, 1_000_000_000)
    return t


def ns_of(t: timestamp_pb2.Timestamp) -> int:
    return int(t.seconds) * 1_000_000_000 + int(t.nanos)


def any_out(v: AnyValue) -> any_pb2.Any:
    return any_pb2.Any(type_url=v.type_url, value=v.value)


def any_in(msg: Any, field: str) -> AnyValue | None:
    if not msg.HasField(field):
        return None
    a = getattr(msg, field)
    return AnyValue(a.type_url, a.value)


def container_to_pb(c: Container) -> cpb.Container:
    out = cpb.Container(id=c.id, labels=c.labels, image=c.image, snapshotter=c.snapshotter,
                        snapshot_key=c.snapshot_key, sandbox=c.sandbox)
    out.runtime.name = c.runtime.name
    if c.runtime.options is not None:
        out.runtime.options.CopyFrom(any_out(c.runtime.options))
    if c.spec is not None:
        out.spec.CopyFrom(any_out(c.spec))
    for k, v in c.extensions.items():
        out.extensions[k].CopyFrom(any_out(v))
    if c.created_at:
        out.created_at.CopyFrom(ts(c.created_at))
    if c.updated_at:
        out.updated_at.CopyFrom(ts(c.updated_at))
    return out


def container_from_pb(m: cpb.Container) -> Container:
    return Container(
        id=m.id,
        runtime=RuntimeInfo(m.runtime.name, any_in(m.runtime, "options")),
        spec=any_in(m, "spec"),
        image=m.image,
        labels=dict(m.labels),
        snapshotter=m.snapshotter,
        snapshot_key=m.snapshot_key,
        extensions={k: AnyValue(v.type_url, v.value) for k, v in m.extensions.items()},
        sandbox=m.sandbox,
    )


def mounts_in(ms: Any) -> tuple[Mount, ...]:
    return tuple(Mount(m.type, m.source, m.target, tuple(m.options)) for m in ms)


def mounts_out(ms: Any) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                            options=list(m.options)) for m in ms]


def process_to_pb(p: ProcessState) -> task_pb2.Process:
    out = task_pb2.Process(
        container_id=p.container_id, id=p.id, pid=p.pid, status=p.status.name,
        stdin=p.stdio.stdin, stdout=p.stdio.stdout, stderr=p.stdio.stderr,
        terminal=p.stdio.terminal, exit_status=p.exit_status)
    if p.exited_at:
        out.exited_at.CopyFrom(ts(p.exited_at))
    return out


def exit_fields(e: ExitInfo) -> dict[str, Any]:
    return {"pid": e.pid, "exit_status": e.exit_status, "exited_at": ts(e.exited_at)}
