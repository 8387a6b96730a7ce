"""The async client of the hook API (moorage.nri.v1.Hooks), for the runtime and sandbox.

    hooks = NriHooks(ctx.proxy_address)          # one per process; connects lazily
    adjust = await hooks.create_container(spec, container_id=cid, name=name)
    apply_adjustment(spec, adjust)               # moorage.nri.adjust
    ...
    await hooks.post_create_container(spec, container_id=cid, pid=pid)
    await hooks.start_container(...); await hooks.post_start_container(...)
    await hooks.stop_container(...); await hooks.remove_container(...)
    await hooks.close()

Calls carry the caller's namespace (the ``current_namespace`` contextvar). With
``optional=True`` (the default) a suite without the nri process (the proxy answers
UNAVAILABLE or UNIMPLEMENTED for the service) is the same as no plugins: creates get an
empty adjustment, notifications do nothing. Errors plugins cause come back as errdefs kinds
(Unknown naming the plugin; Conflict naming two) and must fail the caller's operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from moorage import annotations as cri
from moorage import errdefs
from moorage.api.moorage.nri.v1 import hooks_pb2 as pb
from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.namespaces import NAMESPACE_KEY, current_namespace

from .adjust import resources_from_oci, resources_to_oci
from .convert import container_from_spec, pod_for

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from moorage.services.sandbox.contract import PodMeta
    from ttrpc.client import Client

    from moorage.api.moorage.nri.v1.hooks_ttrpc import HooksClient

SERVICE = "moorage.nri.v1.Hooks"
M = TypeVar("M")
Spec = Mapping[str, Any]


class NriHooks:
    def __init__(self, address: Path | str, *, optional: bool = True, timeout: float | None = 60.0) -> None:
        self.address = str(address)
        self.optional = optional
        self.timeout = timeout
        self._client: Client | None = None
        self._hooks: HooksClient | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> HooksClient:
        if self._hooks is not None and self._client is not None and not self._client.closed:
            return self._hooks
        async with self._lock:
            if self._hooks is None or self._client is None or self._client.closed:
                from moorage.api.moorage.nri.v1.hooks_ttrpc import HooksClient
                from moorage.rpc import connect

                self._client = await connect(self.address)
                self._hooks = HooksClient(self._client)
            return self._hooks

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _metadata(self) -> dict[str, str]:
        ns = current_namespace.get(None)
        return {NAMESPACE_KEY: ns} if ns else {}

    async def call(self, method: str, request: Message, default: M) -> M:
        """Call ``method``; ``default`` when the nri process is absent and ``optional``."""
        try:
            hooks = await self._get()
            fn = getattr(hooks, method)
            result: M = await fn(request, timeout=self.timeout, metadata=self._metadata())
            return result
        except (errdefs.Unavailable, errdefs.NotImplemented):
            if self.optional:
                return default
            raise

    def _container(self, spec: Spec, container_id: str, name: str, pod: api.PodSandbox | None,
                   labels: Mapping[str, str] | None, state: str, pid: int) -> tuple[api.PodSandbox, api.Container]:
        if pod is None:
            pod = pod_for(container_id, name, current_namespace.get(None) or "")
        c = container_from_spec(spec, container_id, name=name, pod_id=pod.id, labels=labels, state=state, pid=pid)
        return pod, c

    # containers ------------------------------------------------------------------------

    async def create_container(self, spec: Spec, *, container_id: str, name: str = "",
                               pod: api.PodSandbox | None = None,
                               labels: Mapping[str, str] | None = None) -> api.ContainerAdjustment:
        """The plugins' merged adjustment for the container ``spec`` describes."""
        p, c = self._container(spec, container_id, name, pod, labels, "", 0)
        resp = await self.call("CreateContainer", api.CreateContainerRequest(pod=p, container=c),
                               api.CreateContainerResponse())
        return resp.adjust

    async def _notify(self, method: str, request_type: Any, response: Any, spec: Spec, container_id: str,
                      name: str, pod: api.PodSandbox | None, labels: Mapping[str, str] | None,
                      state: str, pid: int) -> None:
        p, c = self._container(spec, container_id, name, pod, labels, state, pid)
        await self.call(method, request_type(pod=p, container=c), response)

    async def post_create_container(self, spec: Spec, *, container_id: str, name: str = "", pid: int = 0,
                                    pod: api.PodSandbox | None = None, labels: Mapping[str, str] | None = None) -> None:
        await self._notify("PostCreateContainer", api.PostCreateContainerRequest, api.PostCreateContainerResponse(),
                           spec, container_id, name, pod, labels, "created", pid)

    async def start_container(self, spec: Spec, *, container_id: str, name: str = "", pid: int = 0,
                              pod: api.PodSandbox | None = None, labels: Mapping[str, str] | None = None) -> None:
        await self._notify("StartContainer", api.StartContainerRequest, api.StartContainerResponse(),
                           spec, container_id, name, pod, labels, "created", pid)

    async def post_start_container(self, spec: Spec, *, container_id: str, name: str = "", pid: int = 0,
                                   pod: api.PodSandbox | None = None, labels: Mapping[str, str] | None = None) -> None:
        await self._notify("PostStartContainer", api.PostStartContainerRequest, api.PostStartContainerResponse(),
                           spec, container_id, name, pod, labels, "running", pid)

    async def update_container(self, spec: Spec, resources: Mapping[str, Any], *, container_id: str,
                               name: str = "", pod: api.PodSandbox | None = None,
                               labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The OCI resources to apply: ``resources`` unless plugins changed them."""
        p, c = self._container(spec, container_id, name, pod, labels, "running", 0)
        req = api.UpdateContainerRequest(pod=p, container=c, linux_resources=resources_from_oci(dict(resources)))
        resp = await self.call("UpdateContainer", req, api.UpdateContainerResponse())
        for u in resp.update:
            if u.container_id == container_id and u.linux.HasField("resources"):
                from .adjust import merge_oci_resources

                return merge_oci_resources(dict(resources), resources_to_oci(u.linux.resources))
        return dict(resources)

    async def post_update_container(self, spec: Spec, *, container_id: str, name: str = "", pid: int = 0,
                                    pod: api.PodSandbox | None = None, labels: Mapping[str, str] | None = None) -> None:
        await self._notify("PostUpdateContainer", api.PostUpdateContainerRequest, api.PostUpdateContainerResponse(),
                           spec, container_id, name, pod, labels, "running", pid)

    async def stop_container(self, spec: Spec, *, container_id: str, name: str = "", pid: int = 0,
                             pod: api.PodSandbox | None = None, labels: Mapping[str, str] | None = None) -> None:
        await self._notify("StopContainer", api.StopContainerRequest, api.StopContainerResponse(),
                           spec, container_id, name, pod, labels, "stopped", pid)

    async def remove_container(self, spec: Spec, *, container_id: str, name: str = "",
                               pod: api.PodSandbox | None = None, labels: Mapping[str, str] | None = None) -> None:
        await self._notify("RemoveContainer", api.RemoveContainerRequest, api.RemoveContainerResponse(),
                           spec, container_id, name, pod, labels, "stopped", 0)

    # pods ------------------------------------------------------------------------------

    async def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        await self.call("RunPodSandbox", api.RunPodSandboxRequest(pod=pod), api.RunPodSandboxResponse())

    async def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        await self.call("StopPodSandbox", api.StopPodSandboxRequest(pod=pod), api.StopPodSandboxResponse())

    async def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        await self.call("RemovePodSandbox", api.RemovePodSandboxRequest(pod=pod), api.RemovePodSandboxResponse())

    async def update_pod_sandbox(self, pod: api.PodSandbox, resources: Mapping[str, Any] | None = None,
                                 overhead: Mapping[str, Any] | None = None) -> None:
        req = api.UpdatePodSandboxRequest(pod=pod, linux_resources=resources_from_oci(dict(resources or {})),
                                          overhead_linux_resources=resources_from_oci(dict(overhead or {})))
        await self.call("UpdatePodSandbox", req, api.UpdatePodSandboxResponse())

    async def post_update_pod_sandbox(self, pod: api.PodSandbox) -> None:
        await self.call("PostUpdatePodSandbox", api.PostUpdatePodSandboxRequest(pod=pod),
                        api.PostUpdatePodSandboxResponse())

    async def synchronize(self, pods: list[api.PodSandbox], containers: list[api.Container]) -> None:
        await self.call("Synchronize", pb.SynchronizeRequest(pods=pods, containers=containers), api.Empty())

    async def list_plugins(self) -> list[pb.PluginInfo]:
        resp = await self.call("ListPlugins", pb.ListPluginsRequest(), pb.ListPluginsResponse())
        return list(resp.plugins)


class NriPodHooks:
    """The sandbox service's ``PodHooks`` (run/stop/remove) over :class:`NriHooks`.

    Each call sends the pod's id, name, namespace and uid (a CRI pod's, from the Create
    annotations; else the sandbox id and the containerd namespace), labels, annotations, IPs
    and network namespace path: RunPodSandbox (a plugin error fails the sandbox's creation),
    StopPodSandbox, RemovePodSandbox. Nothing is kept here: the sandbox service hands stop and
    remove what it gave run, from its records, so a restart in between changes nothing.
    Wiring: ``services/sandbox/process.py: pod_hooks`` returns ``NriPodHooks(ctx.proxy_address)``.
    """

    def __init__(self, address: Path | str, *, optional: bool = True) -> None:
        self.hooks = NriHooks(address, optional=optional)

    @staticmethod
    def _pod(sandbox_id: str, network: Any, meta: PodMeta) -> api.PodSandbox:
        notes = meta.annotations
        pod = api.PodSandbox(id=sandbox_id, name=notes.get(cri.SANDBOX_NAME) or sandbox_id,
                             namespace=notes.get(cri.SANDBOX_NAMESPACE) or current_namespace.get(None) or "",
                             uid=notes.get(cri.SANDBOX_UID, ""), labels=dict(meta.labels),
                             annotations=dict(notes), ips=list(getattr(network, "ips", ()) or ()))
        netns = getattr(network, "netns_path", "")
        if netns:
            pod.linux.namespaces.add(type="network", path=netns)
        return pod

    async def run(self, sandbox_id: str, network: Any, meta: PodMeta) -> None:
        await self.hooks.run_pod_sandbox(self._pod(sandbox_id, network, meta))

    async def stop(self, sandbox_id: str, network: Any, meta: PodMeta) -> None:
        await self.hooks.stop_pod_sandbox(self._pod(sandbox_id, network, meta))

    async def remove(self, sandbox_id: str, network: Any, meta: PodMeta) -> None:
        await self.hooks.remove_pod_sandbox(self._pod(sandbox_id, network, meta))

    async def close(self) -> None:
        await self.hooks.close()
