"""Conversions between the contract's plain types and the protobuf messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from moorage.api.containerd.events import sandbox_pb2 as events_pb
from moorage.api.containerd.types import mount_pb2, platform_pb2
from moorage.api.containerd.types import sandbox_pb2 as types_pb

from .contract import AnyValue, Platform, Runtime, Sandbox, SandboxEvent

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def any_to_pb(value: AnyValue | None) -> any_pb2.Any | None:
    return None if value is None else any_pb2.Any(type_url=value.type_url, value=value.value)


def any_from_pb(msg: Any, present: bool = True) -> AnyValue | None:
    if not present or (not msg.type_url and not msg.value):
        return None
    return AnyValue(msg.type_url, bytes(msg.value))


def ts_to_pb(ns: int) -> timestamp_pb2.Timestamp | None:
    if not ns:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def ts_from_pb(msg: Any, present: bool = True) -> int:
    return int(msg.ToNanoseconds()) if present else 0


def sandbox_to_pb(sb: Sandbox) -> types_pb.Sandbox:
    msg = types_pb.Sandbox(sandbox_id=sb.id, sandboxer=sb.sandboxer, labels=dict(sb.labels))
    msg.runtime.name = sb.runtime.name
    if sb.runtime.options is not None:
        msg.runtime.options.CopyFrom(any_pb2.Any(type_url=sb.runtime.options.type_url, value=sb.runtime.options.value))
    if sb.spec is not None:
        msg.spec.CopyFrom(any_pb2.Any(type_url=sb.spec.type_url, value=sb.spec.value))
    for key, value in sb.extensions.items():
        msg.extensions[key].CopyFrom(any_pb2.Any(type_url=value.type_url, value=value.value))
    for field, ns in (("created_at", sb.created_at), ("updated_at", sb.updated_at)):
        ts = ts_to_pb(ns)
        if ts is not None:
            getattr(msg, field).CopyFrom(ts)
    return msg


def sandbox_from_pb(msg: types_pb.Sandbox) -> Sandbox:
    return Sandbox(
        id=msg.sandbox_id,
        runtime=Runtime(msg.runtime.name, any_from_pb(msg.runtime.options, msg.runtime.HasField("options"))),
        sandboxer=msg.sandboxer,
        spec=any_from_pb(msg.spec, msg.HasField("spec")),
        labels=dict(msg.labels),
        extensions={k: AnyValue(v.type_url, bytes(v.value)) for k, v in msg.extensions.items()},
        created_at=ts_from_pb(msg.created_at, msg.HasField("created_at")),
        updated_at=ts_from_pb(msg.updated_at, msg.HasField("updated_at")),
    )


def mounts_from_pb(mounts: Sequence[mount_pb2.Mount]) -> list[dict[str, Any]]:
    return [{"type": m.type, "source": m.source, "target": m.target, "options": list(m.options)} for m in mounts]


def mounts_to_pb(mounts: Sequence[Mapping[str, Any]]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.get("type", ""), source=m.get("source", ""), target=m.get("target", ""), options=list(m.get("options", ())))
        for m in mounts
    ]


def platform_to_pb(p: Platform) -> platform_pb2.Platform:
    return platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant)


def platform_from_pb(msg: platform_pb2.Platform) -> Platform:
    return Platform(msg.os, msg.architecture, msg.variant)


def event_to_pb(event: SandboxEvent) -> Message:
    msg: Message
    if event.topic == "/sandboxes/create":
        msg = events_pb.SandboxCreate(sandbox_id=event.sandbox_id)
    elif event.topic == "/sandboxes/start":
        msg = events_pb.SandboxStart(sandbox_id=event.sandbox_id)
    else:
        exit_msg = events_pb.SandboxExit(sandbox_id=event.sandbox_id, exit_status=event.exit_status)
        ts = ts_to_pb(event.exited_at)
        if ts is not None:
            exit_msg.exited_at.CopyFrom(ts)
        msg = exit_msg
    return msg
