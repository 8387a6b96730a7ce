"""The sandbox contracts: the metadata Store, the Controller, and their plain types.

Two APIs, as containerd's ``core/sandbox``:

- :class:`Store` keeps sandbox *metadata* records (``containerd.types.Sandbox``): id,
  runtime, spec, labels, extensions, sandboxer. Records are keyed by namespace (the
  running call's, :func:`moorage.namespaces.namespace`). No side effects beyond the record.
- :class:`Controller` manages sandbox *instances* for one sandboxer. Lifecycle::

      create ─► start ─► (ready) ─► stop ─► (not ready, exited) ─► shutdown (gone)
        │                                      ▲
        └──── failure: not ready, cleanup pending ─┘  (stop/shutdown retry the cleanup)

  ``create`` prepares (the pod sandboxer: a network namespace, CNI ADD, hostname and
  resolv.conf files); ``start`` makes it ready; ``stop`` releases the network (CNI DEL,
  namespace removed) and makes ``wait`` return; ``shutdown`` stops if needed and deletes
  the instance. ``stop`` and ``shutdown`` are idempotent and retry a teardown that failed
  before; an instance whose teardown failed stays NotReady with its namespace path
  recorded until a retry succeeds.

How the runtime service joins a container to a pod sandbox: ``Controller.status(id)`` (and
the Store record's extension :data:`NETWORK_EXTENSION`) give the namespace path and the
prepared files; see :class:`Network`. Keys of ``ControllerStatus.info``: ``netns_path``,
``ips`` (comma separated), ``hostname``, ``hostname_path``, ``hosts_path``,
``resolv_conf_path``, ``state`` (the sandboxer's own: created, ready, stopped, failed),
``error`` (why it is not ready: the last setup/teardown failure, a vanished namespace).

The pod sandboxer's options (PodConfig, PortMapping, DNSConfig, POD_CONFIG_TYPE) are
defined in podconfig.py, light to import for `moor sandbox run`, and re-exported here.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from .podconfig import POD_CONFIG_TYPE as POD_CONFIG_TYPE
from .podconfig import DNSConfig as DNSConfig
from .podconfig import PodConfig as PodConfig
from .podconfig import PortMapping as PortMapping

NETWORK_EXTENSION = "io.moorage.sandbox.network"
"""Store-record extension the pod sandboxer writes after create: an Any whose type_url is
:data:`NETWORK_TYPE` and whose value is :meth:`Network.to_json` (JSON, as containerd's
typeurl marshals non-protobuf types)."""
NETWORK_TYPE = "moorage.sandbox.v1.Network"

READY = "SANDBOX_READY"
NOT_READY = "SANDBOX_NOTREADY"


@dataclass(frozen=True)
class AnyValue:
    """A protobuf Any kept opaque: type_url and the encoded value."""

    type_url: str
    value: bytes = b""


@dataclass(frozen=True)
class Runtime:
    name: str
    options: AnyValue | None = None


@dataclass(frozen=True)
class Sandbox:
    """A metadata record, as ``containerd.types.Sandbox``. Times are ns since the epoch."""

    id: str
    runtime: Runtime
    sandboxer: str = ""
    spec: AnyValue | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    extensions: Mapping[str, AnyValue] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


class Store(Protocol):
    """Sandbox metadata, per namespace.

    create: AlreadyExists for a taken id, InvalidArgument for a bad id or empty runtime name;
    sets created_at/updated_at. update: ``fieldpaths`` empty = replace labels, extensions,
    spec, runtime and sandboxer; else each of ``labels``, ``labels.K``, ``extensions``,
    ``extensions.K``, ``spec``, ``runtime``, ``sandboxer``; NotFound when absent. list:
    containerd filters over ``id``, ``runtime.name``, ``sandboxer``, ``labels.K``. delete:
    NotFound when absent, FailedPrecondition while a controller instance of the id exists.
    """

    async def create(self, sandbox: Sandbox) -> Sandbox: ...
    async def update(self, sandbox: Sandbox, fieldpaths: Sequence[str] = ()) -> Sandbox: ...
    async def get(self, sandbox_id: str) -> Sandbox: ...
    async def list(self, filters: Sequence[str] = ()) -> list[Sandbox]: ...
    async def delete(self, sandbox_id: str) -> None: ...


@dataclass(frozen=True)
class Network:
    """What a container joining the sandbox needs (the pod sandboxer's view)."""

    netns_path: str = ""
    ips: tuple[str, ...] = ()
    hostname: str = ""
    hostname_path: str = ""
    hosts_path: str = ""
    resolv_conf_path: str = ""
    port_mappings: tuple[PortMapping, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "netns_path": self.netns_path,
                "ips": list(self.ips),
                "hostname": self.hostname,
                "hostname_path": self.hostname_path,
                "hosts_path": self.hosts_path,
                "resolv_conf_path": self.resolv_conf_path,
                "port_mappings": [m.to_cni() for m in self.port_mappings],
            },
            sort_keys=True,
        ).encode()


