"""The Python NRI plugin SDK, mirroring containerd/nri's ``pkg/stub``.

A plugin is a :class:`Plugin` subclass overriding only the hooks it needs (all async)::

    class Injector(Plugin):
        async def create_container(self, pod, container):
            adj = Adjustment()
            adj.add_env("HELLO", "world")
            return adj

    run(Injector())                      # or: await Stub(Injector()).run()

:class:`Stub` connects (fd ``$NRI_PLUGIN_SOCKET`` when the runtime launched us, else the
NRI socket, ``/var/run/nri/nri.sock`` by default), registers as ``NN-name`` (explicit
arguments, else ``$NRI_PLUGIN_NAME``/``$NRI_PLUGIN_IDX``, else argv[0] named ``NN-name``),
answers Configure with the event mask derived from the overridden hooks (or the narrower
mask :meth:`Plugin.configure` returns; naming an event without a hook is an error), and
serves the events. Works against moorage's nri process and containerd's NRI alike: the wire
is containerd/nri's multiplexer and ttrpc (see :mod:`moorage.nri.mux`).

Hook results: ``create_container`` returns an :class:`Adjustment` (or a raw
``ContainerAdjustment``), optionally with updates of other containers as
``(adjustment, updates)``; ``update_container``, ``stop_container`` and ``synchronize``
return a list of ``ContainerUpdate`` (or None); ``validate_container_adjustment`` raises
:class:`Rejected` to reject; every other hook returns None. An exception in a hook travels
to the runtime as an error, which fails that pod or container operation.

Lifecycle: ``start()`` returns once the runtime configured and synchronized us (or raises);
``wait()`` returns when the connection is gone; ``run()`` is both. ``on_close`` runs once,
however the connection ended. A stub does not reconnect (as the Go stub's default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.api.nri.pkg.api.api_ttrpc import PluginServicer, RuntimeClient

from ..mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from .adjustment import Adjustment

if TYPE_CHECKING:
    from ttrpc.client import Client
    from ttrpc.server import Context, Server

__all__ = ["Adjustment", "EVENT_HOOKS", "Plugin", "Rejected", "Stub", "api", "run"]

log = logging.getLogger("moorage.nri.stub")

DEFAULT_SOCKET = "/var/run/nri/nri.sock"
NRI_VERSION = "v0.12.2"
E = api.Event

EVENT_HOOKS: dict[int, str] = {
    E.RUN_POD_SANDBOX: "run_pod_sandbox",
    E.STOP_POD_SANDBOX: "stop_pod_sandbox",
    E.REMOVE_POD_SANDBOX: "remove_pod_sandbox",
    E.CREATE_CONTAINER: "create_container",
    E.POST_CREATE_CONTAINER: "post_create_container",
    E.START_CONTAINER: "start_container",
    E.POST_START_CONTAINER: "post_start_container",
    E.UPDATE_CONTAINER: "update_container",
    E.POST_UPDATE_CONTAINER: "post_update_container",
    E.STOP_CONTAINER: "stop_container",
    E.REMOVE_CONTAINER: "remove_container",
    E.UPDATE_POD_SANDBOX: "update_pod_sandbox",
    E.POST_UPDATE_POD_SANDBOX: "post_update_pod_sandbox",
    E.VALIDATE_CONTAINER_ADJUSTMENT: "validate_container_adjustment",
}
"""Event number -> the Plugin hook handling it."""


class Rejected(Exception):
    """Raised by ``validate_container_adjustment`` to reject, with the reason."""


class Plugin:
    """Base class of a plugin: override the hooks you need; the rest stay unsubscribed."""

    stub: Stub | None = None
    """The stub running this plugin (set by Stub), e.g. for ``update_containers``."""

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> int | Iterable[str] | None:
        """The runtime configures us; return None to subscribe to every hook overridden,
        or a narrower set (event names like ``"create_container"``, or a mask)."""
        return None

    async def synchronize(self, pods: Sequence[api.PodSandbox],
                          containers: Sequence[api.Container]) -> Sequence[api.ContainerUpdate] | None:
        """Every existing pod and container, once after Configure."""
        return None

    async def shutdown(self) -> None:
        """The runtime is shutting down (rarely sent)."""

    async def on_close(self) -> None:
        """The connection to the runtime is gone."""

    # events (override to subscribe) --------------------------------------------------

    async def run_pod_sandbox(self, pod: api.PodSandbox) -> None: ...
    async def update_pod_sandbox(self, pod: api.PodSandbox, overhead: api.LinuxResources,
                                 resources: api.LinuxResources) -> None: ...
    async def post_update_pod_sandbox(self, pod: api.PodSandbox) -> None: ...
    async def stop_pod_sandbox(self, pod: api.PodSandbox) -> None: ...
    async def remove_pod_sandbox(self, pod: api.PodSandbox) -> None: ...
    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Any: ...
    async def post_create_container(self, pod: api.PodSandbox, container: api.Container) -> None: ...
    async def start_container(self, pod: api.PodSandbox, container: api.Container) -> None: ...
    async def post_start_container(self, pod: api.PodSandbox, container: api.Container) -> None: ...
    async def update_container(self, pod: api.PodSandbox, container: api.Container,
                               resources: api.LinuxResources) -> Sequence[api.ContainerUpdate] | None: ...
    async def post_update_container(self, pod: api.PodSandbox, container: api.Container) -> None: ...
    async def stop_container(self, pod: api.PodSandbox,
                             container: api.Container) -> Sequence[api.ContainerUpdate] | None: ...
    async def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None: ...
    async def validate_container_adjustment(self, request: api.ValidateContainerAdjustmentRequest) -> None: ...


def handled_events(plugin: Plugin) -> int:
    """The mask of events whose hook ``plugin``'s class overrides."""
    mask = 0
    for event, hook in EVENT_HOOKS.items():
        if getattr(type(plugin), hook) is not getattr(Plugin, hook):
            mask |= 1 << (event - 1)
    return mask


