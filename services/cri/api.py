"""runtime.v1.RuntimeService: decode the CRI message, call the runtime, encode the answer.

Every call runs in the configured containerd namespace (``k8s.io``); errors cross as errdefs
kinds (the gRPC front door maps them to gRPC status codes). Exec, Attach and PortForward
answer with a URL of the streaming server (the streaming package serves it).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

from moorage.api.k8s.cri.v1 import api_pb2 as cri
from moorage.api.k8s.cri.v1.api_ttrpc import RuntimeServiceServicer
from moorage.errdefs import FailedPrecondition, InvalidArgument
from moorage.namespaces import current_namespace

from .config import CriConfig
from .contract import (
    Container,
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerState,
    ContainerStats,
    Device,
    DNSConfig,
    Mount,
    MountPropagation,
    NamespaceMode,
    NamespaceOptions,
    Pod,
    PodConfig,
    PodFilter,
    PodMetadata,
    PodState,
    PodStats,
    PortMapping,
    Resources,
    SecurityContext,
    Usage,
)
from .store import CriRuntime

if TYPE_CHECKING:
    from ttrpc.server import Context

R = TypeVar("R")
RUNTIME_NAME = "moorage"
RUNTIME_API_VERSION = "v1"
KUBE_API_VERSION = "0.1.0"
PROTOCOLS = {cri.TCP: "tcp", cri.UDP: "udp", cri.SCTP: "sctp"}


class Streaming(Protocol):
    """The streaming server's URL makers (services/cri/streaming)."""

    def exec_url(self, container_id: str, cmd: list[str], tty: bool, stdin: bool, stdout: bool,
                 stderr: bool) -> str: ...
    def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str: ...
    def port_forward_url(self, pod_sandbox_id: str, ports: list[int]) -> str: ...


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("moorage")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0.0.0"


# decode -------------------------------------------------------------------------------------


def _ns_options(m: cri.NamespaceOption) -> NamespaceOptions:
    return NamespaceOptions(NamespaceMode(m.network), NamespaceMode(m.pid), NamespaceMode(m.ipc), m.target_id)


def pod_config(m: cri.PodSandboxConfig) -> PodConfig:
    md = m.metadata
    sc = m.linux.security_context
    return PodConfig(
        metadata=PodMetadata(md.name, md.uid, md.namespace, md.attempt),
        hostname=m.hostname,
        log_directory=m.log_directory,
        dns=DNSConfig(tuple(m.dns_config.servers), tuple(m.dns_config.searches), tuple(m.dns_config.options))
        if m.HasField("dns_config") else None,
        port_mappings=tuple(PortMapping(p.container_port, p.host_port, PROTOCOLS.get(p.protocol, "tcp"), p.host_ip)
                            for p in m.port_mappings),
        labels=dict(m.labels),
        annotations=dict(m.annotations),
        cgroup_parent=m.linux.cgroup_parent,
        sysctls=dict(m.linux.sysctls),
        namespaces=_ns_options(sc.namespace_options),
        privileged=sc.privileged,
        readonly_rootfs=sc.readonly_rootfs,
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        supplemental_groups=tuple(sc.supplemental_groups),
    )


def resources(m: cri.LinuxContainerResources) -> Resources:
    return Resources(m.cpu_period, m.cpu_quota, m.cpu_shares, m.memory_limit_in_bytes, m.oom_score_adj,
                     m.cpuset_cpus, m.cpuset_mems, m.memory_swap_limit_in_bytes)


def _seccomp(p: cri.SecurityProfile, legacy: str) -> str:
    if p.profile_type == cri.SecurityProfile.Localhost:
        return "localhost/" + p.localhost_ref
    if p.profile_type == cri.SecurityProfile.RuntimeDefault:
        return "runtime/default"
    return "unconfined"


