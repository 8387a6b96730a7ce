"""The snapshots and diff contracts over ttrpc (containerd's snapshots/proxy and diff/proxy).

``RemoteSnapshotters(client).get(name)`` returns a ``RemoteSnapshotter`` that names
``name`` in every request (the server validates it). The namespace of the calling context
travels as ``containerd-namespace-ttrpc`` metadata (none when unset: the server answers
FailedPrecondition).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2, field_mask_pb2

from moorage.api.containerd.services.diff.v1 import diff_pb2 as dpb
from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from moorage.leasing import call_metadata

from . import wire
from .contract import SNAPSHOTTERS, Descriptor, Info, Mount, Usage

if TYPE_CHECKING:
    from ttrpc.client import Client

SERVICE = wire.SNAPSHOTS


_metadata = call_metadata
"""The namespace and the lease of the calling context travel on every call."""


class RemoteSnapshotter:
    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    async def stat(self, key: str) -> Info:
        resp = await self.client.unary(
            SERVICE, "Stat", pb.StatSnapshotRequest(snapshotter=self.name, key=key),
            pb.StatSnapshotResponse, metadata=_metadata(),
        )
        return wire.info_from_pb(resp.info)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        req = pb.UpdateSnapshotRequest(
            snapshotter=self.name,
            info=wire.info_to_pb(info),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        resp = await self.client.unary(
            SERVICE, "Update", req, pb.UpdateSnapshotResponse, metadata=_metadata()
        )
        return wire.info_from_pb(resp.info)

    async def usage(self, key: str) -> Usage:
        resp = await self.client.unary(
            SERVICE, "Usage", pb.UsageRequest(snapshotter=self.name, key=key),
            pb.UsageResponse, metadata=_metadata(),
        )
        return wire.usage_from_pb(resp)

    async def mounts(self, key: str) -> list[Mount]:
        resp = await self.client.unary(
            SERVICE, "Mounts", pb.MountsRequest(snapshotter=self.name, key=key),
            pb.MountsResponse, metadata=_metadata(),
        )
        return wire.mounts_from_pb(resp.mounts)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        req = pb.PrepareSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        resp = await self.client.unary(
            SERVICE, "Prepare", req, pb.PrepareSnapshotResponse, metadata=_metadata()
        )
        return wire.mounts_from_pb(resp.mounts)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        req = pb.ViewSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        resp = await self.client.unary(
            SERVICE, "View", req, pb.ViewSnapshotResponse, metadata=_metadata()
        )
        return wire.mounts_from_pb(resp.mounts)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        req = pb.CommitSnapshotRequest(
            snapshotter=self.name, name=name, key=key, labels=dict(labels or {})
        )
        await self.client.unary(SERVICE, "Commit", req, empty_pb2.Empty, metadata=_metadata())

    async def remove(self, key: str) -> None:
        req = pb.RemoveSnapshotRequest(snapshotter=self.name, key=key)
        await self.client.unary(SERVICE, "Remove", req, empty_pb2.Empty, metadata=_metadata())

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        req = pb.ListSnapshotsRequest(snapshotter=self.name, filters=list(filters))
        async for resp in self.client.server_stream(
            SERVICE, "List", req, pb.ListSnapshotsResponse, metadata=_metadata()
        ):
            for m in resp.info:
                yield wire.info_from_pb(m)

    async def cleanup(self) -> None:
        req = pb.CleanupRequest(snapshotter=self.name)
        await self.client.unary(SERVICE, "Cleanup", req, empty_pb2.Empty, metadata=_metadata())


class RemoteSnapshotters:
    def __init__(self, client: Client) -> None:
        self.client = client

    def get(self, name: str) -> RemoteSnapshotter:
        return RemoteSnapshotter(self.client, name)

    def names(self) -> Sequence[str]:
        return SNAPSHOTTERS


class RemoteDiffer:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], sync_fs: bool = False
    ) -> Descriptor:
        req = dpb.ApplyRequest(
            diff=wire.desc_to_pb(desc), mounts=wire.mounts_to_pb(mounts), sync_fs=sync_fs
        )
        resp = await self.client.unary(
            wire.DIFF, "Apply", req, dpb.ApplyResponse, metadata=_metadata()
        )
        return wire.desc_from_pb(resp.applied)

    async def diff(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        req = dpb.DiffRequest(
            left=wire.mounts_to_pb(lower),
            right=wire.mounts_to_pb(upper),
            media_type=media_type,
            ref=ref,
            labels=dict(labels or {}),
        )
        resp = await self.client.unary(wire.DIFF, "Diff", req, dpb.DiffResponse, metadata=_metadata())
        return wire.desc_from_pb(resp.diff)