@dataclass(frozen=True)
class CreateOptions:
    """``Controller.Create`` arguments beside the id (as ControllerCreateRequest)."""

    rootfs: Sequence[Mapping[str, Any]] = ()
    options: AnyValue | None = None
    netns_path: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    sandbox: Sandbox | None = None


@dataclass(frozen=True)
class ControllerInstance:
    """Start's answer (``address``/``version``: the shim endpoint when there is one)."""

    sandbox_id: str
    pid: int = 0
    created_at: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    address: str = ""
    version: int = 0
    spec: AnyValue | None = None


@dataclass(frozen=True)
class ControllerStatus:
    sandbox_id: str
    state: str
    pid: int = 0
    info: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0
    exited_at: int = 0
    extra: AnyValue | None = None
    address: str = ""
    version: int = 0


@dataclass(frozen=True)
class ExitStatus:
    exit_status: int
    exited_at: int


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""


class Controller(Protocol):
    """One sandboxer's instances, per namespace (see the module docstring for lifecycle).

    Every method but ``create`` raises NotFound for an id without an instance; ``create``
    of an existing instance raises AlreadyExists. ``start`` of an instance whose setup or
    teardown failed, or that is stopped, raises FailedPrecondition. ``timeout_secs`` on stop
    is the caller's grace for a sandbox process (the pod sandboxer has none).
    """

    async def create(self, sandbox_id: str, opts: CreateOptions) -> None: ...
    async def start(self, sandbox_id: str) -> ControllerInstance: ...
    async def platform(self, sandbox_id: str) -> Platform: ...
    async def stop(self, sandbox_id: str, timeout_secs: int = 0) -> None: ...
    async def wait(self, sandbox_id: str) -> ExitStatus: ...
    async def status(self, sandbox_id: str, verbose: bool = False) -> ControllerStatus: ...
    async def shutdown(self, sandbox_id: str) -> None: ...
    async def metrics(self, sandbox_id: str) -> AnyValue | None: ...


class Controllers(Protocol):
    """Controllers by sandboxer name: InvalidArgument for an empty name, NotFound for an unknown."""

    def get(self, sandboxer: str) -> Controller: ...


@dataclass(frozen=True)
class PodMeta:
    """What ``Controller.Create`` was told about the pod, for the hooks: its annotations (a
    CRI pod's name, namespace and uid among them, moorage.annotations) and the labels of the
    sandbox record it was given. Kept in the instance record (:meth:`to_record`), so it
    outlives a restart of the service."""

    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, dict[str, str]]:
        return {"annotations": dict(self.annotations), "labels": dict(self.labels)}

    @classmethod
    def from_record(cls, doc: Mapping[str, Any] | None) -> PodMeta:
        """``doc`` None (a record written before it was kept): no metadata."""
        doc = doc or {}
        return cls(dict(doc.get("annotations") or {}), dict(doc.get("labels") or {}))


class PodHooks(Protocol):
    """Pod lifecycle hook point (NRI RunPodSandbox/StopPodSandbox/RemovePodSandbox).

    ``run`` is called once the network is up, before the sandbox is reported ready; raising
    fails create (and the network is torn down). ``stop``/``remove`` get the network and
    metadata ``run`` got, read back from the instance record (the same after a restart of
    the service; the network even once torn down); they are best effort: their errors are
    logged, never block teardown.
    """

    async def run(self, sandbox_id: str, network: Network, meta: PodMeta) -> None: ...
    async def stop(self, sandbox_id: str, network: Network, meta: PodMeta) -> None: ...
    async def remove(self, sandbox_id: str, network: Network, meta: PodMeta) -> None: ...


class NoHooks:
    async def run(self, sandbox_id: str, network: Network, meta: PodMeta) -> None:
        return None

    async def stop(self, sandbox_id: str, network: Network, meta: PodMeta) -> None:
        return None

    async def remove(self, sandbox_id: str, network: Network, meta: PodMeta) -> None:
        return None


@dataclass(frozen=True)
class SandboxEvent:
    """``/sandboxes/create`` and ``/sandboxes/start`` carry the id; ``/sandboxes/exit`` also
    the exit status and time (ns)."""

    topic: str
    sandbox_id: str
    exit_status: int = 0
    exited_at: int = 0


class EventSink(Protocol):
    """Where sandbox events go (the events Publisher through process.py, or a test list).
    Publishing is best effort: a sink must not raise."""

    async def publish(self, event: SandboxEvent) -> None: ...


class NullSink:
    async def publish(self, event: SandboxEvent) -> None:
        return None


request_deadline: ContextVar[float | None] = ContextVar("sandbox_request_deadline", default=None)
"""The running call's deadline (event-loop time), set by the API adapter; setup steps are
bounded by it as well as by their own timeouts, teardown never is."""


class State(str, enum.Enum):
    CREATED = "created"
    READY = "ready"
    STOPPED = "stopped"
    FAILED = "failed"
