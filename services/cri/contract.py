"""The CRI RuntimeService without protobuf: the plain types and the promises.

Types mirror k8s.io/cri-api runtime/v1 messages, keeping only what the runtime acts on.
Times are ns since the epoch (0 = never).

Pod lifecycle (:class:`Runtime`)::

    run_pod: name reserved ─► sandbox (netns, CNI, pod files) ─► pause container started
             ─► READY                        (any failure: everything undone, name released)
    stop_pod: containers stopped (SIGKILL), pause killed, network released ─► NOTREADY
    remove_pod: stop_pod, every container removed, pause and sandbox gone, name released

Container lifecycle::

    create_container ─► CREATED (record + snapshot, no task) ─► start_container ─► RUNNING
    (task created with the CRI log copier, then started) ─► process exits ─► EXITED
    (exit code, reason, finished_at kept; the task is deleted at once) ─► remove_container

Idempotence (the CRI's rule): stop and remove of an unknown pod or container succeed;
stop of a stopped one does nothing. Names: a pod's name is
``<name>_<namespace>_<uid>_<attempt>``, a container's ``<name>_<pod name>_<pod
namespace>_<pod uid>_<attempt>``; a second create with a reserved name raises
AlreadyExists ``name "X" is reserved for "ID"`` until the holder is removed.
Errors are errdefs kinds: NotFound for an unknown pod/container/image (naming it),
InvalidArgument for bad requests, FailedPrecondition for a call in the wrong state,
PermissionDenied for privileged when not allowed, DeadlineExceeded for an ExecSync timeout.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from moorage.services.runtime.metrics import CgroupUsage


class PodState(enum.IntEnum):
    READY = 0
    NOTREADY = 1


class ContainerState(enum.IntEnum):
    CREATED = 0
    RUNNING = 1
    EXITED = 2
    UNKNOWN = 3


class NamespaceMode(enum.IntEnum):
    POD = 0
    CONTAINER = 1
    NODE = 2
    TARGET = 3


class MountPropagation(enum.IntEnum):
    PRIVATE = 0
    HOST_TO_CONTAINER = 1
    BIDIRECTIONAL = 2


@dataclass(frozen=True)
class NamespaceOptions:
    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD
    target_id: str = ""


@dataclass(frozen=True)
class PodMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int = 0

    def reserved_name(self) -> str:
        return "_".join((self.name, self.namespace, self.uid, str(self.attempt)))


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int = 0
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodConfig:
    """PodSandboxConfig: what the pod and every container in it share."""

    metadata: PodMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)
    namespaces: NamespaceOptions = NamespaceOptions()
    privileged: bool = False
    readonly_rootfs: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    oom_score_adj: int | None = None
    runtime_handler: str = ""


@dataclass(frozen=True)
class Resources:
    """LinuxContainerResources (0 = unset)."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    memory_swap_limit_in_bytes: int = 0


@dataclass(frozen=True)
class SecurityContext:
    """LinuxContainerSecurityContext. ``run_as_user``/``run_as_group`` None = unset."""

    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()
    privileged: bool = False
    namespaces: NamespaceOptions = NamespaceOptions()
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    seccomp: str = ""
    """"" or ``unconfined``: none; ``runtime/default``; ``localhost/<absolute path>``: the
    profile (OCI ``linux.seccomp`` JSON) in that host file."""


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: MountPropagation = MountPropagation.PRIVATE


@dataclass(frozen=True)
class Device:
    """A host device node made available in the container (``permissions``: of ``rwm``)."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass(frozen=True)
class ContainerConfig:
    metadata: ContainerMetadata
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources | None = None
    security: SecurityContext = SecurityContext()
    stop_signal: str = ""
    """The signal StopContainer sends first (``SIGTERM``...); "" = the image's."""


@dataclass
class Pod:
    """A pod as the runtime keeps it (PodSandbox / PodSandboxStatus)."""

    id: str
    config: PodConfig
    state: PodState = PodState.NOTREADY
    created_at: int = 0
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    netns_path: str = ""
    pause_pid: int = 0
    runtime_handler: str = ""
    runtime: str = ""
    """The runtime (shim) name the handler maps to (``[cri] runtime_handlers``)."""
    cgroup_path: str = ""
    """The pause container's cgroup (``<cgroup parent>/<id>``)."""
    info: dict[str, str] = field(default_factory=dict)
    """The sandbox service's Controller.Status info (netns path, pod files) at start."""


