"""The NRI runtime side: plugins connect, register and get pod and container events.

:class:`Adaptation` is what containerd/nri's ``pkg/adaptation`` is for containerd. It
listens on the NRI socket, launches pre-installed plugins (:mod:`moorage.nri.launcher`),
and relays the lifecycle events its owner hands it (the hook API, :mod:`moorage.nri.api`)
to the plugins subscribed to them, in index order.

Per plugin: RegisterPlugin must arrive within ``registration_timeout``; then Configure
(the plugin's config, runtime name/version, timeouts in ms, our NRI version) whose reply is
its event mask (0 = all; bits outside the valid mask close it); then Synchronize with the
known pods and containers (split into chunks with ``more`` when one message would pass
ttrpc's 4 MiB, all chunks under one ``sync_timeout``); then it is inserted and gets events.
Events running when a sync starts finish first, new ones wait until the plugin is in
(:mod:`moorage.nri.gate`), so a plugin misses no container and sees none twice.

Per event call (``request_timeout`` each):
- DEADLINE_EXCEEDED: only this event goes on without the plugin (logged), which stays
  connected; after ``request_timeout_strikes`` timeouts in a row (default 3; 1 is upstream's
  drop-on-first-timeout) it is dropped (a launched one killed). Any answer resets the count.
  A plugin in ``required_plugins`` that times out on CreateContainer fails that creation
  (DeadlineExceeded naming it), and only that one;
- UNAVAILABLE (connection gone), CANCELLED, EOF: the plugin is dropped at once (a launched
  one killed) and the event carries on as if it had not been subscribed;
- UNIMPLEMENTED for an event with a StateChange form: the event is re-sent as StateChange
  (and always will be, for that plugin);
- any other error fails the operation: :class:`moorage.errdefs.Unknown` naming the plugin;
- adjustments and updates are merged by :class:`moorage.nri.adjust.Result`; two plugins
  touching one field fail the operation with Conflict naming both.
Plugins named in ``required_plugins`` must have answered CreateContainer, else the
creation fails (fail closed: absent, timed out or crashed alike).
Validators (VALIDATE_CONTAINER_ADJUSTMENT) run in parallel after all adjustments; a reject,
error, timeout or fatal failure fails the creation.

Updates plugins ask for (from Synchronize, events, or unsolicited UpdateContainers) go to
the ``updater`` the owner supplies; updates of containers other than the one in the event
are applied in the background, never while the caller waits, so a runtime that holds a lock
during CreateContainer cannot deadlock with them. No lock is held while a plugin is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

from moorage import errdefs
from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.api.nri.pkg.api.api_ttrpc import RuntimeServicer
from ttrpc.codes import Code
from ttrpc.errors import RpcError

from .adjust import Result
from .gate import Gate, gated
from .plugin import VALID_EVENTS, PluginConn, check_identity, event_bit, event_names

if TYPE_CHECKING:
    from .launcher import Child, Preinstalled
    from ttrpc.server import Context

log = logging.getLogger("moorage.nri")

NRI_VERSION = "v0.12.2"
PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
MAX_MESSAGE = 4 * 1024 * 1024
FATAL = (Code.UNAVAILABLE, Code.CANCELLED)
E = api.Event
M = TypeVar("M", bound=Message)

Updater = Callable[[Sequence[api.ContainerUpdate]], Awaitable[list[api.ContainerUpdate]]]
Evicter = Callable[[Sequence[api.ContainerEviction]], Awaitable[None]]


@dataclass(frozen=True)
class Options:
    """Runtime-side settings (see moorage.nri.config.NriConfig for the documented keys)."""

    socket_path: str = "/var/run/nri/nri.sock"
    registration_timeout: float = 5.0
    request_timeout: float = 2.0
    sync_timeout: float = 10.0
    disable_connections: bool = False
    runtime_name: str = "moorage"
    runtime_version: str = "dev"
    restart_delay: float = 1.0
    restart_max_delay: float = 30.0
    required_plugins: tuple[str, ...] = ()
    """Plugin names that must take part in every container creation (fail closed)."""
    request_timeout_strikes: int = 3
    """Request timeouts in a row after which a plugin is dropped (1: at the first, as upstream)."""


@dataclass(frozen=True)
class Missed:
    """A plugin gave no answer to one call: ``why`` (it says whether it was dropped);
    ``timed_out``, else it went away."""

    why: str
    timed_out: bool


async def _no_updates(updates: Sequence[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
    return list(updates)


async def _no_evictions(evictions: Sequence[api.ContainerEviction]) -> None:
    for e in evictions:
        log.warning("eviction of %s requested (%s): no evicter configured", e.container_id, e.reason)


class Adaptation:
    """The runtime side of NRI for one host (see the module docstring)."""

    def __init__(self, options: Options, updater: Updater = _no_updates, evicter: Evicter = _no_evictions) -> None:
        self.options = options
        self.updater = updater
        self.evicter = evicter
        self.plugins: list[PluginConn] = []
        self.pods: dict[str, api.PodSandbox] = {}
        self.containers: dict[str, api.Container] = {}
        self.configs: dict[str, str] = {}
        self._pending: set[PluginConn] = set()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._change: asyncio.Event | None = None
        self.gate = Gate()
        self._launch_dirs: tuple[Path, Path] = (Path("/etc/nri/conf.d"), Path("/run/nri"))
        self._launched_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._timeouts: dict[PluginConn, int] = {}
        """Request timeouts in a row, per plugin (absent: none since its last answer)."""

    def _changed(self) -> None:
        ev, self._change = self._change, None
        if ev is not None:
            ev.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate()`` holds, re-checked whenever a plugin comes or goes."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._change is None:
                    self._change = asyncio.Event()
                await self._change.wait()

    # plugins ---------------------------------------------------------------------------

    async def listen(self) -> None:
        """Bind the NRI socket (its folder 0700, the socket 0600) and accept plugins."""
        if self.options.disable_connections:
            return
        path = Path(self.options.socket_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()
            else:
                raise errdefs.AlreadyExists(f"{path} is already being served")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
        self._listener = sock
        self._accept_task = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if self._closed:
                    return
                log.warning("nri: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self._spawn(self.connect(conn))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def connect(self, trunk: socket.socket, launched: Child | None = None, name: str = "", idx: str = "",
                      config: str = "", origin: Preinstalled | None = None) -> PluginConn | None:
        """Run one plugin connection through registration, configuration and sync.

        Returns the plugin once it gets events, None when it was closed on the way.
        """
        try:
            p = await PluginConn.open(trunk, lambda conn: _RuntimeService(self, conn), launched, name, idx)
        except Exception as exc:
            log.warning("nri: cannot set up a plugin connection: %s", exc)
            return None
        p.origin = origin
        self._pending.add(p)
        p.mux.on_close(lambda: self._on_closed(p))
        try:
            async with asyncio.timeout(self.options.registration_timeout):
                await p.registered
            await self._configure(p, config or self.configs.get(p.id, ""))
            await self._synchronize(p)
        except TimeoutError:
            p.close("registration timed out")
            log.warning("nri: plugin %s: %s", p.id, p.close_reason)
            return None
        except (RpcError, errdefs.Error, OSError) as exc:
            p.close(f"setup failed: {exc}")
            log.warning("nri: plugin %s: %s", p.id, p.close_reason)
            return None
        finally:
            self._pending.discard(p)
        if p.close_reason or not p.ready:
            return None
        log.info("nri: plugin %s registered (pid %d, events %s)", p.id, p.pid, ",".join(event_names(p.events)))
        self._changed()
        return p

    def _on_closed(self, p: PluginConn) -> None:
        if not p.close_reason:
            p.close("connection closed")
        self._timeouts.pop(p, None)
        if p in self.plugins:
            self.plugins.remove(p)
            log.warning("nri: plugin %s dropped: %s", p.id, p.close_reason)
        self._schedule_restart(p)
        self._changed()

    def drop(self, p: PluginConn, reason: str) -> None:
        p.close(reason)
        self._on_closed(p)

    def register(self, p: PluginConn, req: api.RegisterPluginRequest) -> None:
        if p.registered.done():
            raise errdefs.FailedPrecondition("plugin already registered")
        try:
            self._check_registration(p, req)
        except errdefs.Error as exc:
            # the error answers the plugin first (it is written before this future's
            # waiter runs), then the connection is closed
            p.registered.set_exception(exc)
            raise
        p.nri_version = req.NRI_version
        p.registered.set_result(None)

    def _check_registration(self, p: PluginConn, req: api.RegisterPluginRequest) -> None:
        if p.was_launched:
            if (req.plugin_name, req.plugin_idx) != (p.name, p.idx):
                log.info("nri: launched plugin %s registered as %s-%s", p.id, req.plugin_idx, req.plugin_name)
        else:
            check_identity(req.plugin_name, req.plugin_idx)
            p.name, p.idx = req.plugin_name, req.plugin_idx
            for other in self.plugins:
                if other.id == p.id:
                    raise errdefs.AlreadyExists(f"plugin {p.id} is already registered")

    async def _configure(self, p: PluginConn, config: str) -> None:
        o = self.options
        assert p.client is not None
        req = api.ConfigureRequest(
            config=config,
            runtime_name=o.runtime_name,
            runtime_version=o.runtime_version,
            registration_timeout=int(o.registration_timeout * 1000),
            request_timeout=int(o.request_timeout * 1000),
            NRI_version=NRI_VERSION,
        )
        resp = await p.client.Configure(req, timeout=o.request_timeout)
        events = resp.events or VALID_EVENTS
        if events & ~VALID_EVENTS:
            raise errdefs.InvalidArgument(f"invalid plugin events 0x{events:x}")
        p.events = events

    async def _synchronize(self, p: PluginConn) -> None:
        """Send the known pods and containers, then insert ``p``, with events held back
        (see moorage.nri.gate) so that it misses none and sees none twice."""
        assert p.client is not None
        async with asyncio.timeout(self.options.sync_timeout), self.gate.sync():
            pods = list(self.pods.values())
            containers = list(self.containers.values())
            try:
                resp = await p.client.Synchronize(api.SynchronizeRequest(pods=pods, containers=containers))
            except RpcError as exc:
                if exc.code != Code.RESOURCE_EXHAUSTED:
                    raise
                resp = await self._split_sync(p, pods, containers)
            if p.close_reason:
                return
            p.ready = True
            self.plugins.append(p)
            self.plugins.sort(key=lambda x: (x.idx, x.name))
        if resp.update:
            result = Result()
            result.add_updates(p.id, resp.update)
            self._spawn(self._apply_updates(list(result.updates.values())))

    async def _split_sync(self, p: PluginConn, pods: list[api.PodSandbox],
                          containers: list[api.Container]) -> api.SynchronizeResponse:
        assert p.client is not None
        chunks = chunk_state(pods, containers, MAX_MESSAGE - 64 * 1024)
        for i, (cp, cc) in enumerate(chunks):
            more = i < len(chunks) - 1
            resp = await p.client.Synchronize(api.SynchronizeRequest(pods=cp, containers=cc, more=more))
            if more and (not resp.more or resp.update):
                raise errdefs.FailedPrecondition("plugin does not handle split sync requests")
        return resp

    async def launch_preinstalled(self, plugin_dir: Path, config_dir: Path, log_dir: Path) -> list[PluginConn]:
        """Start the plugins of ``plugin_dir`` and wait until each registered (or failed).

        A launched plugin that later goes away (crash, timeout, disconnect) is started
        again after ``restart_delay`` seconds, doubling up to ``restart_max_delay`` while it
        keeps failing (reset once it ran for a minute), and synchronized anew; with
        ``restart_delay`` 0 it stays dropped, as upstream.
        """
        from .launcher import discover

        self._launch_dirs = (config_dir, log_dir)
        results = await asyncio.gather(*(self._launch(plugin) for plugin in discover(plugin_dir)))
        return [p for p in results if p is not None]

    async def _launch(self, plugin: Preinstalled) -> PluginConn | None:
        from .launcher import launch

        config_dir, log_dir = self._launch_dirs
        try:
            proc, trunk, config = launch(plugin, config_dir, log_dir)
        except OSError as exc:
            log.warning("nri: cannot start plugin %s: %s", plugin.id, exc)
            return None
        loop = asyncio.get_running_loop()
        self._launched_at[plugin.id] = loop.time()
        p = await self.connect(trunk, proc, plugin.name, plugin.idx, config, origin=plugin)
        return p

    def _schedule_restart(self, p: PluginConn) -> None:
        plugin = p.origin
        if plugin is None or self._closed or self.options.restart_delay <= 0 or p.restart_scheduled:
            return
        p.restart_scheduled = True
        now = asyncio.get_running_loop().time()
        delay = self._backoff.get(plugin.id, self.options.restart_delay)
        if now - self._launched_at.get(plugin.id, now) > 60.0:
            delay = self.options.restart_delay
        self._backoff[plugin.id] = min(delay * 2, self.options.restart_max_delay)
        log.info("nri: restarting plugin %s in %.1fs", plugin.id, delay)

        async def later() -> None:
            await asyncio.sleep(delay)
            if not self._closed:
                await self._launch(plugin)

        self._spawn(later())

    async def _shutdown(self, p: PluginConn) -> None:
        """Tell ``p`` the runtime is going away (best effort, bounded; upstream never does)."""
        if p.client is None:
            return
        with contextlib.suppress(Exception):
            await p.client.Shutdown(api.Empty(), timeout=min(self.options.request_timeout, 1.0))

    def list_plugins(self) -> list[PluginConn]:
        return list(self.plugins)

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.options.socket_path)
        if self._accept_task is not None:
            self._accept_task.cancel()
        await asyncio.gather(*(self._shutdown(p) for p in self.plugins), return_exceptions=True)
        for p in list(self.plugins) + list(self._pending):
            p.close("runtime shutting down")
        self.plugins.clear()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # calling plugins -------------------------------------------------------------------

    def _subscribed(self, event: int) -> list[PluginConn]:
        return [p for p in self.plugins if p.subscribed(event)]

    async def _call(self, p: PluginConn, method: str, request: Message, response_type: type[M],
                    legacy: api.StateChangeEvent | None = None) -> M | None:
        """One call to ``p``; None when it gave no answer (the event carries on without it)."""
        resp = await self._ask(p, method, request, response_type, legacy)
        return None if isinstance(resp, Missed) else resp

    async def _ask(self, p: PluginConn, method: str, request: Message, response_type: type[M],
                   legacy: api.StateChangeEvent | None = None) -> M | Missed:
        """One call to ``p``: its answer, or why there is none (timed out, or dropped).

        An error status the plugin answers raises Unknown naming it."""
        assert p.client is not None
        client = p.client.client
        timeout = self.options.request_timeout
        try:
            if legacy is not None and method in p.legacy:
                await client.unary(PLUGIN_SERVICE, "StateChange", legacy, api.Empty, timeout=timeout)
                resp = response_type()
            else:
                try:
                    resp = await client.unary(PLUGIN_SERVICE, method, request, response_type, timeout=timeout)
                except RpcError as exc:
                    if exc.code != Code.UNIMPLEMENTED or legacy is None:
                        raise
                    log.warning("nri: plugin %s does not implement %s; using the deprecated StateChange",
                                p.id, method)
                    p.legacy.add(method)
                    await client.unary(PLUGIN_SERVICE, "StateChange", legacy, api.Empty, timeout=timeout)
                    resp = response_type()
        except RpcError as exc:
            if exc.code == Code.DEADLINE_EXCEEDED:
                return self._timed_out(p, method)
            if exc.code in FATAL:
                self.drop(p, f"{method}: {exc.message}")
                return Missed(f"dropped: {p.close_reason}", timed_out=False)
            self._timeouts.pop(p, None)
            raise errdefs.Unknown(f'plugin "{p.id}" failed to handle {method}: {exc.message}') from None
        except (OSError, EOFError) as exc:
            self.drop(p, f"{method}: {exc or type(exc).__name__}")
            return Missed(f"dropped: {p.close_reason}", timed_out=False)
        self._timeouts.pop(p, None)
        return resp

    def _timed_out(self, p: PluginConn, method: str) -> Missed:
        """Count a request timeout of ``p``; drop it after ``request_timeout_strikes`` in a row."""
        n = self._timeouts.get(p, 0) + 1
        limit = self.options.request_timeout_strikes
        why = f"timed out on {method} after {self.options.request_timeout:g}s ({n} of {limit} in a row)"
        if n >= limit:
            self.drop(p, why)
            return Missed(f"{why}, dropped", timed_out=True)
        if not p.close_reason:
            self._timeouts[p] = n
        log.warning("nri: plugin %s %s; this event goes on without it", p.id, why)
        return Missed(why, timed_out=True)

    async def _notify(self, event: int, method: str, request: Message, response_type: type[M],
                      pod: api.PodSandbox | None, container: api.Container | None = None,
                      fallback: bool = True) -> None:
        legacy = None
        if fallback:
            legacy = api.StateChangeEvent(event=event, pod=pod, container=container)  # type: ignore[arg-type]
        for p in self._subscribed(event):
            await self._call(p, method, request, response_type, legacy)

    # hooks: pods ----------------------------------------------------------------------

    @gated
    async def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.pods[pod.id] = pod
        await self._notify(E.RUN_POD_SANDBOX, "RunPodSandbox", api.RunPodSandboxRequest(pod=pod),
                           api.RunPodSandboxResponse, pod)

    @gated
    async def update_pod_sandbox(self, req: api.UpdatePodSandboxRequest) -> None:
        await self._notify(E.UPDATE_POD_SANDBOX, "UpdatePodSandbox", req, api.UpdatePodSandboxResponse,
                           req.pod, fallback=False)

    @gated
    async def post_update_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.pods[pod.id] = pod
        await self._notify(E.POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox",
                           api.PostUpdatePodSandboxRequest(pod=pod), api.PostUpdatePodSandboxResponse, pod)

    @gated
    async def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        await self._notify(E.STOP_POD_SANDBOX, "StopPodSandbox", api.StopPodSandboxRequest(pod=pod),
                           api.StopPodSandboxResponse, pod)

    @gated
    async def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.pods.pop(pod.id, None)
        await self._notify(E.REMOVE_POD_SANDBOX, "RemovePodSandbox", api.RemovePodSandboxRequest(pod=pod),
                           api.RemovePodSandboxResponse, pod)

    # hooks: containers ----------------------------------------------------------------

    @gated
    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> api.ContainerAdjustment:
        """Consult the plugins; the merged adjustment for ``container``."""
        pristine = api.Container()
        pristine.CopyFrom(container)
        work = api.Container()
        work.CopyFrom(container)
        result = Result(work)
        evictions: list[api.ContainerEviction] = []
        consulted: list[PluginConn] = []
        for p in self._subscribed(E.CREATE_CONTAINER):
            resp = await self._ask(p, "CreateContainer", api.CreateContainerRequest(pod=pod, container=work),
                                   api.CreateContainerResponse)
            if isinstance(resp, Missed):
                if p.name in self.options.required_plugins:
                    kind = errdefs.DeadlineExceeded if resp.timed_out else errdefs.FailedPrecondition
                    raise kind(f'required NRI plugin "{p.id}" did not answer CreateContainer: {resp.why}')
                continue
            consulted.append(p)
            if resp.HasField("adjust"):
                result.add_adjustment(p.id, resp.adjust)
            result.add_updates(p.id, resp.update, creating=container.id)
            evictions.extend(resp.evict)
        self._check_required(consulted)
        await self._validate(pod, pristine, result, consulted)
        work.state = api.CONTAINER_CREATED
        self.containers[container.id] = work
        self._apply_later(list(result.updates.values()), evictions)
        return result.adjust

    def _check_required(self, consulted: list[PluginConn]) -> None:
        present = {p.name for p in consulted}
        for name in self.options.required_plugins:
            if name not in present:
                raise errdefs.FailedPrecondition(
                    f"required NRI plugin {name!r} did not take part in container creation "
                    "(not connected, not subscribed to CreateContainer, or dropped)"
                )

    async def _validate(self, pod: api.PodSandbox, pristine: api.Container, result: Result,
                        consulted: list[PluginConn]) -> None:
        validators = self._subscribed(E.VALIDATE_CONTAINER_ADJUSTMENT)
        if not validators:
            return
        req = api.ValidateContainerAdjustmentRequest(
            pod=pod, container=pristine, adjust=result.adjust, update=list(result.updates.values()),
            plugins=[api.PluginInstance(name=p.name, index=p.idx) for p in consulted],
        )

        async def one(p: PluginConn) -> None:
            resp = await self._ask(p, "ValidateContainerAdjustment", req, api.ValidateContainerAdjustmentResponse)
            if isinstance(resp, Missed):
                kind = errdefs.DeadlineExceeded if resp.timed_out else errdefs.FailedPrecondition
                raise kind(f'validator plugin "{p.id}" did not answer: {resp.why}')
            if resp.reject:
                raise errdefs.FailedPrecondition(f'validator plugin "{p.id}" rejected the adjustment: {resp.reason}')

        results = await asyncio.gather(*(one(p) for p in validators), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    @gated
    async def post_create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._remember(container, api.CONTAINER_CREATED)
        await self._notify(E.POST_CREATE_CONTAINER, "PostCreateContainer",
                           api.PostCreateContainerRequest(pod=pod, container=container),
                           api.PostCreateContainerResponse, pod, container)

    @gated
    async def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        await self._notify(E.START_CONTAINER, "StartContainer", api.StartContainerRequest(pod=pod, container=container),
                           api.StartContainerResponse, pod, container)

    @gated
    async def post_start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._remember(container, api.CONTAINER_RUNNING)
        await self._notify(E.POST_START_CONTAINER, "PostStartContainer",
                           api.PostStartContainerRequest(pod=pod, container=container),
                           api.PostStartContainerResponse, pod, container)

    @gated
    async def update_container(self, req: api.UpdateContainerRequest) -> api.ContainerUpdate | None:
        """Consult the plugins; the (possibly changed) update of ``req.container``, or None."""
        result = Result()
        evictions: list[api.ContainerEviction] = []
        for p in self._subscribed(E.UPDATE_CONTAINER):
            resp = await self._call(p, "UpdateContainer", req, api.UpdateContainerResponse)
            if resp is None:
                continue
            result.add_updates(p.id, resp.update)
            evictions.extend(resp.evict)
        own = result.updates.pop(req.container.id, None)
        self._apply_later(list(result.updates.values()), evictions)
        return own

    @gated
    async def post_update_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._remember(container, None)
        await self._notify(E.POST_UPDATE_CONTAINER, "PostUpdateContainer",
                           api.PostUpdateContainerRequest(pod=pod, container=container),
                           api.PostUpdateContainerResponse, pod, container)

    @gated
    async def stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self._remember(container, api.CONTAINER_STOPPED)
        result = Result()
        for p in self._subscribed(E.STOP_CONTAINER):
            resp = await self._call(p, "StopContainer", api.StopContainerRequest(pod=pod, container=container),
                                    api.StopContainerResponse)
            if resp is not None:
                result.add_updates(p.id, resp.update)
        result.updates.pop(container.id, None)
        self._apply_later(list(result.updates.values()), [])

    @gated
    async def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.containers.pop(container.id, None)
        await self._notify(E.REMOVE_CONTAINER, "RemoveContainer",
                           api.RemoveContainerRequest(pod=pod, container=container),
                           api.RemoveContainerResponse, pod, container)

    def synchronize_state(self, pods: Sequence[api.PodSandbox], containers: Sequence[api.Container]) -> None:
        self.pods = {p.id: p for p in pods}
        self.containers = {c.id: c for c in containers}

    def _remember(self, container: api.Container, state: int | None) -> None:
        if not container.id:
            return
        known = api.Container()
        known.CopyFrom(container)
        if state is not None:
            known.state = state  # type: ignore[assignment]
        self.containers[container.id] = known

    # updates ---------------------------------------------------------------------------

    def _apply_later(self, updates: list[api.ContainerUpdate], evictions: list[api.ContainerEviction]) -> None:
        if updates:
            self._spawn(self._apply_updates(updates))
        if evictions:
            self._spawn(self.evicter(evictions))

    async def _apply_updates(self, updates: list[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        try:
            failed = await self.updater(updates)
        except Exception as exc:  # noqa: BLE001 - reported, never raised into an event
            log.warning("nri: applying plugin updates failed: %s", exc)
            return list(updates)
        for u in failed:
            if not u.ignore_failure:
                log.warning("nri: update of container %s failed", u.container_id)
        return failed

    async def update_containers(self, p: PluginConn, req: api.UpdateContainersRequest) -> api.UpdateContainersResponse:
        """A plugin's unsolicited UpdateContainers: applied now, the failed ones returned."""
        result = Result()
        result.add_updates(p.id, req.update)
        failed = await self._apply_updates(list(result.updates.values())) if result.updates else []
        if req.evict:
            self._spawn(self.evicter(list(req.evict)))
        return api.UpdateContainersResponse(failed=failed)