def container_config(m: cri.ContainerConfig) -> ContainerConfig:
    sc = m.linux.security_context
    security = SecurityContext(
        add_capabilities=tuple(sc.capabilities.add_capabilities),
        drop_capabilities=tuple(sc.capabilities.drop_capabilities),
        privileged=sc.privileged,
        namespaces=_ns_options(sc.namespace_options),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username,
        readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=tuple(sc.supplemental_groups),
        no_new_privs=sc.no_new_privs,
        masked_paths=tuple(sc.masked_paths) if sc.masked_paths else None,
        readonly_paths=tuple(sc.readonly_paths) if sc.readonly_paths else None,
        seccomp=_seccomp(sc.seccomp, sc.seccomp_profile_path) if sc.HasField("seccomp") else sc.seccomp_profile_path,
    )
    envs = []
    for kv in m.envs:
        if not kv.key:
            raise InvalidArgument("container env: empty key")
        envs.append((kv.key, kv.value.decode("utf-8", "surrogateescape") if isinstance(kv.value, bytes) else str(kv.value)))
    return ContainerConfig(
        metadata=ContainerMetadata(m.metadata.name, m.metadata.attempt),
        image=m.image.image,
        command=tuple(m.command),
        args=tuple(m.args),
        working_dir=m.working_dir,
        envs=tuple(envs),
        mounts=tuple(Mount(x.container_path, x.host_path, x.readonly, MountPropagation(x.propagation))
                     for x in m.mounts),
        devices=tuple(Device(d.container_path, d.host_path, d.permissions or "rwm") for d in m.devices),
        labels=dict(m.labels),
        annotations=dict(m.annotations),
        log_path=m.log_path,
        stdin=m.stdin,
        stdin_once=m.stdin_once,
        tty=m.tty,
        resources=resources(m.linux.resources) if m.linux.HasField("resources") else None,
        security=security,
        stop_signal=cri.Signal.Name(m.stop_signal).removeprefix("SIGNAL_") if m.stop_signal else "",
    )


# encode -------------------------------------------------------------------------------------


def _pod_md(p: Pod) -> cri.PodSandboxMetadata:
    md = p.config.metadata
    return cri.PodSandboxMetadata(name=md.name, uid=md.uid, namespace=md.namespace, attempt=md.attempt)


def pod_pb(p: Pod) -> cri.PodSandbox:
    return cri.PodSandbox(id=p.id, metadata=_pod_md(p), state=int(p.state), created_at=p.created_at,  # type: ignore[arg-type]
                          labels=dict(p.config.labels), annotations=dict(p.config.annotations),
                          runtime_handler=p.runtime_handler)


def pod_status_pb(p: Pod) -> cri.PodSandboxStatus:
    ns = p.config.namespaces
    st = cri.PodSandboxStatus(
        id=p.id, metadata=_pod_md(p), state=int(p.state), created_at=p.created_at,  # type: ignore[arg-type]
        labels=dict(p.config.labels), annotations=dict(p.config.annotations), runtime_handler=p.runtime_handler)
    st.network.ip = p.ip if p.state == PodState.READY or p.ip else ""
    st.network.additional_ips.extend(cri.PodIP(ip=ip) for ip in p.additional_ips)
    opts = st.linux.namespaces.options
    opts.network, opts.pid, opts.ipc, opts.target_id = int(ns.network), int(ns.pid), int(ns.ipc), ns.target_id  # type: ignore[assignment]
    return st


def _image_spec(c: Container) -> cri.ImageSpec:
    return cri.ImageSpec(image=c.image_ref, user_specified_image=c.config.image)


def container_pb(c: Container) -> cri.Container:
    return cri.Container(
        id=c.id, pod_sandbox_id=c.pod_id,
        metadata=cri.ContainerMetadata(name=c.config.metadata.name, attempt=c.config.metadata.attempt),
        image=_image_spec(c), image_ref=c.image_id, state=int(c.state), created_at=c.created_at,  # type: ignore[arg-type]
        labels=dict(c.config.labels), annotations=dict(c.config.annotations), image_id=c.image_id)


def container_status_pb(c: Container) -> cri.ContainerStatus:
    st = cri.ContainerStatus(
        id=c.id, metadata=cri.ContainerMetadata(name=c.config.metadata.name, attempt=c.config.metadata.attempt),
        state=int(c.state), created_at=c.created_at, started_at=c.started_at,  # type: ignore[arg-type]
        finished_at=c.finished_at, exit_code=c.exit_code, image=_image_spec(c), image_ref=c.image_digest or c.image_id,
        reason=c.reason, message=c.message, labels=dict(c.config.labels),
        annotations=dict(c.config.annotations), log_path=c.log_path, image_id=c.image_id)
    for m in c.config.mounts:
        st.mounts.add(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly,
                      propagation=int(m.propagation))
    r = c.config.resources
    if r is not None:
        st.resources.linux.CopyFrom(cri.LinuxContainerResources(
            cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
            memory_limit_in_bytes=r.memory_limit_in_bytes, oom_score_adj=r.oom_score_adj,
            cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
            memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes))
    return st


