"""ttrpc servicers for containerd.services.sandbox.v1 Store and Controller: decode, call,
encode. Errors cross as errdefs kinds. Controller calls pick the controller by the
request's ``sandboxer`` (empty: InvalidArgument; unknown: NotFound) and carry the call's
deadline into setup steps through ``contract.request_deadline``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moorage import errdefs
from moorage.api.containerd.services.sandbox.v1 import sandbox_pb2 as pb
from moorage.api.containerd.services.sandbox.v1.sandbox_ttrpc import ControllerServicer, StoreServicer
from moorage.api.containerd.types import metrics_pb2

from . import wire
from .contract import Controllers, CreateOptions, Store, request_deadline

if TYPE_CHECKING:
    from ttrpc.server import Context


class StoreService(StoreServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def Create(self, request: pb.StoreCreateRequest, ctx: Context) -> pb.StoreCreateResponse:
        created = await self.store.create(wire.sandbox_from_pb(request.sandbox))
        return pb.StoreCreateResponse(sandbox=wire.sandbox_to_pb(created))

    async def Update(self, request: pb.StoreUpdateRequest, ctx: Context) -> pb.StoreUpdateResponse:
        updated = await self.store.update(wire.sandbox_from_pb(request.sandbox), list(request.fields))
        return pb.StoreUpdateResponse(sandbox=wire.sandbox_to_pb(updated))

    async def Delete(self, request: pb.StoreDeleteRequest, ctx: Context) -> pb.StoreDeleteResponse:
        await self.store.delete(request.sandbox_id)
        return pb.StoreDeleteResponse()

    async def List(self, request: pb.StoreListRequest, ctx: Context) -> pb.StoreListResponse:
        records = await self.store.list(list(request.filters))
        return pb.StoreListResponse(list=[wire.sandbox_to_pb(r) for r in records])

    async def Get(self, request: pb.StoreGetRequest, ctx: Context) -> pb.StoreGetResponse:
        return pb.StoreGetResponse(sandbox=wire.sandbox_to_pb(await self.store.get(request.sandbox_id)))


class ControllerService(ControllerServicer):
    def __init__(self, controllers: Controllers) -> None:
        self.controllers = controllers

    async def Create(self, request: pb.ControllerCreateRequest, ctx: Context) -> pb.ControllerCreateResponse:
        controller = self.controllers.get(request.sandboxer)
        opts = CreateOptions(
            rootfs=wire.mounts_from_pb(request.rootfs),
            options=wire.any_from_pb(request.options, request.HasField("options")),
            netns_path=request.netns_path,
            annotations=dict(request.annotations),
            sandbox=wire.sandbox_from_pb(request.sandbox) if request.HasField("sandbox") else None,
        )
        token = request_deadline.set(ctx.deadline)
        try:
            await controller.create(request.sandbox_id, opts)
        finally:
            request_deadline.reset(token)
        return pb.ControllerCreateResponse(sandbox_id=request.sandbox_id)

    async def Start(self, request: pb.ControllerStartRequest, ctx: Context) -> pb.ControllerStartResponse:
        inst = await self.controllers.get(request.sandboxer).start(request.sandbox_id)
        resp = pb.ControllerStartResponse(
            sandbox_id=inst.sandbox_id, pid=inst.pid, labels=dict(inst.labels), address=inst.address, version=inst.version
        )
        ts = wire.ts_to_pb(inst.created_at)
        if ts is not None:
            resp.created_at.CopyFrom(ts)
        spec = wire.any_to_pb(inst.spec)
        if spec is not None:
            resp.spec.CopyFrom(spec)
        return resp

    async def Platform(self, request: pb.ControllerPlatformRequest, ctx: Context) -> pb.ControllerPlatformResponse:
        platform = await self.controllers.get(request.sandboxer).platform(request.sandbox_id)
        return pb.ControllerPlatformResponse(platform=wire.platform_to_pb(platform))

    async def Stop(self, request: pb.ControllerStopRequest, ctx: Context) -> pb.ControllerStopResponse:
        await self.controllers.get(request.sandboxer).stop(request.sandbox_id, request.timeout_secs)
        return pb.ControllerStopResponse()

    async def Wait(self, request: pb.ControllerWaitRequest, ctx: Context) -> pb.ControllerWaitResponse:
        status = await self.controllers.get(request.sandboxer).wait(request.sandbox_id)
        resp = pb.ControllerWaitResponse(exit_status=status.exit_status)
        ts = wire.ts_to_pb(status.exited_at)
        if ts is not None:
            resp.exited_at.CopyFrom(ts)
        return resp

    async def Status(self, request: pb.ControllerStatusRequest, ctx: Context) -> pb.ControllerStatusResponse:
        st = await self.controllers.get(request.sandboxer).status(request.sandbox_id, request.verbose)
        resp = pb.ControllerStatusResponse(
            sandbox_id=st.sandbox_id, pid=st.pid, state=st.state, info=dict(st.info), address=st.address, version=st.version
        )
        for field, ns in (("created_at", st.created_at), ("exited_at", st.exited_at)):
            ts = wire.ts_to_pb(ns)
            if ts is not None:
                getattr(resp, field).CopyFrom(ts)
        extra = wire.any_to_pb(st.extra)
        if extra is not None:
            resp.extra.CopyFrom(extra)
        return resp

    async def Shutdown(self, request: pb.ControllerShutdownRequest, ctx: Context) -> pb.ControllerShutdownResponse:
        await self.controllers.get(request.sandboxer).shutdown(request.sandbox_id)
        return pb.ControllerShutdownResponse()

    async def Metrics(self, request: pb.ControllerMetricsRequest, ctx: Context) -> pb.ControllerMetricsResponse:
        import time

        data = await self.controllers.get(request.sandboxer).metrics(request.sandbox_id)
        metric = metrics_pb2.Metric(id=request.sandbox_id)
        ts = wire.ts_to_pb(time.time_ns())
        if ts is not None:
            metric.timestamp.CopyFrom(ts)
        payload = wire.any_to_pb(data)
        if payload is not None:
            metric.data.CopyFrom(payload)
        return pb.ControllerMetricsResponse(metrics=metric)

    async def Update(self, request: pb.ControllerUpdateRequest, ctx: Context) -> pb.ControllerUpdateResponse:
        self.controllers.get(request.sandboxer)
        raise errdefs.NotImplemented("sandbox controller update is not supported")
