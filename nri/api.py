"""The hook API servicer (moorage.nri.v1.Hooks): decode, call the adaptation, encode.

Errors cross as errdefs kinds: a plugin's error as Unknown naming the plugin, a conflict
between two plugins as Conflict naming both, an adjustment moorage cannot apply as
NotImplemented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moorage.api.moorage.nri.v1 import hooks_pb2 as pb
from moorage.api.moorage.nri.v1.hooks_ttrpc import HooksServicer
from moorage.api.nri.pkg.api import api_pb2 as api

from .adaptation import Adaptation
from .plugin import event_names

if TYPE_CHECKING:
    from ttrpc.server import Context


class HooksService(HooksServicer):
    def __init__(self, adaptation: Adaptation, remember_namespace: object = None) -> None:
        self.nri = adaptation
        self._remember = remember_namespace

    def _ns(self, container_id: str) -> None:
        if callable(self._remember) and container_id:
            self._remember(container_id)

    async def RunPodSandbox(self, request: api.RunPodSandboxRequest, ctx: Context) -> api.RunPodSandboxResponse:
        await self.nri.run_pod_sandbox(request.pod)
        return api.RunPodSandboxResponse()

    async def UpdatePodSandbox(self, request: api.UpdatePodSandboxRequest, ctx: Context) -> api.UpdatePodSandboxResponse:
        await self.nri.update_pod_sandbox(request)
        return api.UpdatePodSandboxResponse()

    async def PostUpdatePodSandbox(self, request: api.PostUpdatePodSandboxRequest,
                                   ctx: Context) -> api.PostUpdatePodSandboxResponse:
        await self.nri.post_update_pod_sandbox(request.pod)
        return api.PostUpdatePodSandboxResponse()

    async def StopPodSandbox(self, request: api.StopPodSandboxRequest, ctx: Context) -> api.StopPodSandboxResponse:
        await self.nri.stop_pod_sandbox(request.pod)
        return api.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: api.RemovePodSandboxRequest, ctx: Context) -> api.RemovePodSandboxResponse:
        await self.nri.remove_pod_sandbox(request.pod)
        return api.RemovePodSandboxResponse()

    async def CreateContainer(self, request: api.CreateContainerRequest, ctx: Context) -> api.CreateContainerResponse:
        self._ns(request.container.id)
        adjust = await self.nri.create_container(request.pod, request.container)
        return api.CreateContainerResponse(adjust=adjust)

    async def PostCreateContainer(self, request: api.PostCreateContainerRequest,
                                  ctx: Context) -> api.PostCreateContainerResponse:
        self._ns(request.container.id)
        await self.nri.post_create_container(request.pod, request.container)
        return api.PostCreateContainerResponse()

    async def StartContainer(self, request: api.StartContainerRequest, ctx: Context) -> api.StartContainerResponse:
        await self.nri.start_container(request.pod, request.container)
        return api.StartContainerResponse()

    async def PostStartContainer(self, request: api.PostStartContainerRequest,
                                 ctx: Context) -> api.PostStartContainerResponse:
        self._ns(request.container.id)
        await self.nri.post_start_container(request.pod, request.container)
        return api.PostStartContainerResponse()

    async def UpdateContainer(self, request: api.UpdateContainerRequest, ctx: Context) -> api.UpdateContainerResponse:
        own = await self.nri.update_container(request)
        return api.UpdateContainerResponse(update=[own] if own is not None else [])

    async def PostUpdateContainer(self, request: api.PostUpdateContainerRequest,
                                  ctx: Context) -> api.PostUpdateContainerResponse:
        await self.nri.post_update_container(request.pod, request.container)
        return api.PostUpdateContainerResponse()

    async def StopContainer(self, request: api.StopContainerRequest, ctx: Context) -> api.StopContainerResponse:
        await self.nri.stop_container(request.pod, request.container)
        return api.StopContainerResponse()

    async def RemoveContainer(self, request: api.RemoveContainerRequest, ctx: Context) -> api.RemoveContainerResponse:
        await self.nri.remove_container(request.pod, request.container)
        return api.RemoveContainerResponse()

    async def Synchronize(self, request: pb.SynchronizeRequest, ctx: Context) -> api.Empty:
        for c in request.containers:
            self._ns(c.id)
        self.nri.synchronize_state(request.pods, request.containers)
        return api.Empty()

    async def ListPlugins(self, request: pb.ListPluginsRequest, ctx: Context) -> pb.ListPluginsResponse:
        return pb.ListPluginsResponse(
            plugins=[
                pb.PluginInfo(
                    index=p.idx, name=p.name, events=p.events, event_names=event_names(p.events),
                    pid=p.pid, launched=p.was_launched, nri_version=p.nri_version,
                )
                for p in self.nri.list_plugins()
            ]
        )
