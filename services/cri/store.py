"""The CRI runtime (contract.Runtime) on the sandbox and runtime services.

A pod: a sandbox record and instance in the sandbox service (``podsandbox`` sandboxer:
network namespace, CNI with the pod's port mappings, hostname/hosts/resolv.conf), then a
pause container in the runtime service whose id is the pod's id, started in that network
namespace and the runc shim group of the pod. A container: a runtime container (snapshot
prepared on the image's chain id, spec from :mod:`.ocispec`) whose task is created at
start with stdio fifos this process copies into the CRI log (:mod:`.cio`).

One exit watcher per started task (a Tasks.Wait held open through the proxy) records
the exit (code, reason: ``Completed``, ``Error``, ``OOMKilled``; a task that is gone, its
exit unknown, is code 255 reason ``Unknown``) and deletes the task at once, as containerd's
CRI does; a pod whose pause exited is NOTREADY. Every step that
creates something arms its undo; a failed RunPodSandbox/CreateContainer/StartContainer
undoes what it did (shielded from the caller's cancellation). Operations on one pod or
container are serialised by a per-id lock. A running container's stats are what its shim
measures (Tasks.Metrics); a pod's, and a container's without a task, are read from cgroupfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from moorage.annotations import SANDBOX_NAME, SANDBOX_NAMESPACE, SANDBOX_UID
from moorage.errdefs import (
    Error,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from moorage.leasing import hold
from moorage.namespaces import current_namespace
from moorage.services.runtime import metrics
from moorage.services.runtime.contract import AnyValue as RAny
from moorage.services.runtime.contract import Container as RContainer
from moorage.services.runtime.contract import CreateTask, RuntimeInfo, Status, StdIO
from moorage.services.runtime.contract import Mount as RMount
from moorage.services.runtime.spec import SPEC_TYPE_URL, ImageConfig, dumps
from moorage.services.sandbox.contract import POD_CONFIG_TYPE, CreateOptions, Sandbox
from moorage.services.sandbox.contract import AnyValue as SAny
from moorage.services.sandbox.contract import DNSConfig as SDns
from moorage.services.sandbox.contract import PodConfig as SPod
from moorage.services.sandbox.contract import PortMapping as SPort
from moorage.services.sandbox.contract import Runtime as SRuntime

from . import ocispec, stats
from .cio import ContainerIO
from .config import CriConfig
from .contract import (
    Container,
    ContainerConfig,
    ContainerFilter,
    ContainerState,
    ContainerStats,
    ExecResult,
    Image,
    Images,
    NamespaceMode,
    Pod,
    PodConfig,
    PodFilter,
    PodState,
    PodStats,
    Resources,
    Usage,
)
from .execsync import exec_sync
from .names import NameIndex
from .peers import Peers
from .records import Records, encode

KIND_LABEL = "io.cri-containerd.kind"
POD_EXTENSION = "io.moorage.cri.pod"
POD_TYPE = "moorage.cri.v1.PodSandboxConfig"
IO_DRAIN = 2.0
KILL_WAIT = 30.0
CLOSE_WAIT = 10.0
UNKNOWN_EXIT_CODE = 255
UNKNOWN_EXIT_REASON = "Unknown"
"""containerd's CRI (unknownExitCode/unknownExitReason) for a task that is gone, its exit unknown."""

def _ignore_missing(exc: BaseException) -> bool:
    return isinstance(exc, NotFound)