@dataclass
class Container:
    """A container as the runtime keeps it (Container / ContainerStatus)."""

    id: str
    pod_id: str
    config: ContainerConfig
    image_ref: str
    image_id: str
    state: ContainerState = ContainerState.CREATED
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    log_path: str = ""
    """The full path: pod log_directory joined with the config's log_path ("" = no log)."""
    cgroup_path: str = ""
    reserved_name: str = ""
    stop_signal: str = ""
    """The image's StopSignal ("" = SIGTERM)."""
    image_digest: str = ""
    """The image's first repo digest (``repo@sha256:...``): ContainerStatus.image_ref, as
    containerd reports it (the image id when there is none)."""


@dataclass(frozen=True)
class PodFilter:
    id: str = ""
    state: PodState | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerFilter:
    id: str = ""
    state: ContainerState | None = None
    pod_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass(frozen=True)
class Usage:
    """A cgroup's counters at ``timestamp`` (ns), from its task's shim or from cgroupfs
    (``cpu_ns`` cumulative)."""

    timestamp: int
    counters: CgroupUsage = CgroupUsage("")


@dataclass(frozen=True)
class ContainerStats:
    id: str
    pod_id: str
    name: str
    attempt: int
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    usage: Usage
    writable_bytes: int = 0
    """Bytes and inodes of the container's writable layer (its rootfs snapshot)."""
    writable_inodes: int = 0


@dataclass(frozen=True)
class PodStats:
    pod: Pod
    usage: Usage
    containers: tuple[ContainerStats, ...] = ()


class Image(Protocol):
    """An image as :class:`Images` resolves it: ``config`` is the whole OCI image config
    document, ``chain_id`` the snapshot its rootfs is unpacked to."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def config(self) -> Mapping[str, Any]: ...
    @property
    def chain_id(self) -> str: ...
    @property
    def repo_digests(self) -> tuple[str, ...]: ...


class Images(Protocol):
    """The image side the runtime needs (the ImageService's ``CriImages``):
    ``resolve`` raises NotFound for an absent image; ``ensure`` pulls it first."""

    async def resolve(self, ref: str) -> Image: ...
    async def ensure(self, ref: str) -> Image: ...


class Runtime(Protocol):
    """The pods and containers of the CRI RuntimeService (namespace: the config's)."""

    async def run_pod(self, config: PodConfig, runtime_handler: str = "") -> str: ...
    async def stop_pod(self, pod_id: str) -> None: ...
    async def remove_pod(self, pod_id: str) -> None: ...
    async def pod(self, pod_id: str) -> Pod: ...
    async def list_pods(self, flt: PodFilter | None = None) -> list[Pod]: ...

    async def create_container(self, pod_id: str, config: ContainerConfig) -> str: ...
    async def start_container(self, container_id: str) -> None: ...
    async def stop_container(self, container_id: str, timeout: float) -> None: ...
    async def remove_container(self, container_id: str) -> None: ...
    async def container(self, container_id: str) -> Container: ...
    async def list_containers(self, flt: ContainerFilter | None = None) -> list[Container]: ...
    async def update_resources(self, container_id: str, resources: Resources) -> None: ...
    async def reopen_log(self, container_id: str) -> None: ...
    async def exec_sync(self, container_id: str, cmd: tuple[str, ...], timeout: float) -> ExecResult:
        """Run ``cmd`` in the container; ``timeout`` seconds (0 = none) then the process
        is killed and DeadlineExceeded raised."""
        ...

    async def container_stats(self, container_id: str) -> ContainerStats: ...
    async def list_container_stats(self, flt: ContainerFilter | None = None) -> list[ContainerStats]: ...
    async def pod_stats(self, pod_id: str) -> PodStats: ...
    async def list_pod_stats(self, flt: PodFilter | None = None) -> list[PodStats]: ...