def _cpu(u: Usage) -> cri.CpuUsage:
    return cri.CpuUsage(timestamp=u.timestamp, usage_core_nano_seconds=cri.UInt64Value(value=u.counters.cpu_ns))


def _memory(u: Usage) -> cri.MemoryUsage:
    c = u.counters
    return cri.MemoryUsage(
        timestamp=u.timestamp, working_set_bytes=cri.UInt64Value(value=c.memory_working_set),
        usage_bytes=cri.UInt64Value(value=c.memory_usage), rss_bytes=cri.UInt64Value(value=c.memory_rss),
        page_faults=cri.UInt64Value(value=c.page_faults), major_page_faults=cri.UInt64Value(value=c.major_page_faults))


def container_stats_pb(s: ContainerStats) -> cri.ContainerStats:
    return cri.ContainerStats(
        attributes=cri.ContainerAttributes(id=s.id, metadata=cri.ContainerMetadata(name=s.name, attempt=s.attempt),
                                           labels=dict(s.labels), annotations=dict(s.annotations)),
        cpu=_cpu(s.usage), memory=_memory(s.usage),
        writable_layer=cri.FilesystemUsage(timestamp=s.usage.timestamp, used_bytes=cri.UInt64Value(value=s.writable_bytes),
                                           inodes_used=cri.UInt64Value(value=s.writable_inodes)))


def pod_stats_pb(s: PodStats) -> cri.PodSandboxStats:
    p = s.pod
    out = cri.PodSandboxStats(attributes=cri.PodSandboxAttributes(
        id=p.id, metadata=_pod_md(p), labels=dict(p.config.labels), annotations=dict(p.config.annotations)))
    out.linux.cpu.CopyFrom(_cpu(s.usage))
    out.linux.memory.CopyFrom(_memory(s.usage))
    out.linux.containers.extend(container_stats_pb(c) for c in s.containers)
    return out


def _labels(m: Mapping[str, str]) -> dict[str, str]:
    return dict(m)


# the servicer -------------------------------------------------------------------------------