class CriRuntime:
    """contract.Runtime over ``peers``, with images resolved (and the sandbox image pulled
    when missing) by ``images``."""

    def __init__(self, cfg: CriConfig, peers: Peers, images: Images, root: Path, state: Path,
                 logger: logging.Logger) -> None:
        self.cfg = cfg
        self.peers = peers
        self.images = images
        self.log = logger
        self.pods: Records[Pod] = Records(root / "pods", Pod)
        self.ctrs: Records[Container] = Records(root / "containers", Container)
        self.io_root = state / "io"
        self.exec_root = state / "exec"
        self.io_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.exec_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.names = NameIndex()
        for p in self.pods:
            self.names.reserve(p.config.metadata.reserved_name(), p.id)
        for c in self.ctrs:
            if c.reserved_name:
                self.names.reserve(c.reserved_name, c.id)
        self.io: dict[str, ContainerIO] = {}
        self.exited: dict[str, asyncio.Event] = {}
        """Set when the task of a pod's pause or a container has exited and been recorded."""
        for p in self.pods:
            if p.state == PodState.READY:
                self.exited[p.id] = asyncio.Event()
        for c in self.ctrs:
            if c.state == ContainerState.RUNNING:
                self.exited[c.id] = asyncio.Event()
        self.watchers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        restrict = cfg.restrict_oom_score_adj == "on" or (
            cfg.restrict_oom_score_adj == "auto" and not ocispec.can_lower_oom_score_adj())
        self.clamp = ocispec.OomClamp(restrict)
        self._background: set[asyncio.Task[None]] = set()
        self._creating: set[str] = set()
        """Containers being created (their runtime record exists before ours)."""
        self._closing = False

    # helpers -------------------------------------------------------------------------------

    def _lock(self, id: str) -> asyncio.Lock:
        return self._locks.setdefault(id, asyncio.Lock())

    def _pod(self, pod_id: str) -> Pod:
        pod = self.pods.get(pod_id)
        if pod is None:
            raise NotFound(f'pod sandbox "{pod_id}" not found')
        return pod

    def _ctr(self, id: str) -> Container:
        c = self.ctrs.get(id)
        if c is None:
            raise NotFound(f'container "{id}" not found')
        return c

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _undo(self, steps: list[tuple[str, Callable[[], Awaitable[Any]]]]) -> None:
        for what, fn in reversed(steps):
            try:
                await fn()
            except NotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - undo is best effort, each step on its own
                self.log.warning("undo %s: %s", what, exc)

    async def _rollback(self, steps: list[tuple[str, Callable[[], Awaitable[Any]]]]) -> None:
        task = self._spawn(self._undo(steps))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    def _containers_of(self, pod_id: str) -> list[Container]:
        return [c for c in self.ctrs if c.pod_id == pod_id]

    # pods ----------------------------------------------------------------------------------

    async def _sandbox_image(self) -> Image:
        return await self.images.ensure(self.cfg.sandbox_image)

    async def run_pod(self, config: PodConfig, runtime_handler: str = "") -> str:
        md = config.metadata
        if not md.name or not md.namespace or not md.uid:
            raise InvalidArgument("sandbox metadata: name, namespace and uid are required")
        if config.privileged and not self.cfg.allow_privileged:
            from moorage.errdefs import PermissionDenied

            raise PermissionDenied("privileged pods are not allowed ([cri] allow_privileged = false)")
        runtime = self.cfg.runtime_handlers.get(runtime_handler) if runtime_handler else self.cfg.runtime
        if runtime is None:
            raise NotFound(f'no runtime for "{runtime_handler}" is configured')
        ocispec.check_sysctls(config)
        id = secrets.token_hex(32)
        name = md.reserved_name()
        self.names.reserve(name, id)
        undo: list[tuple[str, Callable[[], Awaitable[Any]]]] = [("name", self._release_name(name))]
        ns = current_namespace.get() or self.cfg.namespace
        cgroup = ocispec.cgroup_path(config.cgroup_parent, self.cfg.default_cgroup_parent, id)
        pod = Pod(id, config, PodState.NOTREADY, time.time_ns(), runtime_handler=runtime_handler, cgroup_path=cgroup,
                  runtime=runtime)
        try:
            self.pods.put(pod)
            undo.append(("record", self._forget_pod(id)))
            async with hold(self.peers.leases):
                pid, info, ips = await self._start_pod(id, ns, config, cgroup, runtime_handler, runtime, undo)
            pod.state, pod.pause_pid, pod.info = PodState.READY, pid, info
            pod.netns_path = info.get("netns_path", "")
            pod.ip, pod.additional_ips = (ips[0] if ips else ""), tuple(ips[1:])
            self.pods.put(pod)
        except BaseException:
            await self._rollback(undo)
            raise
        self.exited[id] = asyncio.Event()
        self.watchers[id] = self._spawn(self._watch(id, ns))
        return id

    async def _start_pod(self, id: str, ns: str, config: PodConfig, cgroup: str, handler: str, runtime: str,
                         undo: list[tuple[str, Callable[[], Awaitable[Any]]]]) -> tuple[int, dict[str, str], list[str]]:
        """The sandbox (network) and, concurrently, the pause's rootfs; then the pause started:
        its pid, the sandbox's status info, the pod's IPs."""
        rootfs = asyncio.ensure_future(self._pause_rootfs(id, undo))
        try:
            store = await self.peers.sandbox_store()
            labels = {**dict(config.labels), KIND_LABEL: "sandbox"}
            record = Sandbox(
                id, SRuntime(runtime), sandboxer=self.cfg.sandboxer, labels=labels,
                extensions={POD_EXTENSION: SAny(POD_TYPE, json.dumps(encode(config)).encode())})
            await store.create(record)
            undo.append(("sandbox record", lambda: store.delete(id)))
            ctrl = await self.peers.controller(self.cfg.sandboxer)
            md = config.metadata  # the pod as NRI plugins are told of it (as containerd's CRI)
            notes = {**dict(config.annotations), SANDBOX_NAME: md.name, SANDBOX_NAMESPACE: md.namespace,
                     SANDBOX_UID: md.uid}
            await ctrl.create(id, CreateOptions(options=SAny(POD_CONFIG_TYPE, _sandbox_options(id, config).to_json()),
                                                annotations=notes, sandbox=record))
            undo.append(("sandbox", lambda: ctrl.shutdown(id)))
            await ctrl.start(id)
            info = dict((await ctrl.status(id)).info)
            image, mounts = await rootfs
        finally:
            # never cancelled half-way: once done, its snapshot's undo step is armed
            with contextlib.suppress(Exception):
                await asyncio.shield(rootfs)
        ips = [ip for ip in info.get("ips", "").split(",") if ip]
        spec = ocispec.pause_spec(ns, id, config, ImageConfig.from_json(image.config), info, cgroup=cgroup,
                                  clamp=self.clamp, allow_privileged=self.cfg.allow_privileged,
                                  pod_annotations=self.cfg.pod_annotations.get(handler, ()))
        containers = await self.peers.containers()
        await containers.create(RContainer(
            id, RuntimeInfo(runtime), spec=RAny(SPEC_TYPE_URL, dumps(spec)), image=image.name,
            labels={**dict(config.labels), KIND_LABEL: "sandbox"}, snapshotter=self.cfg.snapshotter,
            snapshot_key=id, sandbox=id))
        undo.append(("pause container", lambda: containers.delete(id)))
        tasks = await self.peers.tasks()
        await tasks.create(CreateTask(id, rootfs=tuple(mounts)))
        undo.append(("pause task", lambda: self._kill_and_delete(id)))
        pid = await tasks.start(id)
        return pid, info, ips

    async def _pause_rootfs(self, id: str, undo: list[tuple[str, Callable[[], Awaitable[Any]]]]
                            ) -> tuple[Image, list[RMount]]:
        """The sandbox image (pulled if missing) and the pause's rootfs snapshot on it; runs
        while the sandbox service sets up the network."""
        image = await self._sandbox_image()
        mounts = await self.peers.prepare_snapshot(self.cfg.snapshotter, id, image.chain_id)
        undo.append(("snapshot", lambda: self.peers.remove_snapshot(self.cfg.snapshotter, id)))
        return image, mounts

    def _release_name(self, name: str) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            self.names.release(name)
        return release

    def _forget_pod(self, id: str) -> Callable[[], Awaitable[None]]:
        async def forget() -> None:
            self.pods.delete(id)
        return forget

    async def _kill_and_delete(self, id: str) -> None:
        tasks = await self.peers.tasks()
        with contextlib.suppress(NotFound, FailedPrecondition):
            await tasks.kill(id, int(signal.SIGKILL), all=True)
        with contextlib.suppress(NotFound):
            await asyncio.wait_for(tasks.wait(id), KILL_WAIT)
        with contextlib.suppress(NotFound):
            await tasks.delete(id)

    async def stop_pod(self, pod_id: str) -> None:
        pod = self.pods.get(pod_id)
        if pod is None:
            return
        for c in self._containers_of(pod_id):
            await self.stop_container(c.id, 0)
        async with self._lock(pod_id):
            await self._stop_task(pod_id, 0, signal.SIGKILL)
            ctrl = await self.peers.controller(self.cfg.sandboxer)
            with contextlib.suppress(NotFound):
                await ctrl.stop(pod_id)
            if pod.state != PodState.NOTREADY:
                pod.state = PodState.NOTREADY
                self.pods.put(pod)

    async def remove_pod(self, pod_id: str) -> None:
        pod = self.pods.get(pod_id)
        if pod is None:
            return
        await self.stop_pod(pod_id)
        for c in self._containers_of(pod_id):
            await self.remove_container(c.id)
        async with self._lock(pod_id):
            with contextlib.suppress(NotFound):
                await (await self.peers.tasks()).delete(pod_id)
            with contextlib.suppress(NotFound):
                await (await self.peers.containers()).delete(pod_id)
            with contextlib.suppress(NotFound):
                await self.peers.remove_snapshot(self.cfg.snapshotter, pod_id)
            with contextlib.suppress(NotFound):
                await (await self.peers.controller(self.cfg.sandboxer)).shutdown(pod_id)
            with contextlib.suppress(NotFound):
                await (await self.peers.sandbox_store()).delete(pod_id)
            self.names.release(pod.config.metadata.reserved_name())
            self.pods.delete(pod_id)
            self.exited.pop(pod_id, None)
        self._locks.pop(pod_id, None)

    async def pod(self, pod_id: str) -> Pod:
        return self._pod(self._resolve(self.pods.items, pod_id, "pod sandbox"))

    async def list_pods(self, flt: PodFilter | None = None) -> list[Pod]:
        out = []
        for p in sorted(self.pods, key=lambda p: p.created_at):
            if flt is not None:
                if flt.id and not p.id.startswith(flt.id):
                    continue
                if flt.state is not None and p.state != flt.state:
                    continue
                if any(p.config.labels.get(k) != v for k, v in flt.labels.items()):
                    continue
            out.append(p)
        return out

    @staticmethod
    def _resolve(items: dict[str, Any], id: str, what: str) -> str:
        """A full id for a unique prefix of one (as containerd's truncindex)."""
        if id in items:
            return id
        found = [k for k in items if id and k.startswith(id)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidArgument(f'{what} id "{id}" is ambiguous')
        raise NotFound(f'{what} "{id}" not found')

    # containers ----------------------------------------------------------------------------

    async def create_container(self, pod_id: str, config: ContainerConfig) -> str:
        pod = self._pod(self._resolve(self.pods.items, pod_id, "pod sandbox"))
        if pod.state != PodState.READY:
            raise FailedPrecondition(f'pod sandbox "{pod.id}" is not ready')
        if not config.metadata.name:
            raise InvalidArgument("container metadata: name is required")
        md = pod.config.metadata
        name = "_".join((config.metadata.name, md.name, md.namespace, md.uid, str(config.metadata.attempt)))
        id = secrets.token_hex(32)
        self.names.reserve(name, id)
        ns = current_namespace.get() or self.cfg.namespace
        undo: list[tuple[str, Callable[[], Awaitable[Any]]]] = [("name", self._release_name(name))]
        try:
            image = await self.images.resolve(config.image)
            self._creating.add(id)
            async with hold(self.peers.leases):
                await self._create_container(id, ns, pod, config, name, image, undo)
        except BaseException:
            await self._rollback(undo)
            raise
        finally:
            self._creating.discard(id)
        return id

    async def _create_container(self, id: str, ns: str, pod: Pod, config: ContainerConfig, name: str, image: Image,
                                undo: list[tuple[str, Callable[[], Awaitable[Any]]]]) -> None:
        """The rootfs snapshot, the spec and the runtime container (under the caller's lease)."""
        image_config = ImageConfig.from_json(image.config)
        target_pid = 0
        if config.security.namespaces.pid == NamespaceMode.TARGET:
            target = self.ctrs.get(config.security.namespaces.target_id)
            target_pid = target.pid if target is not None and target.state == ContainerState.RUNNING else 0
        from moorage.services.runtime import rootfs as rfs

        mounts = await self.peers.prepare_snapshot(self.cfg.snapshotter, id, image.chain_id)
        undo.append(("snapshot", lambda: self.peers.remove_snapshot(self.cfg.snapshotter, id)))
        cgroup = ocispec.cgroup_path(pod.config.cgroup_parent, self.cfg.default_cgroup_parent, id)
        handler = pod.runtime_handler
        spec = ocispec.container_spec(ns, id, pod.id, pod.config, config, image_config, image.name, pod.info,
                                      pod.pause_pid, cgroup=cgroup, clamp=self.clamp,
                                      allow_privileged=self.cfg.allow_privileged,
                                      read_rootfs=rfs.reader(mounts), target_pid=target_pid,
                                      pod_annotations=self.cfg.pod_annotations.get(handler, ()),
                                      container_annotations=self.cfg.container_annotations.get(handler, ()))
        log_path = ""
        if config.log_path:
            log_path = os.path.join(pod.config.log_directory, config.log_path) if pod.config.log_directory \
                else config.log_path
        containers = await self.peers.containers()
        await containers.create(RContainer(
            id, RuntimeInfo(pod.runtime or self.cfg.runtime), spec=RAny(SPEC_TYPE_URL, dumps(spec)),
            image=image.name, labels={**dict(config.labels), KIND_LABEL: "container"}, snapshotter=self.cfg.snapshotter,
            snapshot_key=id, sandbox=pod.id))
        undo.append(("container", lambda: containers.delete(id)))
        self.ctrs.put(Container(id, pod.id, config, image.name, image.id, ContainerState.CREATED, time.time_ns(),
                                log_path=log_path, cgroup_path=cgroup, reserved_name=name,
                                stop_signal=config.stop_signal or _stop_signal(image.config),
                                image_digest=image.repo_digests[0] if image.repo_digests else ""))

    async def start_container(self, container_id: str) -> None:
        id = self._resolve(self.ctrs.items, container_id, "container")
        async with self._lock(id):
            c = self._ctr(id)
            if c.state != ContainerState.CREATED:
                raise FailedPrecondition(f'container "{id}" is in {c.state.name} state, want CREATED')
            pod = self._pod(c.pod_id)
            if pod.state != PodState.READY:
                raise FailedPrecondition(f'pod sandbox "{pod.id}" of container "{id}" is not ready')
            ns = current_namespace.get() or self.cfg.namespace
            cio: ContainerIO | None = None
            tasks = await self.peers.tasks()
            try:
                cio = ContainerIO.create(self.io_root / id, c.log_path, stdin=c.config.stdin, tty=c.config.tty)
                cio.stdin_once = c.config.stdin_once
                stdin, stdout, stderr = cio.paths()
                await tasks.create(CreateTask(id, stdio=StdIO(stdin, stdout, stderr, c.config.tty)))
                cio.attached()
                self.io[id] = cio
                self.exited[id] = asyncio.Event()
                c.pid = await tasks.start(id)
            except BaseException as exc:
                self.io.pop(id, None)
                task = self._spawn(self._undo([("task", lambda: self._kill_and_delete(id))]))
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
                if cio is not None:
                    cio.remove()
                c.state, c.finished_at, c.exit_code = ContainerState.EXITED, time.time_ns(), 128
                c.reason, c.message = "StartError", str(exc)
                self.ctrs.put(c)
                self.exited.setdefault(id, asyncio.Event()).set()
                raise
            c.state, c.started_at = ContainerState.RUNNING, time.time_ns()
            self.ctrs.put(c)
            self.watchers[id] = self._spawn(self._watch(id, ns))

    async def stop_container(self, container_id: str, timeout: float) -> None:
        c = self.ctrs.get(container_id)
        if c is None:
            return
        sig = _signal(c.stop_signal)
        async with self._lock(c.id):
            if c.state != ContainerState.RUNNING:
                return
            await self._stop_task(c.id, timeout, sig)

    async def _stop_task(self, id: str, timeout: float, sig: int) -> None:
        """Signal ``id``'s task (``sig`` then SIGKILL after ``timeout``) until its watcher saw it exit."""
        event = self.exited.get(id)
        if event is None or event.is_set():
            return
        tasks = await self.peers.tasks()
        if timeout > 0 and sig != signal.SIGKILL:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await tasks.kill(id, sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        while not event.is_set():
            with contextlib.suppress(NotFound, FailedPrecondition):
                await tasks.kill(id, int(signal.SIGKILL), all=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), KILL_WAIT)

    async def remove_container(self, container_id: str) -> None:
        c = self.ctrs.get(container_id)
        if c is None:
            return
        if c.state == ContainerState.RUNNING:
            await self.stop_container(c.id, 0)
        async with self._lock(c.id):
            if self.ctrs.get(c.id) is None:
                return
            with contextlib.suppress(NotFound):
                await (await self.peers.tasks()).delete(c.id)
            with contextlib.suppress(NotFound):
                await (await self.peers.containers()).delete(c.id)
            with contextlib.suppress(NotFound):
                await self.peers.remove_snapshot(self.cfg.snapshotter, c.id)
            cio = self.io.pop(c.id, None)
            if cio is not None:
                cio.remove()
            else:
                ContainerIO(self.io_root / c.id, "", False, False).remove()
            if c.reserved_name:
                self.names.release(c.reserved_name)
            self.ctrs.delete(c.id)
            self.exited.pop(c.id, None)
        self._locks.pop(c.id, None)

    async def container(self, container_id: str) -> Container:
        return self._ctr(self._resolve(self.ctrs.items, container_id, "container"))

    async def list_containers(self, flt: ContainerFilter | None = None) -> list[Container]:
        out = []
        for c in sorted(self.ctrs, key=lambda c: c.created_at):
            if flt is not None:
                if flt.id and not c.id.startswith(flt.id):
                    continue
                if flt.state is not None and c.state != flt.state:
                    continue
                if flt.pod_id and not c.pod_id.startswith(flt.pod_id):
                    continue
                if any(c.config.labels.get(k) != v for k, v in flt.labels.items()):
                    continue
            out.append(c)
        return out

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        id = self._resolve(self.ctrs.items, container_id, "container")
        async with self._lock(id):
            c = self._ctr(id)
            if c.state not in (ContainerState.CREATED, ContainerState.RUNNING):
                raise FailedPrecondition(f'container "{id}" is in {c.state.name} state')
            containers = await self.peers.containers()
            rc = await containers.get(id)
            spec = json.loads(rc.spec.value) if rc.spec is not None else {}
            res = ocispec.linux_resources(resources)
            spec.setdefault("linux", {}).setdefault("resources", {}).update(res)
            if resources.oom_score_adj:
                spec.setdefault("process", {})["oomScoreAdj"] = self.clamp(resources.oom_score_adj, f"container {id}")
            rc.spec = RAny(SPEC_TYPE_URL, dumps(spec))
            await containers.update(rc, ["spec"])
            if c.state == ContainerState.RUNNING:
                await self.peers.update_task(id, res)
            from dataclasses import replace

            c.config = replace(c.config, resources=resources)
            self.ctrs.put(c)

    async def reopen_log(self, container_id: str) -> None:
        c = self._ctr(self._resolve(self.ctrs.items, container_id, "container"))
        cio = self.io.get(c.id)
        if c.state != ContainerState.RUNNING or cio is None:
            raise FailedPrecondition(f'container "{c.id}" is not running')
        cio.reopen_log()

    async def exec_sync(self, container_id: str, cmd: tuple[str, ...], timeout: float) -> ExecResult:
        c = self._ctr(self._resolve(self.ctrs.items, container_id, "container"))
        if c.state != ContainerState.RUNNING:
            raise FailedPrecondition(f'container "{c.id}" is not running')
        if not cmd:
            raise InvalidArgument("exec: a command is required")
        rc = await (await self.peers.containers()).get(c.id)
        spec = json.loads(rc.spec.value) if rc.spec is not None else {}
        return await exec_sync(self.peers, self.exec_root, c.id, spec.get("process") or {}, cmd, timeout,
                               self.cfg.max_exec_output)

    def container_io(self, container_id: str) -> ContainerIO | None:
        """The stdio of a running container (the streaming server's Attach)."""
        return self.io.get(container_id)

    # stats ---------------------------------------------------------------------------------

    async def _usages(self, cs: list[Container]) -> dict[str, Usage]:
        """The usage of each of ``cs`` with a running task as its shim measures it (the
        runtime's Tasks.Metrics, as containerd's CRI takes it); the others are left out."""
        ids = [c.id for c in cs if c.state == ContainerState.RUNNING]
        try:
            got = await self.peers.metrics(ids)
        except (Error, OSError) as exc:
            self.log.debug("task metrics of %s: %s", ", ".join(ids), exc)
            return {}
        now = time.time_ns()
        out: dict[str, Usage] = {}
        for id, (type_url, value) in got.items():
            try:
                out[id] = Usage(now, metrics.decode(type_url, value))
            except Error as exc:
                self.log.debug("task metrics of %s: %s", id, exc)
        return out

    async def _stats(self, c: Container, usage: Usage | None) -> ContainerStats:
        """``c``'s stats with ``usage`` from its task's metrics; a container without them
        (no running task) reads its cgroup, when it has one."""
        live = c.state in (ContainerState.CREATED, ContainerState.RUNNING)
        if usage is None:
            usage = stats.usage(c.cgroup_path) if live else Usage(time.time_ns())
        size = inodes = 0
        if live:
            try:
                size, inodes = await self.peers.snapshot_usage(self.cfg.snapshotter, c.id)
            except Error as exc:
                self.log.debug("writable layer of %s: %s", c.id, exc)
        return ContainerStats(c.id, c.pod_id, c.config.metadata.name, c.config.metadata.attempt,
                              dict(c.config.labels), dict(c.config.annotations), usage, size, inodes)

    async def _many_stats(self, cs: list[Container]) -> list[ContainerStats]:
        usages = await self._usages(cs)
        return list(await asyncio.gather(*(self._stats(c, usages.get(c.id)) for c in cs)))

    async def container_stats(self, container_id: str) -> ContainerStats:
        return (await self._many_stats([await self.container(container_id)]))[0]

    async def list_container_stats(self, flt: ContainerFilter | None = None) -> list[ContainerStats]:
        live = [c for c in await self.list_containers(flt) if c.state in (ContainerState.CREATED, ContainerState.RUNNING)]
        return await self._many_stats(live)

    async def _pod_stats(self, pod: Pod) -> PodStats:
        running = [c for c in self._containers_of(pod.id) if c.state == ContainerState.RUNNING]
        ctrs = tuple(await self._many_stats(running))
        if pod.config.cgroup_parent:
            usage = stats.usage(pod.config.cgroup_parent)
        else:
            usage = stats.usage(pod.cgroup_path) if pod.state == PodState.READY else Usage(time.time_ns())
            for c in ctrs:
                usage = stats.add(usage, c.usage)
        return PodStats(pod, usage, ctrs)

    async def pod_stats(self, pod_id: str) -> PodStats:
        return await self._pod_stats(await self.pod(pod_id))

    async def list_pod_stats(self, flt: PodFilter | None = None) -> list[PodStats]:
        return list(await asyncio.gather(*(self._pod_stats(p) for p in await self.list_pods(flt))))

    # exits ---------------------------------------------------------------------------------

    async def _watch(self, id: str, ns: str) -> None:
        """Wait for ``id``'s task to exit; record it; delete the task."""
        current_namespace.set(ns)
        code, exited_at, unknown = UNKNOWN_EXIT_CODE, 0, True
        while not self._closing:
            try:
                tasks = await self.peers.tasks()
                info = await tasks.wait(id)
                code, exited_at, unknown = info.exit_status, info.exited_at, False
                break
            except NotFound:
                break
            except asyncio.CancelledError:
                raise
            except (Unavailable, Error, OSError) as exc:
                self.log.debug("wait %s: %s (retrying)", id, exc)
                await asyncio.sleep(1.0)  # the proxy or the runtime restarts
        if self._closing:
            return
        await self._exited(id, code, exited_at, unknown=unknown)

    async def _exited(self, id: str, code: int, exited_at: int, *, unknown: bool = False) -> None:
        """Record the exit of ``id``'s task and delete the task; whatever fails on the way,
        the exit is signalled (a StopContainer waiting on it returns). ``unknown``: the task
        was gone (NotFound), so its exit is not known: code 255, reason ``Unknown``, unless
        the delete still reports it."""
        try:
            c = self.ctrs.get(id)
            oom = stats.oom_killed(c.cgroup_path) if c is not None else False
            try:
                tasks = await self.peers.tasks()
                info = await tasks.delete(id)
                code, exited_at, unknown = info.exit_status, info.exited_at or exited_at, False
            except NotFound:
                pass
            except Error as exc:
                self.log.warning("delete task %s: %s", id, exc)
            cio = self.io.pop(id, None)
            if cio is not None:
                await cio.wait(IO_DRAIN)
            if c is not None:
                code = UNKNOWN_EXIT_CODE if unknown else code
                c.state, c.exit_code, c.finished_at = ContainerState.EXITED, code, exited_at or time.time_ns()
                c.reason = UNKNOWN_EXIT_REASON if unknown else (
                    "OOMKilled" if oom else ("Completed" if code == 0 else "Error"))
                self.ctrs.put(c)
            pod = self.pods.get(id)
            if pod is not None and pod.state == PodState.READY:
                pod.state = PodState.NOTREADY
                self.pods.put(pod)
        except Exception:
            self.log.exception("recording the exit of %s", id)
        finally:
            self.watchers.pop(id, None)
            self.exited.setdefault(id, asyncio.Event()).set()

    # start and stop --------------------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: reattach the stdio, watch the tasks still running, record those that
        exited meanwhile. Safe to call again after a failure (what is done is skipped)."""
        ns = self.cfg.namespace
        current_namespace.set(ns)
        tasks = await self.peers.tasks()
        for id, kind in [(p.id, "pod") for p in self.pods if p.state == PodState.READY] + \
                [(c.id, "container") for c in self.ctrs if c.state == ContainerState.RUNNING]:
            if id in self.watchers or self.exited[id].is_set():
                continue  # done by an earlier attempt
            if kind == "container" and id not in self.io:
                c = self._ctr(id)
                cio = ContainerIO.reopen(self.io_root / id, c.log_path, c.config.stdin, c.config.tty)
                if cio is not None:
                    cio.stdin_once = c.config.stdin_once
                    self.io[id] = cio
            try:
                st = await tasks.get(id)
            except NotFound:
                st = None
            if st is not None and st.status in (Status.RUNNING, Status.PAUSED, Status.PAUSING, Status.CREATED):
                self.watchers[id] = self._spawn(self._watch(id, ns))
            elif st is None:
                await self._exited(id, UNKNOWN_EXIT_CODE, 0, unknown=True)
            else:
                await self._exited(id, st.exit_status, st.exited_at)

    async def reconcile(self) -> list[str]:
        """Remove what a crash left behind: runtime containers and sandboxes this process
        labelled (``io.cri-containerd.kind``) that no record names (the process died between
        creating them and recording them). Returns what it removed."""
        current_namespace.set(self.cfg.namespace)
        removed: list[str] = []
        containers = await self.peers.containers()
        for rc in await containers.list([f'labels."{KIND_LABEL}"']):
            if rc.id in self.ctrs.items or rc.id in self.pods.items or rc.id in self._creating:
                continue
            await self._kill_and_delete(rc.id)
            with contextlib.suppress(NotFound):
                await containers.delete(rc.id)
            with contextlib.suppress(NotFound):
                await self.peers.remove_snapshot(rc.snapshotter or self.cfg.snapshotter, rc.snapshot_key or rc.id)
            removed.append(f"container {rc.id}")
        store = await self.peers.sandbox_store()
        ctrl = await self.peers.controller(self.cfg.sandboxer)
        for sb in await store.list([f'labels."{KIND_LABEL}"==sandbox']):
            if sb.id in self.pods.items:
                continue
            with contextlib.suppress(NotFound):
                await ctrl.shutdown(sb.id)
            with contextlib.suppress(NotFound):
                await store.delete(sb.id)
            removed.append(f"sandbox {sb.id}")
        return removed

    async def close(self) -> None:
        """Stop watching (containers keep running; a restart picks them up again)."""
        self._closing = True
        watchers = set(self.watchers.values())
        for t in watchers:
            t.cancel()
        undoing = [t for t in self._background if t not in watchers]
        if undoing:  # a rollback in progress finishes (bounded), the rest is cancelled
            await asyncio.wait(undoing, timeout=CLOSE_WAIT)
        for t in list(self._background):
            t.cancel()
        for cio in self.io.values():
            cio.close()
        self.io.clear()


def _signal(name: str) -> int:
    if not name:
        return int(signal.SIGTERM)
    if name.isdigit():
        return int(name)
    n = name.upper()
    if not n.startswith("SIG"):
        n = "SIG" + n
    try:
        return int(signal.Signals[n])
    except KeyError:
        return int(signal.SIGTERM)


def _sandbox_options(id: str, config: PodConfig) -> SPod:
    """The sandbox service's pod options: hostname, DNS, host ports, host network, CNI args."""
    md = config.metadata
    return SPod(
        hostname=config.hostname,
        dns=SDns(config.dns.servers, config.dns.searches, config.dns.options) if config.dns else None,
        port_mappings=tuple(SPort(p.host_port, p.container_port, (p.protocol or "tcp").lower(), p.host_ip)
                            for p in config.port_mappings if p.host_port > 0),
        host_network=config.namespaces.network == NamespaceMode.NODE,
        cni_args=(("K8S_POD_NAMESPACE", md.namespace), ("K8S_POD_NAME", md.name), ("K8S_POD_INFRA_CONTAINER_ID", id),
                  ("K8S_POD_UID", md.uid), ("IgnoreUnknown", "1")),
    )


def _stop_signal(config: Mapping[str, Any]) -> str:
    inner = config.get("config")
    value = inner.get("StopSignal") if isinstance(inner, Mapping) else None
    return value if isinstance(value, str) else ""
