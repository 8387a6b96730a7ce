"""The task manager: tasks.v1 on runtime v2 shims (implements contract.TaskService).

One `Task` per container with a task: its bundle, its shim connection (shared by grouped
containers), the stdio the runtime logs, and a waiter that holds a shim Wait call open.
The waiter is how the runtime learns two things without polling: the init process exited
(Wait returns), or the shim died (the connection drops while we were not deleting). A dead
shim is cleaned up as containerd does (`delete` subcommand, then `/tasks/exit` and
`/tasks/delete` published once, bundle and record removed).

Everything else about a task's state is asked from its shim. `recover()` runs at start:
every shim record is reconnected; a shim that is gone is cleaned up as dead; a shim whose
task was never created (the runtime died between `start` and Create) is reaped.
"""

from __future__ import annotations

import builtins

import asyncio
import contextlib
import json
import logging
import os
import signal as _signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from moorage.api.containerd.events import task_pb2 as events_pb2
from moorage.api.containerd.runtime.task.v2 import shim_pb2
from moorage.api.containerd.types import mount_pb2
from moorage.api.containerd.types.runc.options import oci_pb2
from moorage.errdefs import (
    AlreadyExists,
    Error,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from moorage.namespaces import current_namespace, metadata as ns_metadata, namespace

from . import attach
from .bundle import Bundle, Bundles
from .cio import LoggedIO
from .containers import SqliteContainerStore, validate_id
from .contract import (
    AnyValue,
    CreateTask,
    ExitInfo,
    Mount,
    ProcessState,
    Status,
    StdIO,
)
from .shim import ShimFlags, ShimRecord, ShimRecords, binary_for, group_of, run_delete, run_start
from .spec import PROCESS_TYPE_URL, SPEC_TYPE_URL, dumps

if TYPE_CHECKING:
    from ttrpc.client import Client

    from .nri import RuntimeNri

    from moorage.events import EventPublisher

SHIM_SERVICE = "containerd.task.v2.Task"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
LOG_LABEL = "moorage/logging"
LOG_PATH_LABEL = "moorage/log-path"
STDIN_LABEL = attach.STDIN_LABEL
"""On a logged container: `open` or `once` = the runtime makes and holds the task's stdin fifo
(for `moor attach` and CRI Attach; `once`: the first attacher closes it when it leaves)."""
STDIN_MODES = ("open", "once")
CALL_TIMEOUT = 30.0
RESOURCES_TYPE = "opencontainers/runtime-spec/1/LinuxResources"
IO_DRAIN_TIMEOUT = 2.0

M = TypeVar("M", bound=Message)


def _ts(ns: int) -> Any:
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.seconds, t.nanos = divmod(ns, 1_000_000_000)
    return t


def _ns(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def _any(v: AnyValue | None) -> any_pb2.Any | None:
    return None if v is None else any_pb2.Any(type_url=v.type_url, value=v.value)


class ShimConn:
    """One ttrpc connection to one shim; several tasks when grouped."""

    def __init__(self, address: str, client: Client) -> None:
        self.address = address
        self.client = client
        self.tasks: set[tuple[str, str]] = set()

    async def call(self, method: str, req: Message, resp: type[M],
                   timeout: float | None = CALL_TIMEOUT) -> M:
        out: M = await self.client.unary(SHIM_SERVICE, method, req, resp, timeout=timeout)
        return out

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()


@dataclass
class Task:
    namespace: str
    id: str
    bundle: Bundle
    shim: ShimConn
    record: ShimRecord
    pid: int = 0
    io: LoggedIO | None = None
    stdio: StdIO = StdIO()
    log_fd: int = -1
    waiter: asyncio.Task[None] | None = None
    exited: asyncio.Future[ExitInfo] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    deleting: bool = False
    gone: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    spec: dict[str, Any] | None = None
    """The spec the task runs (NRI-adjusted: the bundle's config.json); loaded lazily."""
    labels: dict[str, str] = field(default_factory=dict)
    sandbox: str = ""
    nri_stopped: bool = False

    @property
    def shim_bundle(self) -> Bundle:
        """Where the shim runs (its `log` fifo): a pre-started shim's own bundle, or ours."""
        if self.record.shim_bundle:
            return Bundle(Path(self.record.shim_bundle), self.namespace,
                          Path(self.record.shim_bundle).name)
        return self.bundle


@dataclass
class WarmShim:
    """A shim started ahead of need in its own bundle; the next task of its namespace and
    binary is created in it (one task per shim all the same: no sharing of fate)."""

    namespace: str
    id: str
    binary: str
    bundle: Bundle
    conn: ShimConn
    log_fd: int


class TaskManager:
    """contract.TaskService on shims. The namespace of every call is the context's."""

    def __init__(
        self,
        containers: SqliteContainerStore,
        bundles: Bundles,
        records: ShimRecords,
        flags: ShimFlags,
        publisher: EventPublisher,
        logger: logging.Logger,
        *,
        runc_root: Path,
        log_dir: Path,
        connect: Callable[[str], Any],
        proxy: Callable[[], Any] | None = None,
        shim_search_path: str | None = None,
        prestart: bool = False,
        nri: RuntimeNri | None = None,
    ) -> None:
        self.containers = containers
        self.bundles = bundles
        self.records = records
        self.flags = flags
        self.publisher = publisher
        self.log = logger
        self.runc_root = runc_root
        self.log_dir = log_dir
        self._connect = connect
        self._proxy = proxy
        self._search = shim_search_path
        self.tasks: dict[tuple[str, str], Task] = {}
        self.shims: dict[str, ShimConn] = {}
        self._creating: set[tuple[str, str]] = set()
        self._closing = False
        self.prestart = prestart
        self.nri = nri
        self._warm: dict[tuple[str, str], WarmShim] = {}
        self._warming: set[tuple[str, str]] = set()

    # ---- helpers -------------------------------------------------------------------------

    def _task(self, id: str) -> Task:
        t = self.tasks.get((namespace(), id))
        if t is None or t.gone:
            raise NotFound(f"no running task found: task {id} not found")
        return t

    def log_path(self, ns: str, id: str) -> Path:
        validate_id(id)
        return self.log_dir / ns / f"{id}.log"

    async def _shim_conn(self, address: str) -> ShimConn:
        conn = self.shims.get(address)
        if conn is not None and not getattr(conn.client, "closed", False):
            return conn
        client = await self._connect(address)
        conn = ShimConn(address, client)
        self.shims[address] = conn
        return conn

    async def _release(self, task: Task) -> None:
        conn = task.shim
        conn.tasks.discard((task.namespace, task.id))
        if not conn.tasks and self.shims.get(conn.address) is conn:
            del self.shims[conn.address]
            await conn.close()

    def _watch_log(self, task: Task) -> None:
        task.log_fd = self._watch_log_of(task.shim_bundle, f"{task.namespace}/{task.id}")

    def _watch_log_of(self, bundle: Bundle, name: str) -> int:
        """Hold the reader of a shim's `log` fifo (a shim without one blocks) and log it."""
        try:
            fd = bundle.open_log()
        except OSError:
            return -1
        logger = self.log.getChild("shim")

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                bad = "level=error" in line or "level=fatal" in line or line.startswith("panic")
                logger.log(logging.WARNING if bad else logging.DEBUG, "shim %s: %s", name, line)

        asyncio.get_running_loop().add_reader(fd, readable)
        return fd

    def _unwatch_fd(self, fd: int) -> None:
        if fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    # ---- pre-started shims -----------------------------------------------------------------

    def _poolable(self, binary: str, spec: Mapping[str, Any]) -> bool:
        annotations = spec.get("annotations") or {}
        grouped = group_of(annotations, "") != ""
        return self.prestart and not grouped and \
            os.path.basename(binary) == "containerd-shim-runc-v2"

    def _refill(self, ns: str, binary: str) -> None:
        key = (ns, binary)
        if key in self._warm or key in self._warming or self._closing:
            return
        self._warming.add(key)
        asyncio.get_running_loop().create_task(self._warm_up(ns, binary))

    async def _warm_up(self, ns: str, binary: str) -> None:
        from .spec import default_spec, dumps

        key = (ns, binary)
        id = "shim-" + os.urandom(6).hex()
        bundle: Bundle | None = None
        fd = -1
        rec = ShimRecord(ns, id, "io.containerd.runc.v2", binary, "", phase="pool")
        try:
            bundle = self.bundles.create(ns, id, dumps(default_spec(ns, id)), binary)
            rec.bundle = str(bundle.path)
            self.records.put(rec)
            fd = self._watch_log_of(bundle, f"{ns}/{id}")
            options = self._task_options("io.containerd.runc.v2", None)
            address = await run_start(self.flags, binary, ns, id, bundle.path,
                                      options.SerializeToString() if options else b"")
            rec.address = address
            self.records.put(rec)
            conn = await self._shim_conn(address)
            if self._closing:
                raise Unavailable("closing")
            self._warm[key] = WarmShim(ns, id, binary, bundle, conn, fd)
        except Exception as exc:
            self.log.warning("pre-starting a shim for %s: %s", ns, exc)
            await self._discard_warm(WarmShim(ns, id, binary, bundle, None, fd)  # type: ignore[arg-type]
                                     if bundle else None, rec)
        finally:
            self._warming.discard(key)

    async def _discard_warm(self, w: WarmShim | None, rec: ShimRecord | None = None) -> None:
        if w is None:
            return
        if w.conn is not None:
            with contextlib.suppress(Exception):
                await w.conn.call("Shutdown", shim_pb2.ShutdownRequest(id=w.id, now=True),
                                  empty_pb2.Empty, timeout=5)
            if self.shims.get(w.conn.address) is w.conn and not w.conn.tasks:
                del self.shims[w.conn.address]
            await w.conn.close()
        self._unwatch_fd(w.log_fd)
        w.bundle.remove()
        self.records.delete(w.namespace, w.id)

    def _take_warm(self, ns: str, binary: str) -> WarmShim | None:
        w = self._warm.pop((ns, binary), None)
        if w is not None and getattr(w.conn.client, "closed", False):
            asyncio.get_running_loop().create_task(self._discard_warm(w))
            return None
        return w

    def _unwatch_log(self, task: Task) -> None:
        if task.log_fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(task.log_fd)
            os.close(task.log_fd)
            task.log_fd = -1

    def _task_options(self, runtime: str, options: AnyValue | None) -> any_pb2.Any | None:
        """Runtime options for Create/start: runc's get our state root unless they set one."""
        is_runc = runtime.startswith("io.containerd.runc.") or "runc" in os.path.basename(runtime)
        if options is None:
            if not is_runc:
                return None
            opts = oci_pb2.Options(root=str(self.runc_root))
            return any_pb2.Any(type_url=RUNC_OPTIONS_URL, value=opts.SerializeToString())
        if options.type_url.rsplit("/", 1)[-1] == RUNC_OPTIONS_URL:
            opts = oci_pb2.Options()
            try:
                opts.ParseFromString(options.value)
            except Exception:
                raise InvalidArgument("runtime options: not a containerd.runc.v1.Options") from None
            if not opts.root:
                opts.root = str(self.runc_root)
            return any_pb2.Any(type_url=RUNC_OPTIONS_URL, value=opts.SerializeToString())
        return any_pb2.Any(type_url=options.type_url, value=options.value)

    async def _snapshot_mounts(self, snapshotter: str, key: str) -> builtins.list[Mount]:
        if self._proxy is None:
            raise FailedPrecondition("no rootfs given and no snapshots service to ask")
        from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2

        client = await self._proxy()
        resp = await client.unary(
            "containerd.services.snapshots.v1.Snapshots", "Mounts",
            snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key),
            snapshots_pb2.MountsResponse, timeout=CALL_TIMEOUT,
            metadata=ns_metadata(namespace()))
        return [Mount(m.type, m.source, m.target, tuple(m.options)) for m in resp.mounts]

    async def _publish(self, topic: str, event: Message, ns: str) -> None:
        try:
            await self.publisher.publish(topic, event, namespace=ns)
        except Exception as exc:  # events are not durable; never fail the operation
            self.log.warning("publish %s: %s", topic, exc)

    # ---- NRI -----------------------------------------------------------------------------

    async def _nri_spec(self, t: Task) -> dict[str, Any]:
        """The task's spec and container facts for the NRI hooks (after a restart: from the
        bundle and the container record)."""
        if t.spec is None:
            try:
                t.spec = json.loads((t.bundle.path / "config.json").read_bytes())
            except (OSError, ValueError):
                t.spec = {}
            with contextlib.suppress(Exception):
                c = await self.containers.get(t.id)
                t.labels, t.sandbox = dict(c.labels), c.sandbox
        return t.spec or {}

    async def _nri_stop(self, t: Task, pid: int) -> None:
        """StopContainer, once per task (deleted, or its shim died)."""
        if self.nri is None or t.nri_stopped:
            return
        t.nri_stopped = True
        spec = await self._nri_spec(t)
        await self.nri.stop(spec, t.id, t.labels, t.sandbox, pid)

    # ---- lifecycle -----------------------------------------------------------------------

    async def create(self, req: CreateTask) -> ProcessState:
        ns = namespace()
        key = (ns, req.container_id)
        if key in self.tasks or key in self._creating:
            raise AlreadyExists(f"task {req.container_id}: already exists")
        self._creating.add(key)
        try:
            return await self._create(ns, req)
        finally:
            self._creating.discard(key)

    async def _create(self, ns: str, req: CreateTask) -> ProcessState:
        c = await self.containers.get(req.container_id)
        binary = req.runtime_path or binary_for(c.runtime.name, self._search)
        if c.spec is None or not c.spec.value:
            raise FailedPrecondition(f"container {c.id} has no spec")
        if c.spec.type_url.lstrip("/").split("/", 1)[-1] != SPEC_TYPE_URL.split("/", 1)[-1] \
                and c.spec.type_url != SPEC_TYPE_URL:
            raise InvalidArgument(f"container {c.id}: spec type {c.spec.type_url!r} is not an OCI spec")
        try:
            spec = json.loads(c.spec.value)
        except ValueError:
            raise InvalidArgument(f"container {c.id}: spec is not valid JSON") from None
        rootfs = list(req.rootfs)
        if not rootfs and c.snapshot_key:
            rootfs = await self._snapshot_mounts(c.snapshotter or "overlayfs", c.snapshot_key)
        options = self._task_options(c.runtime.name, req.options or c.runtime.options)
        stdio = req.stdio
        # a terminal's output is logged (and attachable) when the client left stdout to us
        logged = c.labels.get(LOG_LABEL) == "file" and not (stdio.terminal and stdio.stdout)
        spec_bytes = c.spec.value
        if self.nri is not None:
            # CreateContainer: the plugins' adjustment goes into the spec the bundle gets;
            # a plugin's error or a conflict fails here, before anything exists
            spec = await self.nri.create(spec, c.id, c.labels, c.sandbox)
            spec_bytes = dumps(spec)
        try:
            st = await self._create_shim(ns, c, binary, spec, spec_bytes, rootfs, options, stdio,
                                         logged)
        except BaseException:
            if self.nri is not None:  # plugins release what they reserved for it
                await asyncio.shield(self.nri.remove(spec, c.id, c.labels, c.sandbox))
            raise
        t = self.tasks.get((ns, c.id))
        if t is not None:
            t.spec, t.labels, t.sandbox = spec, dict(c.labels), c.sandbox
            if self.nri is not None:
                await self.nri.post_create(spec, c.id, c.labels, c.sandbox, st.pid)
        return st

    async def _create_shim(self, ns: str, c: Any, binary: str, spec: dict[str, Any],
                           spec_bytes: bytes, rootfs: builtins.list[Mount], options: Any,
                           stdio: StdIO, logged: bool) -> ProcessState:
        t0 = time.perf_counter()
        bundle = self.bundles.create(ns, c.id, spec_bytes, binary)
        record = ShimRecord(ns, c.id, c.runtime.name, binary, str(bundle.path), logged=logged)
        task: Task | None = None
        lio: LoggedIO | None = None
        conn: ShimConn | None = None
        warm = self._take_warm(ns, binary) if self._poolable(binary, spec) else None
        if warm is not None:
            record.address = warm.conn.address
            record.shim_bundle = str(warm.bundle.path)
        try:
            self.records.put(record)
            task = Task(ns, c.id, bundle, ShimConn("", None), record)  # type: ignore[arg-type]
            if warm is not None:
                self.records.delete(ns, warm.id)
                task.log_fd = warm.log_fd
            else:
                self._watch_log(task)
            if logged:
                own_stdin = c.labels.get(STDIN_LABEL, "") in STDIN_MODES and not stdio.stdin
                lio = LoggedIO.create(bundle.io_dir, self.log_path(ns, c.id), stdio.terminal,
                                      stdin=own_stdin)
                stdio = StdIO(stdio.stdin or lio.stdin, stdio.stdout or lio.stdout,
                              "" if stdio.terminal else stdio.stderr or lio.stderr,
                              stdio.terminal)
            t1 = time.perf_counter()
            if warm is None:
                address = await run_start(self.flags, binary, ns, c.id, bundle.path,
                                          options.SerializeToString() if options else b"")
                record.address = address
                self.records.put(record)
            else:
                address = warm.conn.address
            t2 = time.perf_counter()
            conn = await self._shim_conn(address)
            conn.tasks.add((ns, c.id))
            task.shim = conn
            creq = shim_pb2.CreateTaskRequest(
                id=c.id, bundle=str(bundle.path), terminal=stdio.terminal, stdin=stdio.stdin,
                stdout=stdio.stdout, stderr=stdio.stderr,
                rootfs=[mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                                        options=list(m.options)) for m in rootfs])
            if options is not None:
                creq.options.CopyFrom(options)
            t3 = time.perf_counter()
            resp = await conn.call("Create", creq, shim_pb2.CreateTaskResponse)
            t4 = time.perf_counter()
            record.phase = "created"
            self.records.put(record)
            self.log.debug("create %s/%s: bundle+io %.1f ms, shim start %.1f, connect %.1f, "
                           "shim create %.1f, record %.1f", ns, c.id, (t1 - t0) * 1e3,
                           (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3,
                           (time.perf_counter() - t4) * 1e3)
        except BaseException as exc:
            await self._abort_create(ns, c.id, bundle, record, task, conn, lio)
            if record.shim_bundle:
                Bundle(Path(record.shim_bundle), ns, "").remove()
            if isinstance(exc, Error) and not isinstance(exc, (NotFound, AlreadyExists)):
                raise type(exc)(f"failed to create shim task: {exc}") from exc
            raise
        if lio is not None:
            lio.attached()
        task.io = lio
        task.pid = resp.pid
        task.stdio = stdio
        self.tasks[(ns, c.id)] = task
        task.waiter = asyncio.get_running_loop().create_task(self._wait_exit(task))
        if self._poolable(binary, spec):
            self._refill(ns, binary)
        return ProcessState(c.id, c.id, resp.pid, Status.CREATED, stdio)

    async def _abort_create(self, ns: str, id: str, bundle: Bundle, record: ShimRecord,
                            task: Task | None, conn: ShimConn | None,
                            lio: LoggedIO | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.call("Delete", shim_pb2.DeleteRequest(id=id), shim_pb2.DeleteResponse,
                                timeout=5)
            with contextlib.suppress(Exception):
                await conn.call("Shutdown", shim_pb2.ShutdownRequest(id=id), empty_pb2.Empty,
                                timeout=5)
            conn.tasks.discard((ns, id))
            if not conn.tasks and self.shims.get(conn.address) is conn:
                del self.shims[conn.address]
                await conn.close()
        elif record.address:
            with contextlib.suppress(Exception):
                await run_delete(self.flags, record.binary, ns, id, bundle.path)
        if lio is not None:
            lio.close()
            with contextlib.suppress(OSError):
                self.log_path(ns, id).unlink()
        if task is not None:
            self._unwatch_log(task)
        bundle.remove()
        self.records.delete(ns, id)

    async def _wait_exit(self, task: Task) -> None:
        try:
            r = await task.shim.call("Wait", shim_pb2.WaitRequest(id=task.id),
                                     shim_pb2.WaitResponse, timeout=None)
            if not task.exited.done():
                task.exited.set_result(ExitInfo(task.pid, r.exit_status, _ns(r.exited_at)))
        except asyncio.CancelledError:
            raise
        except Unavailable:
            if not task.deleting and not self._closing:
                await self._dead(task)
        except Exception as exc:
            self.log.debug("wait %s/%s: %s", task.namespace, task.id, exc)

    async def _dead(self, task: Task) -> None:
        """The shim is gone: `delete` it, publish exit then delete (once), clean up."""
        if task.gone:
            return
        task.gone = True
        token = current_namespace.set(task.namespace)
        try:
            self.log.warning("shim for %s/%s is gone: cleaning up", task.namespace, task.id)
            try:
                info = await run_delete(self.flags, task.record.binary, task.namespace, task.id,
                                        task.bundle.path)
                if not info.exited_at:
                    info = ExitInfo(info.pid, info.exit_status, time.time_ns())
            except Exception as exc:
                self.log.warning("shim delete %s/%s: %s", task.namespace, task.id, exc)
                info = ExitInfo(task.pid or task.bundle.init_pid(), 255, time.time_ns())
            await self._publish("/tasks/exit", events_pb2.TaskExit(
                container_id=task.id, id=task.id, pid=info.pid, exit_status=info.exit_status,
                exited_at=_ts(info.exited_at)), task.namespace)
            if not task.exited.done():
                task.exited.set_result(info)
            await self._nri_stop(task, info.pid)
            await self._cleanup(task)
            self._remove_stale_socket(task.record.address)
            # containerd's order: exit, the bundle cleaned up, then delete
            await self._publish("/tasks/delete", events_pb2.TaskDelete(
                container_id=task.id, pid=info.pid, exit_status=info.exit_status,
                exited_at=_ts(info.exited_at)), task.namespace)
        finally:
            current_namespace.reset(token)

    def _remove_stale_socket(self, address: str) -> None:
        """A killed shim leaves its socket file: remove it once nothing answers there."""
        import socket
        import stat as _stat

        if not address or any(t.record.address == address and not t.gone
                              for t in self.tasks.values()):
            return
        try:
            if not _stat.S_ISSOCK(os.lstat(address).st_mode):
                return
        except OSError:
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                os.unlink(address)
        except OSError:
            pass
        finally:
            probe.close()

    async def _cleanup(self, task: Task, shim_unmounted: bool = False) -> None:
        if task.io is not None:
            await task.io.wait(IO_DRAIN_TIMEOUT)
        self._unwatch_log(task)
        task.bundle.remove(shim_unmounted)
        if task.record.shim_bundle:
            task.shim_bundle.remove()
        self.records.delete(task.namespace, task.id)
        if self.tasks.get((task.namespace, task.id)) is task:
            del self.tasks[(task.namespace, task.id)]
        await self._release(task)

    async def start(self, container_id: str, exec_id: str = "") -> int:
        t = self._task(container_id)
        nri = self.nri if not exec_id else None
        if nri is not None:  # StartContainer: a plugin's error fails the start
            await nri.start(await self._nri_spec(t), t.id, t.labels, t.sandbox, t.pid)
        r = await t.shim.call("Start", shim_pb2.StartRequest(id=container_id, exec_id=exec_id),
                              shim_pb2.StartResponse)
        if not exec_id:
            t.pid = r.pid
        if nri is not None:
            await nri.post_start(await self._nri_spec(t), t.id, t.labels, t.sandbox, t.pid)
        return int(r.pid)

    async def delete(self, container_id: str) -> ExitInfo:
        t = self._task(container_id)
        async with t.lock:
            if t.gone:
                raise NotFound(f"no running task found: task {container_id} not found")
            if not t.exited.done():
                st = await self._state(t)
                if st.status in (Status.RUNNING, Status.PAUSED, Status.PAUSING):
                    raise FailedPrecondition(
                        f"task must be stopped before deletion: {st.status.name.lower()}")
            t.deleting = True
            t0 = time.perf_counter()
            try:
                r = await t.shim.call("Delete", shim_pb2.DeleteRequest(id=container_id),
                                      shim_pb2.DeleteResponse)
            except Unavailable:
                t.deleting = False
                await self._dead(t)
                return t.exited.result()
            except BaseException:
                t.deleting = False
                raise
            info = ExitInfo(r.pid, r.exit_status, _ns(r.exited_at))
            t1 = time.perf_counter()
            with contextlib.suppress(Exception):
                await t.shim.call("Shutdown", shim_pb2.ShutdownRequest(id=container_id),
                                  empty_pb2.Empty, timeout=5)
            t2 = time.perf_counter()
            t.gone = True
            if not t.exited.done():
                t.exited.set_result(info)
            if t.waiter is not None:
                t.waiter.cancel()
            if t.io is not None:  # the shim's Delete waited for its copiers: all is buffered
                t.io.drain()
                t.io = None
            t3 = time.perf_counter()
            await self._nri_stop(t, info.pid)
            await self._cleanup(t, shim_unmounted=True)
            self.log.debug("delete %s/%s: shim delete %.1f ms, shutdown %.1f, io %.1f, "
                           "cleanup %.1f", t.namespace, t.id, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
                           (t3 - t2) * 1e3, (time.perf_counter() - t3) * 1e3)
            return info

    async def delete_process(self, container_id: str, exec_id: str) -> ExitInfo:
        if not exec_id:
            raise InvalidArgument("exec id is required (use Delete for the task)")
        t = self._task(container_id)
        r = await t.shim.call("Delete", shim_pb2.DeleteRequest(id=container_id, exec_id=exec_id),
                              shim_pb2.DeleteResponse)
        return ExitInfo(r.pid, r.exit_status, _ns(r.exited_at))

    async def _state(self, t: Task, exec_id: str = "") -> ProcessState:
        try:
            r = await t.shim.call("State", shim_pb2.StateRequest(id=t.id, exec_id=exec_id),
                                  shim_pb2.StateResponse, timeout=10)
        except Unavailable:
            return ProcessState(t.id, exec_id or t.id, t.pid, Status.UNKNOWN, t.stdio)
        return ProcessState(
            t.id, exec_id or t.id, r.pid, Status(r.status),
            StdIO(r.stdin, r.stdout, r.stderr, r.terminal), r.exit_status,
            _ns(r.exited_at) if r.HasField("exited_at") else 0)

    async def get(self, container_id: str, exec_id: str = "") -> ProcessState:
        return await self._state(self._task(container_id), exec_id)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[ProcessState]:
        ns = namespace()
        tasks = [t for (n, _), t in sorted(self.tasks.items()) if n == ns and not t.gone]
        return list(await asyncio.gather(*(self._state(t) for t in tasks)))

    async def kill(self, container_id: str, signal: int, exec_id: str = "",
                   all: bool = False) -> None:
        t = self._task(container_id)
        await t.shim.call("Kill", shim_pb2.KillRequest(id=container_id, exec_id=exec_id,
                                                       signal=signal or int(_signal.SIGTERM),
                                                       all=all), empty_pb2.Empty)

    async def exec(self, container_id: str, exec_id: str, spec: AnyValue | None,
                   stdio: StdIO) -> None:
        validate_id(exec_id, "exec id")
        if spec is None or not spec.value:
            # the runc shim 1.6 crashes on an Exec without a process spec
            raise InvalidArgument("exec: a process spec is required")
        t = self._task(container_id)
        await t.shim.call("Exec", shim_pb2.ExecProcessRequest(
            id=container_id, exec_id=exec_id, terminal=stdio.terminal, stdin=stdio.stdin,
            stdout=stdio.stdout, stderr=stdio.stderr,
            spec=any_pb2.Any(type_url=spec.type_url or PROCESS_TYPE_URL, value=spec.value)),
            empty_pb2.Empty)

    async def resize_pty(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        t = self._task(container_id)
        await t.shim.call("ResizePty", shim_pb2.ResizePtyRequest(
            id=container_id, exec_id=exec_id, width=width, height=height), empty_pb2.Empty)

    async def close_io(self, container_id: str, exec_id: str, stdin: bool) -> None:
        t = self._task(container_id)
        if stdin and not exec_id and t.io is not None:
            t.io.close_stdin()  # the runtime's own hold on a stdin it owns goes first
        await t.shim.call("CloseIO", shim_pb2.CloseIORequest(
            id=container_id, exec_id=exec_id, stdin=stdin), empty_pb2.Empty)

    async def pause(self, container_id: str) -> None:
        t = self._task(container_id)
        await t.shim.call("Pause", shim_pb2.PauseRequest(id=container_id), empty_pb2.Empty)

    async def resume(self, container_id: str) -> None:
        t = self._task(container_id)
        await t.shim.call("Resume", shim_pb2.ResumeRequest(id=container_id), empty_pb2.Empty)

    async def pids(self, container_id: str) -> builtins.list[tuple[int, AnyValue | None]]:
        t = self._task(container_id)
        r = await t.shim.call("Pids", shim_pb2.PidsRequest(id=container_id),
                              shim_pb2.PidsResponse)
        return [(p.pid, AnyValue(p.info.type_url, p.info.value) if p.HasField("info") else None)
                for p in r.processes]

    async def update(self, container_id: str, resources: AnyValue | None,
                     annotations: Mapping[str, str], hooks: bool = True) -> None:
        """Tasks.Update; with ``hooks`` (not for updates NRI plugins asked for) the OCI
        resources go through UpdateContainer first and PostUpdateContainer after."""
        t = self._task(container_id)
        nri = self.nri if hooks and resources is not None \
            and resources.type_url.endswith(RESOURCES_TYPE) else None
        new: dict[str, Any] = {}
        if nri is not None and resources is not None:
            try:
                current = json.loads(resources.value or b"{}")
            except ValueError:
                raise InvalidArgument("resources: not a LinuxResources JSON document") from None
            if not isinstance(current, dict):
                raise InvalidArgument("resources: not a LinuxResources JSON document")
            spec = await self._nri_spec(t)
            new = await nri.update(spec, current, t.id, t.labels, t.sandbox)
            if new != current:
                resources = AnyValue(resources.type_url, json.dumps(new).encode())
        req = shim_pb2.UpdateTaskRequest(id=container_id, annotations=dict(annotations))
        if resources is not None:
            req.resources.CopyFrom(any_pb2.Any(type_url=resources.type_url, value=resources.value))
        await t.shim.call("Update", req, empty_pb2.Empty)
        if nri is not None:
            spec = await self._nri_spec(t)
            if spec:
                spec.setdefault("linux", {}).setdefault("resources", {}).update(new)
            await nri.post_update(spec, t.id, t.labels, t.sandbox, t.pid)

    async def metrics(self, filters: Sequence[str]) -> builtins.list[tuple[str, AnyValue | None]]:
        ns = namespace()
        tasks = [t for (n, _), t in sorted(self.tasks.items()) if n == ns and not t.gone]
        if filters and any(filters):
            from moorage.filters import parse

            flt = parse([f for f in filters if f])

            def adaptor(t: Task) -> Callable[[Sequence[str]], tuple[str, bool]]:
                return lambda p: (t.id, True) if list(p) == ["id"] else ("", False)

            tasks = [t for t in tasks if flt.match(adaptor(t))]

        async def one(t: Task) -> tuple[str, AnyValue | None]:
            try:
                r = await t.shim.call("Stats", shim_pb2.StatsRequest(id=t.id),
                                      shim_pb2.StatsResponse, timeout=10)
            except Error:
                return t.id, None
            return t.id, (AnyValue(r.stats.type_url, r.stats.value)
                          if r.HasField("stats") else None)

        return list(await asyncio.gather(*(one(t) for t in tasks)))

    async def wait(self, container_id: str, exec_id: str = "") -> ExitInfo:
        t = self._task(container_id)
        if exec_id:
            r = await t.shim.call("Wait", shim_pb2.WaitRequest(id=container_id, exec_id=exec_id),
                                  shim_pb2.WaitResponse, timeout=None)
            return ExitInfo(0, r.exit_status, _ns(r.exited_at))
        return await asyncio.shield(t.exited)

    def has_task(self, ns: str, id: str) -> bool:
        t = self.tasks.get((ns, id))
        return (t is not None and not t.gone) or (ns, id) in self._creating

    # ---- recovery ------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reconnect to every recorded shim; reap orphans; clean up dead shims."""
        recorded = set()
        for rec in self.records.all():
            recorded.add((rec.namespace, rec.id))
            token = current_namespace.set(rec.namespace)
            try:
                await self._recover_one(rec)
            except Exception as exc:
                self.log.error("recover %s/%s: %s", rec.namespace, rec.id, exc)
            finally:
                current_namespace.reset(token)
        for b in self.bundles.list():
            if (b.namespace, b.id) not in recorded:
                self.log.warning("removing bundle without a shim record: %s", b.path)
                b.remove()

    async def _recover_one(self, rec: ShimRecord) -> None:
        bundle = Bundle(Path(rec.bundle), rec.namespace, rec.id)
        address = rec.address or bundle.shim_address().removeprefix("unix://")
        task = Task(rec.namespace, rec.id, bundle, ShimConn(address, None), rec)  # type: ignore[arg-type]
        # first the shim's log fifo: without a reader the shim blocks on its next log line
        self._watch_log(task)
        conn: ShimConn | None = None
        if address:
            with contextlib.suppress(Error, OSError):
                conn = await self._shim_conn(address)
        if conn is not None:
            task.shim = conn
        if rec.phase != "created":
            self.log.warning("reaping orphan shim of %s/%s (runtime stopped before create)",
                             rec.namespace, rec.id)
            if conn is not None:
                conn.tasks.add((rec.namespace, rec.id))
                with contextlib.suppress(Exception):
                    await conn.call("Kill", shim_pb2.KillRequest(id=rec.id, signal=9, all=True),
                                    empty_pb2.Empty, timeout=5)
                with contextlib.suppress(Exception):
                    await conn.call("Delete", shim_pb2.DeleteRequest(id=rec.id),
                                    shim_pb2.DeleteResponse, timeout=5)
                with contextlib.suppress(Exception):
                    await conn.call("Shutdown", shim_pb2.ShutdownRequest(id=rec.id, now=True),
                                    empty_pb2.Empty, timeout=5)
                await self._release(task)
            elif address or bundle.path.joinpath("runtime").exists():
                with contextlib.suppress(Exception):
                    await run_delete(self.flags, rec.binary, rec.namespace, rec.id, bundle.path)
            self._unwatch_log(task)
            bundle.remove()
            if rec.shim_bundle:
                task.shim_bundle.remove()
            self.records.delete(rec.namespace, rec.id)
            return
        if conn is None:
            task.gone = False
            await self._dead(task)
            return
        conn.tasks.add((rec.namespace, rec.id))
        try:
            st = await conn.call("State", shim_pb2.StateRequest(id=rec.id),
                                 shim_pb2.StateResponse, timeout=10)
        except NotFound:
            await self._dead(task)
            return
        task.pid = st.pid
        task.stdio = StdIO(st.stdin, st.stdout, st.stderr, st.terminal)
        if rec.logged:
            task.io = LoggedIO.reopen(bundle.io_dir, self.log_path(rec.namespace, rec.id))
        self.tasks[(rec.namespace, rec.id)] = task
        task.waiter = asyncio.get_running_loop().create_task(self._wait_exit(task))

    # ---- shim events ----------------------------------------------------------------------

    async def follow_events(self) -> None:
        """Task state from the shims' events too: `/tasks/exit` of an init process (forwarded
        by the proxy) settles the task's exit even if its Wait call was lost. Reconnects
        while the runtime runs; events are not durable, so Wait and State stay the truth."""
        from moorage.api.containerd.services.events.v1 import events_pb2 as evpb
        from moorage.api.containerd.types import event_pb2

        if self._proxy is None:
            return
        while not self._closing:
            try:
                client = await self._proxy()
                stream = client.server_stream(
                    "containerd.services.events.v1.Events", "Subscribe",
                    evpb.SubscribeRequest(filters=['topic=="/tasks/exit"']),
                    event_pb2.Envelope)
                async for env in stream:
                    ev = events_pb2.TaskExit()
                    ev.ParseFromString(env.event.value)
                    t = self.tasks.get((env.namespace, ev.container_id))
                    if t is not None and ev.id == ev.container_id and not t.exited.done() \
                            and (not t.pid or ev.pid == t.pid):
                        t.exited.set_result(ExitInfo(ev.pid, ev.exit_status, _ns(ev.exited_at)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.debug("events: %s", exc)
            if not self._closing:
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Stop watching (the shims and their containers keep running)."""
        self._closing = True
        for w in list(self._warm.values()):
            await self._discard_warm(w)
        self._warm.clear()
        for t in list(self.tasks.values()):
            if t.waiter is not None:
                t.waiter.cancel()
            self._unwatch_log(t)
            if t.io is not None:
                t.io.close()
        for conn in list(self.shims.values()):
            await conn.close()
        self.shims.clear()