def parse_events(events: int | Iterable[str]) -> int:
    if isinstance(events, int):
        return events
    by_name = {hook: ev for ev, hook in EVENT_HOOKS.items()}
    mask = 0
    for name in events:
        key = name.strip().lower().replace("-", "_")
        if key not in by_name:
            raise ValueError(f"unknown event {name!r}")
        mask |= 1 << (by_name[key] - 1)
    return mask


def identity(name: str | None, idx: str | None, argv0: str | None = None) -> tuple[str, str]:
    """(name, idx): explicit, else NRI_PLUGIN_NAME/IDX, else argv[0] ``NN-name``."""
    name = name or os.environ.get("NRI_PLUGIN_NAME") or None
    idx = idx or os.environ.get("NRI_PLUGIN_IDX") or None
    if name is None or idx is None:
        base = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
        m = re.match(r"^([0-9]{2})-(.+)$", base)
        if m is not None:
            idx = idx or m.group(1)
            name = name or m.group(2)
    if not name or not idx:
        raise ValueError("plugin name and index are unknown: pass them, set NRI_PLUGIN_NAME/IDX or name the program NN-name")
    return name, idx


class Stub:
    """Runs one :class:`Plugin` against a runtime (see the module docstring)."""

    def __init__(
        self,
        plugin: Plugin,
        *,
        name: str | None = None,
        idx: str | None = None,
        socket_path: str | None = None,
        registration_timeout: float = 5.0,
    ) -> None:
        self.plugin = plugin
        plugin.stub = self
        self.name, self.idx = identity(name, idx)
        self.socket_path = socket_path or DEFAULT_SOCKET
        self.registration_timeout = registration_timeout
        self.handled = handled_events(plugin)
        if not self.handled:
            raise ValueError("plugin implements no event hook")
        self.events = self.handled
        self.config = ""
        self.runtime_name = ""
        self.runtime_version = ""
        self.mux: Mux | None = None
        self.runtime: RuntimeClient | None = None
        self._server: Server | None = None
        self._client: Client | None = None
        self._synced: asyncio.Future[None] | None = None
        self._closed_once = False

    async def _trunk(self) -> socket.socket:
        fd = os.environ.get("NRI_PLUGIN_SOCKET")
        if fd:
            sock = socket.socket(fileno=int(fd))
            os.environ.pop("NRI_PLUGIN_SOCKET", None)
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.socket_path)
        except BaseException:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        """Connect, register, and return once configured and synchronized."""
        from ttrpc.client import Client
        from ttrpc.server import Server

        loop = asyncio.get_running_loop()
        self._synced = loop.create_future()
        self._server = Server()
        self._server.register(_PluginService(self))
        self.mux, self._client = await Mux.open(
            await self._trunk(), serve=(PLUGIN_SERVICE_CONN, self._server), connect=RUNTIME_SERVICE_CONN
        )
        closing: list[asyncio.Task[None]] = []
        self.mux.on_close(lambda: closing.append(loop.create_task(self._on_close())))
        try:
            self.runtime = RuntimeClient(self._client)
            async with asyncio.timeout(self.registration_timeout):
                await self.runtime.RegisterPlugin(
                    api.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.idx, NRI_version=NRI_VERSION)
                )
                await asyncio.wait({self._synced, self.mux.closed}, return_when=asyncio.FIRST_COMPLETED)
            if not self._synced.done():
                raise ConnectionError("the runtime closed the connection during registration")
            await self._synced
        except BaseException:
            self.close()
            raise

    async def wait(self) -> None:
        assert self.mux is not None
        await asyncio.shield(self.mux.closed)

    async def run(self) -> None:
        await self.start()
        await self.wait()

    def close(self) -> None:
        if self.mux is not None:
            self.mux.close()
        if self._server is not None:
            self._server.close()

    async def _on_close(self) -> None:
        if self._closed_once:
            return
        self._closed_once = True
        if self._synced is not None and not self._synced.done():
            self._synced.set_exception(ConnectionError("connection closed"))
            self._synced.exception()
        if self._server is not None:
            self._server.close()
        try:
            await self.plugin.on_close()
        except Exception:
            log.exception("on_close failed")

    async def update_containers(self, updates: Sequence[api.ContainerUpdate],
                                evictions: Sequence[api.ContainerEviction] = ()) -> list[api.ContainerUpdate]:
        """Ask the runtime to update (or evict) containers; the updates that failed."""
        assert self.runtime is not None
        resp = await self.runtime.UpdateContainers(api.UpdateContainersRequest(update=updates, evict=evictions))
        return list(resp.failed)


