"""ttrpc servicers for containerd.services.snapshots.v1.Snapshots and diff.v1.Diff:
decode, call the store or differ, encode. Errors cross as errdefs kinds.

The snapshotter is chosen per call by the request's ``snapshotter`` field (empty ->
InvalidArgument "snapshotter argument missing"; unknown -> "snapshotter not loaded").
Publishes /snapshot/prepare, /snapshot/commit and /snapshot/remove after success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from moorage import errdefs
from moorage.api.containerd.events import snapshot_pb2 as events_pb
from moorage.api.containerd.services.diff.v1 import diff_pb2 as dpb
from moorage.api.containerd.services.diff.v1.diff_ttrpc import DiffServicer
from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from moorage.api.containerd.services.snapshots.v1.snapshots_ttrpc import SnapshotsServicer

from . import wire
from .contract import Differ, Snapshotters

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from moorage.registry import RawService
    from ttrpc.server import Context

    from moorage.events import EventPublisher
    from moorage.leasing import Recorder
    from ttrpc.server import RawCall

LIST_BATCH = 100


class SnapshotsService(SnapshotsServicer):  # type: ignore[misc, unused-ignore]
    def __init__(
        self,
        snapshotters: Snapshotters,
        publisher: EventPublisher | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.snapshotters = snapshotters
        self.publisher = publisher
        self.recorder = recorder
        """Holds snapshots made under a call's ``containerd-lease`` (None: not recorded), as
        containerd's metadata store: Prepare and View hold the key (and the parent, which
        containerd's single transaction protects and our separate calls must hold), Commit
        holds the name and lets the active key go, Remove lets the key go. Held before the
        snapshot exists, so a collection never sees it unheld."""

    async def _hold(self, snapshotter: str, *keys: str) -> None:
        if self.recorder is not None:
            for key in keys:
                if key:
                    await self.recorder.add(f"snapshots/{snapshotter}", key)

    async def _release(self, snapshotter: str, key: str) -> None:
        if self.recorder is not None:
            await self.recorder.remove(f"snapshots/{snapshotter}", key)

    def raw(self) -> RawService:
        """``moorage.internal.v1.SnapshotsSweep`` (see wire.SWEEP)."""
        from moorage.registry import RawService

        return RawService(wire.SWEEP, {"Remove": self.sweep_raw})

    async def sweep_raw(self, ctx: Context, call: RawCall) -> None:
        import msgpack

        req = msgpack.unpackb(call.payload) if call.payload else {}
        if not isinstance(req, dict):
            raise errdefs.InvalidArgument("sweep: a map is expected")
        keys = req.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise errdefs.InvalidArgument("sweep: keys must be a list of strings")
        sn = self.snapshotters.get(str(req.get("snapshotter", "")))
        remove_many = getattr(sn, "remove_many", None)
        if remove_many is None:
            raise errdefs.NotImplemented("sweep: this snapshotter removes one snapshot at a time")
        removed, errors = await remove_many(keys)
        await call.respond(msgpack.packb({"removed": removed, "errors": errors}))

    async def _publish(self, topic: str, event: Message) -> None:
        if self.publisher is not None:
            await self.publisher.publish(topic, event)

    async def Prepare(
        self, request: pb.PrepareSnapshotRequest, ctx: Context
    ) -> pb.PrepareSnapshotResponse:
        sn = self.snapshotters.get(request.snapshotter)
        await self._hold(request.snapshotter, request.parent, request.key)
        mounts = await sn.prepare(request.key, request.parent, dict(request.labels))
        await self._publish(
            "/snapshot/prepare",
            events_pb.SnapshotPrepare(
                key=request.key, parent=request.parent, snapshotter=request.snapshotter
            ),
        )
        return pb.PrepareSnapshotResponse(mounts=wire.mounts_to_pb(mounts))

    async def View(self, request: pb.ViewSnapshotRequest, ctx: Context) -> pb.ViewSnapshotResponse:
        sn = self.snapshotters.get(request.snapshotter)
        await self._hold(request.snapshotter, request.parent, request.key)
        mounts = await sn.view(request.key, request.parent, dict(request.labels))
        return pb.ViewSnapshotResponse(mounts=wire.mounts_to_pb(mounts))

    async def Mounts(self, request: pb.MountsRequest, ctx: Context) -> pb.MountsResponse:
        mounts = await self.snapshotters.get(request.snapshotter).mounts(request.key)
        return pb.MountsResponse(mounts=wire.mounts_to_pb(mounts))

    async def Commit(self, request: pb.CommitSnapshotRequest, ctx: Context) -> empty_pb2.Empty:
        sn = self.snapshotters.get(request.snapshotter)
        await self._hold(request.snapshotter, request.name)
        await sn.commit(request.name, request.key, dict(request.labels))
        await self._release(request.snapshotter, request.key)
        await self._publish(
            "/snapshot/commit",
            events_pb.SnapshotCommit(
                key=request.key, name=request.name, snapshotter=request.snapshotter
            ),
        )
        return empty_pb2.Empty()

    async def Remove(self, request: pb.RemoveSnapshotRequest, ctx: Context) -> empty_pb2.Empty:
        await self.snapshotters.get(request.snapshotter).remove(request.key)
        await self._release(request.snapshotter, request.key)
        await self._publish(
            "/snapshot/remove",
            events_pb.SnapshotRemove(key=request.key, snapshotter=request.snapshotter),
        )
        return empty_pb2.Empty()

    async def Stat(self, request: pb.StatSnapshotRequest, ctx: Context) -> pb.StatSnapshotResponse:
        info = await self.snapshotters.get(request.snapshotter).stat(request.key)
        return pb.StatSnapshotResponse(info=wire.info_to_pb(info))

    async def Update(
        self, request: pb.UpdateSnapshotRequest, ctx: Context
    ) -> pb.UpdateSnapshotResponse:
        sn = self.snapshotters.get(request.snapshotter)
        info = await sn.update(wire.info_from_pb(request.info), list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=wire.info_to_pb(info))

    async def List(
        self, request: pb.ListSnapshotsRequest, ctx: Context
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        sn = self.snapshotters.get(request.snapshotter)
        batch: list[pb.Info] = []
        async for info in sn.walk(list(request.filters)):
            batch.append(wire.info_to_pb(info))
            if len(batch) >= LIST_BATCH:
                yield pb.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield pb.ListSnapshotsResponse(info=batch)

    async def Usage(self, request: pb.UsageRequest, ctx: Context) -> pb.UsageResponse:
        usage = await self.snapshotters.get(request.snapshotter).usage(request.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def Cleanup(self, request: pb.CleanupRequest, ctx: Context) -> empty_pb2.Empty:
        await self.snapshotters.get(request.snapshotter).cleanup()
        return empty_pb2.Empty()


class DiffService(DiffServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, differ: Differ) -> None:
        self.differ = differ

    async def Apply(self, request: dpb.ApplyRequest, ctx: Context) -> dpb.ApplyResponse:
        applied = await self.differ.apply(
            wire.desc_from_pb(request.diff), wire.mounts_from_pb(request.mounts), request.sync_fs
        )
        return dpb.ApplyResponse(applied=wire.desc_to_pb(applied))

    async def Diff(self, request: dpb.DiffRequest, ctx: Context) -> dpb.DiffResponse:
        desc = await self.differ.diff(
            wire.mounts_from_pb(request.left),
            wire.mounts_from_pb(request.right),
            request.media_type,
            request.ref,
            dict(request.labels),
        )
        return dpb.DiffResponse(diff=wire.desc_to_pb(desc))
