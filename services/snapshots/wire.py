"""Conversions between the contract's plain types and containerd's protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable

from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from moorage.api.containerd.types import descriptor_pb2, mount_pb2

from .contract import Descriptor, Info, Kind, Mount, Usage

SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"
DIFF = "containerd.services.diff.v1.Diff"
SWEEP = "moorage.internal.v1.SnapshotsSweep"
"""moorage's own (not containerd's): ``Remove`` removes many snapshots of the call's namespace
at once for the garbage collector, in the order given (children first). msgpack in
``{"snapshotter": name, "keys": [...]}``, out ``{"removed": [...], "errors": {key: message}}``;
a missing key is in neither. No events (containerd's collector publishes none)."""


def info_to_pb(info: Info) -> pb.Info:
    m = pb.Info(name=info.name, parent=info.parent, kind=int(info.kind), labels=dict(info.labels))  # type: ignore[arg-type]
    m.created_at.FromNanoseconds(info.created_at)
    m.updated_at.FromNanoseconds(info.updated_at)
    return m


def info_from_pb(m: pb.Info) -> Info:
    return Info(
        name=m.name,
        kind=Kind(m.kind) if m.kind in (0, 1, 2, 3) else Kind.UNKNOWN,
        parent=m.parent,
        labels=dict(m.labels),
        created_at=m.created_at.ToNanoseconds(),
        updated_at=m.updated_at.ToNanoseconds(),
    )


def mounts_to_pb(mounts: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


def mounts_from_pb(mounts: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in mounts]


def usage_from_pb(m: pb.UsageResponse) -> Usage:
    return Usage(size=m.size, inodes=m.inodes)


def desc_to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )


def desc_from_pb(m: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(m.media_type, m.digest, m.size, dict(m.annotations))