class RuntimeService(RuntimeServiceServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, runtime: CriRuntime, cfg: CriConfig, streaming: Streaming | None = None,
                 network_ready: Callable[[], tuple[bool, str]] | None = None) -> None:
        self.rt = runtime
        self.cfg = cfg
        self.streaming = streaming
        self.network_ready = network_ready or (lambda: cni_ready(cfg.cni_conf_dir))
        self.pod_cidr = ""

    async def _in_ns(self, fn: Callable[[], Awaitable[R]]) -> R:
        token = current_namespace.set(self.cfg.namespace)
        try:
            return await fn()
        finally:
            current_namespace.reset(token)

    async def Version(self, request: cri.VersionRequest, ctx: Context) -> cri.VersionResponse:
        return cri.VersionResponse(version=KUBE_API_VERSION, runtime_name=RUNTIME_NAME,
                                   runtime_version=_version(), runtime_api_version=RUNTIME_API_VERSION)

    async def Status(self, request: cri.StatusRequest, ctx: Context) -> cri.StatusResponse:
        ok, why = self.network_ready()
        conds = [cri.RuntimeCondition(type="RuntimeReady", status=True),
                 cri.RuntimeCondition(type="NetworkReady", status=ok, reason="" if ok else "NetworkPluginNotReady",
                                      message="" if ok else why)]
        resp = cri.StatusResponse(status=cri.RuntimeStatus(conditions=conds))
        resp.runtime_handlers.add(name="")
        for handler in sorted(self.cfg.runtime_handlers):
            resp.runtime_handlers.add(name=handler)
        return resp

    async def RuntimeConfig(self, request: cri.RuntimeConfigRequest, ctx: Context) -> cri.RuntimeConfigResponse:
        return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=cri.CGROUPFS))

    async def UpdateRuntimeConfig(self, request: cri.UpdateRuntimeConfigRequest,
                                  ctx: Context) -> cri.UpdateRuntimeConfigResponse:
        self.pod_cidr = request.runtime_config.network_config.pod_cidr
        return cri.UpdateRuntimeConfigResponse()

    # pods

    async def RunPodSandbox(self, request: cri.RunPodSandboxRequest, ctx: Context) -> cri.RunPodSandboxResponse:
        config = pod_config(request.config)
        id = await self._in_ns(lambda: self.rt.run_pod(config, request.runtime_handler))
        return cri.RunPodSandboxResponse(pod_sandbox_id=id)

    async def StopPodSandbox(self, request: cri.StopPodSandboxRequest, ctx: Context) -> cri.StopPodSandboxResponse:
        await self._in_ns(lambda: self.rt.stop_pod(request.pod_sandbox_id))
        return cri.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: cri.RemovePodSandboxRequest,
                               ctx: Context) -> cri.RemovePodSandboxResponse:
        await self._in_ns(lambda: self.rt.remove_pod(request.pod_sandbox_id))
        return cri.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request: cri.PodSandboxStatusRequest,
                               ctx: Context) -> cri.PodSandboxStatusResponse:
        p = await self.rt.pod(request.pod_sandbox_id)
        resp = cri.PodSandboxStatusResponse(status=pod_status_pb(p))
        if request.verbose:
            import json

            resp.info["info"] = json.dumps({"pid": p.pause_pid, "netns_path": p.netns_path, "cgroup": p.cgroup_path,
                                            "sandbox_info": p.info})
        return resp

    async def ListPodSandbox(self, request: cri.ListPodSandboxRequest, ctx: Context) -> cri.ListPodSandboxResponse:
        flt = None
        if request.HasField("filter"):
            f = request.filter
            flt = PodFilter(f.id, PodState(f.state.state) if f.HasField("state") else None, _labels(f.label_selector))
        return cri.ListPodSandboxResponse(items=[pod_pb(p) for p in await self.rt.list_pods(flt)])

    # containers

    async def CreateContainer(self, request: cri.CreateContainerRequest,
                              ctx: Context) -> cri.CreateContainerResponse:
        config = container_config(request.config)
        id = await self._in_ns(lambda: self.rt.create_container(request.pod_sandbox_id, config))
        return cri.CreateContainerResponse(container_id=id)

    async def StartContainer(self, request: cri.StartContainerRequest, ctx: Context) -> cri.StartContainerResponse:
        await self._in_ns(lambda: self.rt.start_container(request.container_id))
        return cri.StartContainerResponse()

    async def StopContainer(self, request: cri.StopContainerRequest, ctx: Context) -> cri.StopContainerResponse:
        await self._in_ns(lambda: self.rt.stop_container(request.container_id, float(max(request.timeout, 0))))
        return cri.StopContainerResponse()

    async def RemoveContainer(self, request: cri.RemoveContainerRequest,
                              ctx: Context) -> cri.RemoveContainerResponse:
        await self._in_ns(lambda: self.rt.remove_container(request.container_id))
        return cri.RemoveContainerResponse()

    async def ListContainers(self, request: cri.ListContainersRequest, ctx: Context) -> cri.ListContainersResponse:
        flt = None
        if request.HasField("filter"):
            f = request.filter
            flt = ContainerFilter(f.id, ContainerState(f.state.state) if f.HasField("state") else None,
                                  f.pod_sandbox_id, _labels(f.label_selector))
        return cri.ListContainersResponse(containers=[container_pb(c) for c in await self.rt.list_containers(flt)])

    async def ContainerStatus(self, request: cri.ContainerStatusRequest,
                              ctx: Context) -> cri.ContainerStatusResponse:
        c = await self.rt.container(request.container_id)
        resp = cri.ContainerStatusResponse(status=container_status_pb(c))
        if request.verbose:
            import json

            resp.info["info"] = json.dumps({"pid": c.pid, "sandboxID": c.pod_id, "cgroup": c.cgroup_path})
        return resp

    async def UpdateContainerResources(self, request: cri.UpdateContainerResourcesRequest,
                                       ctx: Context) -> cri.UpdateContainerResourcesResponse:
        r = resources(request.linux)
        await self._in_ns(lambda: self.rt.update_resources(request.container_id, r))
        return cri.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(self, request: cri.ReopenContainerLogRequest,
                                 ctx: Context) -> cri.ReopenContainerLogResponse:
        await self._in_ns(lambda: self.rt.reopen_log(request.container_id))
        return cri.ReopenContainerLogResponse()

    async def ExecSync(self, request: cri.ExecSyncRequest, ctx: Context) -> cri.ExecSyncResponse:
        timeout = float(request.timeout)
        left = ctx.time_remaining() if hasattr(ctx, "time_remaining") else None
        if left is not None and (timeout <= 0 or left < timeout):
            timeout = max(left - 0.5, 0.001)
        r = await self._in_ns(lambda: self.rt.exec_sync(request.container_id, tuple(request.cmd), timeout))
        return cri.ExecSyncResponse(stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code)

    def _streaming(self) -> Streaming:
        if self.streaming is None:
            raise FailedPrecondition("the streaming server is not running")
        return self.streaming

    async def _running(self, container_id: str) -> Container:
        c = await self.rt.container(container_id)
        if c.state != ContainerState.RUNNING:
            raise FailedPrecondition(f'container "{c.id}" is not running')
        return c

    async def Exec(self, request: cri.ExecRequest, ctx: Context) -> cri.ExecResponse:
        c = await self._running(request.container_id)
        if not request.cmd:
            raise InvalidArgument("exec: a command is required")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        url = self._streaming().exec_url(c.id, list(request.cmd), request.tty, request.stdin, request.stdout,
                                         request.stderr)
        return cri.ExecResponse(url=url)

    async def Attach(self, request: cri.AttachRequest, ctx: Context) -> cri.AttachResponse:
        c = await self._running(request.container_id)
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        url = self._streaming().attach_url(c.id, request.tty, request.stdin, request.stdout, request.stderr)
        return cri.AttachResponse(url=url)

    async def PortForward(self, request: cri.PortForwardRequest, ctx: Context) -> cri.PortForwardResponse:
        p = await self.rt.pod(request.pod_sandbox_id)
        if p.state != PodState.READY:
            raise FailedPrecondition(f'pod sandbox "{p.id}" is not ready')
        return cri.PortForwardResponse(url=self._streaming().port_forward_url(p.id, list(request.port)))

    # stats

    async def ContainerStats(self, request: cri.ContainerStatsRequest, ctx: Context) -> cri.ContainerStatsResponse:
        return cri.ContainerStatsResponse(stats=container_stats_pb(await self._in_ns(lambda: self.rt.container_stats(request.container_id))))

    async def ListContainerStats(self, request: cri.ListContainerStatsRequest,
                                 ctx: Context) -> cri.ListContainerStatsResponse:
        flt = None
        if request.HasField("filter"):
            f = request.filter
            flt = ContainerFilter(f.id, None, f.pod_sandbox_id, _labels(f.label_selector))
        return cri.ListContainerStatsResponse(
            stats=[container_stats_pb(s) for s in await self._in_ns(lambda: self.rt.list_container_stats(flt))])

    async def PodSandboxStats(self, request: cri.PodSandboxStatsRequest,
                              ctx: Context) -> cri.PodSandboxStatsResponse:
        return cri.PodSandboxStatsResponse(stats=pod_stats_pb(await self._in_ns(lambda: self.rt.pod_stats(request.pod_sandbox_id))))

    async def ListPodSandboxStats(self, request: cri.ListPodSandboxStatsRequest,
                                  ctx: Context) -> cri.ListPodSandboxStatsResponse:
        flt = None
        if request.HasField("filter"):
            f = request.filter
            flt = PodFilter(f.id, None, _labels(f.label_selector))
        return cri.ListPodSandboxStatsResponse(stats=[pod_stats_pb(s) for s in await self._in_ns(lambda: self.rt.list_pod_stats(flt))])


def cni_ready(conf_dir: str) -> tuple[bool, str]:
    """NetworkReady: a CNI network configuration exists in ``conf_dir``."""
    try:
        names = os.listdir(conf_dir)
    except OSError:
        names = []
    if any(n.endswith((".conflist", ".conf", ".json")) for n in names):
        return True, ""
    return False, f"cni config uninitialized: no network configuration in {conf_dir}"