def _adjustment(value: Any) -> api.ContainerAdjustment | None:
    if value is None:
        return None
    if isinstance(value, Adjustment):
        return value.message
    if isinstance(value, api.ContainerAdjustment):
        return value
    raise TypeError(f"create_container returned {type(value).__name__}, not an Adjustment")


class _PluginService(PluginServicer):
    """nri.pkg.api.v1alpha1.Plugin, served on mux connection 1, calling the plugin's hooks."""

    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self.plugin = stub.plugin
        self._pods: list[api.PodSandbox] = []
        self._containers: list[api.Container] = []

    def _on(self, event: int) -> bool:
        return bool(self.stub.events & (1 << (event - 1)))

    async def Configure(self, request: api.ConfigureRequest, ctx: Context) -> api.ConfigureResponse:
        s = self.stub
        s.config, s.runtime_name, s.runtime_version = request.config, request.runtime_name, request.runtime_version
        wanted = await self.plugin.configure(request.config, request.runtime_name, request.runtime_version)
        if wanted is not None:
            mask = parse_events(wanted)
            if mask & ~s.handled:
                raise ValueError(f"configure subscribed to events without a hook (mask 0x{mask & ~s.handled:x})")
            s.events = mask
        return api.ConfigureResponse(events=s.events)

    async def Synchronize(self, request: api.SynchronizeRequest, ctx: Context) -> api.SynchronizeResponse:
        self._pods.extend(request.pods)
        self._containers.extend(request.containers)
        if request.more:
            return api.SynchronizeResponse(more=True)
        pods, containers = self._pods, self._containers
        self._pods, self._containers = [], []
        updates = await self.plugin.synchronize(pods, containers)
        synced = self.stub._synced
        if synced is not None and not synced.done():
            synced.set_result(None)
        return api.SynchronizeResponse(update=list(updates or ()))

    async def Shutdown(self, request: api.Empty, ctx: Context) -> api.Empty:
        await self.plugin.shutdown()
        return api.Empty()

    async def RunPodSandbox(self, request: api.RunPodSandboxRequest, ctx: Context) -> api.RunPodSandboxResponse:
        if self._on(E.RUN_POD_SANDBOX):
            await self.plugin.run_pod_sandbox(request.pod)
        return api.RunPodSandboxResponse()

    async def UpdatePodSandbox(self, request: api.UpdatePodSandboxRequest, ctx: Context) -> api.UpdatePodSandboxResponse:
        if self._on(E.UPDATE_POD_SANDBOX):
            await self.plugin.update_pod_sandbox(request.pod, request.overhead_linux_resources, request.linux_resources)
        return api.UpdatePodSandboxResponse()

    async def PostUpdatePodSandbox(self, request: api.PostUpdatePodSandboxRequest,
                                   ctx: Context) -> api.PostUpdatePodSandboxResponse:
        if self._on(E.POST_UPDATE_POD_SANDBOX):
            await self.plugin.post_update_pod_sandbox(request.pod)
        return api.PostUpdatePodSandboxResponse()

    async def StopPodSandbox(self, request: api.StopPodSandboxRequest, ctx: Context) -> api.StopPodSandboxResponse:
        if self._on(E.STOP_POD_SANDBOX):
            await self.plugin.stop_pod_sandbox(request.pod)
        return api.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: api.RemovePodSandboxRequest, ctx: Context) -> api.RemovePodSandboxResponse:
        if self._on(E.REMOVE_POD_SANDBOX):
            await self.plugin.remove_pod_sandbox(request.pod)
        return api.RemovePodSandboxResponse()

    async def CreateContainer(self, request: api.CreateContainerRequest, ctx: Context) -> api.CreateContainerResponse:
        resp = api.CreateContainerResponse()
        if not self._on(E.CREATE_CONTAINER):
            return resp
        result = await self.plugin.create_container(request.pod, request.container)
        updates: Sequence[api.ContainerUpdate] = ()
        if isinstance(result, tuple):
            result, updates = result
        adj = _adjustment(result)
        if adj is not None:
            resp.adjust.CopyFrom(adj)
        resp.update.extend(updates or ())
        return resp

    async def PostCreateContainer(self, request: api.PostCreateContainerRequest,
                                  ctx: Context) -> api.PostCreateContainerResponse:
        if self._on(E.POST_CREATE_CONTAINER):
            await self.plugin.post_create_container(request.pod, request.container)
        return api.PostCreateContainerResponse()

    async def StartContainer(self, request: api.StartContainerRequest, ctx: Context) -> api.StartContainerResponse:
        if self._on(E.START_CONTAINER):
            await self.plugin.start_container(request.pod, request.container)
        return api.StartContainerResponse()

    async def PostStartContainer(self, request: api.PostStartContainerRequest,
                                 ctx: Context) -> api.PostStartContainerResponse:
        if self._on(E.POST_START_CONTAINER):
            await self.plugin.post_start_container(request.pod, request.container)
        return api.PostStartContainerResponse()

    async def UpdateContainer(self, request: api.UpdateContainerRequest, ctx: Context) -> api.UpdateContainerResponse:
        resp = api.UpdateContainerResponse()
        if self._on(E.UPDATE_CONTAINER):
            updates = await self.plugin.update_container(request.pod, request.container, request.linux_resources)
            resp.update.extend(updates or ())
        return resp

    async def PostUpdateContainer(self, request: api.PostUpdateContainerRequest,
                                  ctx: Context) -> api.PostUpdateContainerResponse:
        if self._on(E.POST_UPDATE_CONTAINER):
            await self.plugin.post_update_container(request.pod, request.container)
        return api.PostUpdateContainerResponse()

    async def StopContainer(self, request: api.StopContainerRequest, ctx: Context) -> api.StopContainerResponse:
        resp = api.StopContainerResponse()
        if self._on(E.STOP_CONTAINER):
            updates = await self.plugin.stop_container(request.pod, request.container)
            resp.update.extend(updates or ())
        return resp

    async def RemoveContainer(self, request: api.RemoveContainerRequest, ctx: Context) -> api.RemoveContainerResponse:
        if self._on(E.REMOVE_CONTAINER):
            await self.plugin.remove_container(request.pod, request.container)
        return api.RemoveContainerResponse()

    async def StateChange(self, request: api.StateChangeEvent, ctx: Context) -> api.Empty:
        """The deprecated single-method form older runtimes use for notifications."""
        hook = EVENT_HOOKS.get(request.event)
        if hook is None or not self._on(request.event):
            return api.Empty()
        fn = getattr(self.plugin, hook)
        if request.event in (E.RUN_POD_SANDBOX, E.STOP_POD_SANDBOX, E.REMOVE_POD_SANDBOX, E.POST_UPDATE_POD_SANDBOX):
            await fn(request.pod)
        elif request.event in (E.POST_CREATE_CONTAINER, E.START_CONTAINER, E.POST_START_CONTAINER,
                               E.POST_UPDATE_CONTAINER, E.REMOVE_CONTAINER):
            await fn(request.pod, request.container)
        return api.Empty()

    async def ValidateContainerAdjustment(self, request: api.ValidateContainerAdjustmentRequest,
                                          ctx: Context) -> api.ValidateContainerAdjustmentResponse:
        if not self._on(E.VALIDATE_CONTAINER_ADJUSTMENT):
            return api.ValidateContainerAdjustmentResponse()
        try:
            await self.plugin.validate_container_adjustment(request)
        except Rejected as exc:
            return api.ValidateContainerAdjustmentResponse(reject=True, reason=str(exc))
        return api.ValidateContainerAdjustmentResponse()


def run(plugin: Plugin, **kwargs: Any) -> int:
    """Run ``plugin`` until the runtime goes away (``Stub`` keyword arguments); exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> None:
        await Stub(plugin, **kwargs).run()

    from ttrpc.errors import RpcError
    from ttrpc.loop import run as run_loop

    try:
        run_loop(main())
    except ValueError as exc:
        log.error("plugin not started: %s", exc)
        return 2
    except (ConnectionError, OSError, TimeoutError, RpcError) as exc:
        log.error("plugin stopped: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
