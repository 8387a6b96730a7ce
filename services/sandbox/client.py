"""Async clients implementing contract.Store and contract.Controller over ttrpc.

Each call carries the running call's namespace (:func:`moorage.namespaces.namespace`) in
metadata. ``ControllerClient`` is bound to one sandboxer name (a Controller for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from moorage.api.containerd.services.sandbox.v1 import sandbox_pb2 as pb
from moorage.api.containerd.services.sandbox.v1.sandbox_ttrpc import ControllerClient as _Controller
from moorage.api.containerd.services.sandbox.v1.sandbox_ttrpc import StoreClient as _Store
from moorage.namespaces import NAMESPACE_KEY, namespace

from . import wire
from .contract import (
    AnyValue,
    ControllerInstance,
    ControllerStatus,
    CreateOptions,
    ExitStatus,
    Platform,
    Sandbox,
)

if TYPE_CHECKING:
    from ttrpc.client import Client


def _md() -> dict[str, str]:
    return {NAMESPACE_KEY: namespace()}


class StoreClient:
    def __init__(self, client: Client) -> None:
        self._c = _Store(client)

    async def create(self, sandbox: Sandbox) -> Sandbox:
        resp = await self._c.Create(pb.StoreCreateRequest(sandbox=wire.sandbox_to_pb(sandbox)), metadata=_md())
        return wire.sandbox_from_pb(resp.sandbox)

    async def update(self, sandbox: Sandbox, fieldpaths: Sequence[str] = ()) -> Sandbox:
        req = pb.StoreUpdateRequest(sandbox=wire.sandbox_to_pb(sandbox), fields=list(fieldpaths))
        return wire.sandbox_from_pb((await self._c.Update(req, metadata=_md())).sandbox)

    async def get(self, sandbox_id: str) -> Sandbox:
        return wire.sandbox_from_pb((await self._c.Get(pb.StoreGetRequest(sandbox_id=sandbox_id), metadata=_md())).sandbox)

    async def list(self, filters: Sequence[str] = ()) -> list[Sandbox]:
        resp = await self._c.List(pb.StoreListRequest(filters=list(filters)), metadata=_md())
        return [wire.sandbox_from_pb(s) for s in resp.list]

    async def delete(self, sandbox_id: str) -> None:
        await self._c.Delete(pb.StoreDeleteRequest(sandbox_id=sandbox_id), metadata=_md())


class ControllerClient:
    def __init__(self, client: Client, sandboxer: str) -> None:
        self._c = _Controller(client)
        self.sandboxer = sandboxer

    async def create(self, sandbox_id: str, opts: CreateOptions) -> None:
        req = pb.ControllerCreateRequest(
            sandbox_id=sandbox_id,
            rootfs=wire.mounts_to_pb(opts.rootfs),
            netns_path=opts.netns_path,
            annotations=dict(opts.annotations),
            sandboxer=self.sandboxer,
        )
        options = wire.any_to_pb(opts.options)
        if options is not None:
            req.options.CopyFrom(options)
        if opts.sandbox is not None:
            req.sandbox.CopyFrom(wire.sandbox_to_pb(opts.sandbox))
        await self._c.Create(req, metadata=_md())

    async def start(self, sandbox_id: str) -> ControllerInstance:
        r = await self._c.Start(pb.ControllerStartRequest(sandbox_id=sandbox_id, sandboxer=self.sandboxer), metadata=_md())
        return ControllerInstance(
            sandbox_id=r.sandbox_id,
            pid=r.pid,
            created_at=wire.ts_from_pb(r.created_at, r.HasField("created_at")),
            labels=dict(r.labels),
            address=r.address,
            version=r.version,
            spec=wire.any_from_pb(r.spec, r.HasField("spec")),
        )

    async def platform(self, sandbox_id: str) -> Platform:
        r = await self._c.Platform(pb.ControllerPlatformRequest(sandbox_id=sandbox_id, sandboxer=self.sandboxer), metadata=_md())
        return wire.platform_from_pb(r.platform)

    async def stop(self, sandbox_id: str, timeout_secs: int = 0) -> None:
        req = pb.ControllerStopRequest(sandbox_id=sandbox_id, timeout_secs=timeout_secs, sandboxer=self.sandboxer)
        await self._c.Stop(req, metadata=_md())

    async def wait(self, sandbox_id: str) -> ExitStatus:
        r = await self._c.Wait(pb.ControllerWaitRequest(sandbox_id=sandbox_id, sandboxer=self.sandboxer), metadata=_md())
        return ExitStatus(r.exit_status, wire.ts_from_pb(r.exited_at, r.HasField("exited_at")))

    async def status(self, sandbox_id: str, verbose: bool = False) -> ControllerStatus:
        req = pb.ControllerStatusRequest(sandbox_id=sandbox_id, verbose=verbose, sandboxer=self.sandboxer)
        r = await self._c.Status(req, metadata=_md())
        return ControllerStatus(
            sandbox_id=r.sandbox_id,
            state=r.state,
            pid=r.pid,
            info=dict(r.info),
            created_at=wire.ts_from_pb(r.created_at, r.HasField("created_at")),
            exited_at=wire.ts_from_pb(r.exited_at, r.HasField("exited_at")),
            extra=wire.any_from_pb(r.extra, r.HasField("extra")),
            address=r.address,
            version=r.version,
        )

    async def shutdown(self, sandbox_id: str) -> None:
        await self._c.Shutdown(pb.ControllerShutdownRequest(sandbox_id=sandbox_id, sandboxer=self.sandboxer), metadata=_md())

    async def metrics(self, sandbox_id: str) -> AnyValue | None:
        r = await self._c.Metrics(pb.ControllerMetricsRequest(sandbox_id=sandbox_id, sandboxer=self.sandboxer), metadata=_md())
        return wire.any_from_pb(r.metrics.data, r.metrics.HasField("data"))
