"""What the runtime service promises, without protobuf.

Two contracts, as containerd's:

- `ContainerStore` (containers.v1): durable container records per namespace. A record is
  metadata only (id, image name, runtime name and options, spec, snapshotter and snapshot
  key, labels, extensions, sandbox id); creating one starts nothing.
- `TaskService` (tasks.v1): the running side. A task is a container's init process run by
  a runtime v2 shim; execs are more processes in the same container. Lifecycle of a task:
  Create (bundle written, shim started or reused, runtime create: CREATED) → Start
  (RUNNING) → the process exits (STOPPED; the exit status is kept by the shim) → Delete
  (exit status returned, shim told to shut down, bundle removed). Kill, Pause/Resume,
  Exec, ResizePty, CloseIO, Pids, Update, Metrics and Wait act on a live task. Task state
  always comes from the shim; the runtime keeps only what it needs to find the shim again
  after a restart (shim records).

Events the runtime itself publishes: `/containers/{create,update,delete}`, and for a shim
that died, `/tasks/exit` then `/tasks/delete` (once). The other `/tasks/*` events come from
the shims, forwarded by the proxy, in containerd's order.
"""

from __future__ import annotations

import builtins

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class AnyValue:
    """A protobuf Any without protobuf: type_url and the encoded value."""

    type_url: str
    value: bytes


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    options: AnyValue | None = None


@dataclass
class Container:
    """A containers.v1 record. Timestamps are ns since the epoch."""

    id: str
    runtime: RuntimeInfo
    spec: AnyValue | None = None
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, AnyValue] = field(default_factory=dict)
    sandbox: str = ""
    created_at: int = 0
    updated_at: int = 0


class ContainerStore(Protocol):
    """containers.v1 semantics: NotFound, AlreadyExists, InvalidArgument as containerd's."""

    async def get(self, id: str) -> Container: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Container]: ...

    async def create(self, container: Container) -> Container: ...

    async def update(self, container: Container, fieldpaths: Sequence[str] = ()) -> Container:
        """Replace the record's mutable fields (labels, spec, extensions, image,
        snapshotkey), or only the named ones (`labels.k`, `extensions.k` for one key)."""
        ...

    async def delete(self, id: str) -> None: ...


class Status(enum.IntEnum):
    """containerd.v1.types.Status (task/process state)."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class StdIO:
    """Paths the shim opens (empty = /dev/null), as containerd passes them."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True)
class ProcessState:
    """containerd.v1.types.Process. `exited_at` in ns since the epoch, 0 if running."""

    container_id: str
    id: str  # exec id; the container id for the init process
    pid: int
    status: Status
    stdio: StdIO = StdIO()
    exit_status: int = 0
    exited_at: int = 0


@dataclass(frozen=True)
class ExitInfo:
    pid: int
    exit_status: int
    exited_at: int


@dataclass(frozen=True)
class CreateTask:
    container_id: str
    rootfs: tuple[Mount, ...] = ()
    stdio: StdIO = StdIO()
    options: AnyValue | None = None
    runtime_path: str = ""


class TaskService(Protocol):
    """tasks.v1 semantics. `exec_id` "" means the init process."""

    async def create(self, req: CreateTask) -> ProcessState: ...

    async def start(self, container_id: str, exec_id: str = "") -> int: ...

    async def delete(self, container_id: str) -> ExitInfo: ...

    async def delete_process(self, container_id: str, exec_id: str) -> ExitInfo: ...

    async def get(self, container_id: str, exec_id: str = "") -> ProcessState: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[ProcessState]: ...

    async def kill(self, container_id: str, signal: int, exec_id: str = "",
                   all: bool = False) -> None: ...

    async def exec(self, container_id: str, exec_id: str, spec: AnyValue,
                   stdio: StdIO) -> None: ...

    async def resize_pty(self, container_id: str, exec_id: str, width: int,
                         height: int) -> None: ...

    async def close_io(self, container_id: str, exec_id: str, stdin: bool) -> None: ...

    async def pause(self, container_id: str) -> None: ...

    async def resume(self, container_id: str) -> None: ...

    async def pids(self, container_id: str) -> builtins.list[tuple[int, AnyValue | None]]: ...

    async def update(self, container_id: str, resources: AnyValue | None,
                     annotations: Mapping[str, str]) -> None: ...

    async def metrics(self, filters: Sequence[str]) -> builtins.list[tuple[str, AnyValue | None]]: ...

    async def wait(self, container_id: str, exec_id: str = "") -> ExitInfo: ...


class Events(Protocol):
    """Where the runtime publishes: the proxy's Events (namespace from the contextvar)."""

    async def publish(self, topic: str, event: object) -> None: ...


EventStream = AsyncIterator[tuple[str, str, object]]