def chunk_state(pods: list[api.PodSandbox], containers: list[api.Container],
                limit: int) -> list[tuple[list[api.PodSandbox], list[api.Container]]]:
    """Split pods and containers into messages of at most ``limit`` bytes each (at least
    one object per chunk; an object larger than the limit travels alone)."""
    chunks: list[tuple[list[api.PodSandbox], list[api.Container]]] = []
    cp: list[api.PodSandbox] = []
    cc: list[api.Container] = []
    size = 0
    for obj in [*pods, *containers]:
        n = obj.ByteSize() + 6
        if size + n > limit and (cp or cc):
            chunks.append((cp, cc))
            cp, cc, size = [], [], 0
        if isinstance(obj, api.PodSandbox):
            cp.append(obj)
        elif isinstance(obj, api.Container):
            cc.append(obj)
        size += n
    chunks.append((cp, cc))
    return chunks


class _RuntimeService(RuntimeServicer):
    """nri.pkg.api.v1alpha1.Runtime for one plugin connection (served on mux connection 2)."""

    def __init__(self, adaptation: Adaptation, plugin: PluginConn) -> None:
        self.adaptation = adaptation
        self.plugin = plugin

    async def RegisterPlugin(self, request: api.RegisterPluginRequest, ctx: Context) -> api.Empty:
        self.adaptation.register(self.plugin, request)
        return api.Empty()

    async def UpdateContainers(self, request: api.UpdateContainersRequest, ctx: Context) -> api.UpdateContainersResponse:
        return await self.adaptation.update_containers(self.plugin, request)


__all__ = ["Adaptation", "NRI_VERSION", "Options", "chunk_state", "event_bit"]
