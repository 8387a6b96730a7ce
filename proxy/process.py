"""The proxy's registration record and build (``moorage serve proxy``)."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

import msgpack

from moorage import errdefs, registry
from moorage.registry import BuildContext, Listener, Process
from moorage.runner import INTERNAL_SERVICE
from ttrpc.errors import RpcError

from . import events, gc, introspection, leases, namespaces, relay
from .gcschedule import Thresholds
from .router import Pool
from .splice import Front, Service, Splice

log = logging.getLogger("moorage.proxy")


@dataclass(frozen=True)
class ProxyConfig:
    """``[proxy]``: the front door's own keys."""

    health_timeout: float = 1.0
    """Seconds a Health call to one replica may take before it counts as down."""
    usage_timeout: float = 5.0
    """Seconds each process gets to answer NamespaceUsage before a namespace delete."""
    grpc: bool = True
    """Also serve containerd's gRPC API on ``<state>/moorage.sock`` (ctr, nerdctl)."""
    grpc_max_recv_message_size: int = 16 << 20
    """Largest gRPC message accepted, as containerd's ``[grpc] max_recv_message_size``."""
    grpc_max_send_message_size: int = 16 << 20
    """Largest gRPC message sent, as containerd's ``[grpc] max_send_message_size``."""
    gc_auto: bool = True
    """Collect on the scheduler below; False: only on demand (``moor gc``, a ``sync`` lease
    delete)."""
    gc_pause_threshold: float = 0.02
    """containerd's ``pause_threshold``: collections take at most this share of real time."""
    gc_deletion_threshold: int = 0
    """containerd's ``deletion_threshold``: this many deletions schedule a collection (0: off;
    deletions are then collected at the next check)."""
    gc_mutation_threshold: int = 100
    """containerd's ``mutation_threshold``: this many changes make the next check collect."""
    gc_schedule_delay: float = 0.0
    """containerd's ``schedule_delay`` (seconds): from a trigger or a threshold to the collection."""
    gc_startup_delay: float = 0.1
    """containerd's ``startup_delay`` (seconds): the first check after start."""
    relay: bool = True
    """Carry routed calls in the C relay (proxy/relay.c, built by ``make relay``) with the
    Python splice behind it; False, or not built: the splice serves every call."""

    def __post_init__(self) -> None:
        if self.health_timeout <= 0 or self.usage_timeout <= 0:
            raise ValueError("timeouts must be > 0")
        if self.grpc_max_recv_message_size <= 0 or self.grpc_max_send_message_size <= 0:
            raise ValueError("grpc message sizes must be > 0")
        self.gc_thresholds()  # raises ValueError when out of range

    def gc_thresholds(self) -> Thresholds:
        return Thresholds(self.gc_pause_threshold, self.gc_deletion_threshold,
                          self.gc_mutation_threshold, self.gc_schedule_delay, self.gc_startup_delay)


OWN_SERVICES = (
    namespaces.SERVICE,
    events.SERVICE,
    events.TTRPC_SERVICE,
    leases.SERVICE,
    introspection.SERVICE,
    introspection.VERSION_SERVICE,
    gc.SERVICE,
)


def routes(ctx: BuildContext) -> dict[str, tuple[str, list[str]]]:
    """Service name -> (process, backend sockets), for every enabled process but the proxy."""
    records, _ = registry.load_records(ctx.config.suite.plugins)
    out: dict[str, tuple[str, list[str]]] = {}
    for record in records:
        if record.name == "proxy":
            continue
        if not ctx.config.section(record.name).enabled:
            continue
        for service in record.services:
            if service in OWN_SERVICES or service in out:
                raise errdefs.InvalidArgument(f"service {service} is claimed twice ({record.name})")
            out[service] = (record.name, ctx.config.backend_sockets(record.name))
    return out


class FrontDoor:
    """The Listener that serves the proxy's socket: the C relay in front of the splice
    (relay.py), or the splice alone (splice.py)."""

    def __init__(self, splice: Splice, use_relay: bool) -> None:
        self.splice = splice
        self.use_relay = use_relay
        self.server: asyncio.AbstractServer | None = None
        self.relay: relay.Relay | None = None

    async def serve(self, server: Any, sock: socket.socket) -> None:
        self.splice.serve_own = server.serve_connection
        if self.use_relay and relay.available():
            self.relay = relay.Relay(sock, self.splice)
            self.relay.start()
            log.info("front door: the C relay, the Python splice behind it")
            return
        if self.use_relay:
            log.warning("the C relay is not built (make relay): the Python splice serves every call")
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: Front(self.splice), sock=sock)

    async def drain(self, grace: float) -> None:
        if self.server is not None:
            self.server.close()
        if self.relay is None:
            await self.splice.drain(grace)
            return
        await asyncio.gather(self.relay.drain(grace), self.splice.drain(grace))
        await self.relay.stop()


async def _no_own(sock: socket.socket) -> None:
    raise errdefs.Unavailable("proxy is not serving yet")


async def build(ctx: BuildContext) -> list[object]:
    settings: ProxyConfig = ctx.settings or ProxyConfig()
    table = routes(ctx)
    pools: dict[str, Pool] = {}
    services: dict[str, Service] = {}
    for process, paths in table.values():
        if process not in pools:
            pools[process] = Pool(process, paths)
            services[process] = Service(process, paths)
    control = {name: pools[process] for name, (process, _) in table.items()}
    data = {name: services[process] for name, (process, _) in table.items()}

    exchange = events.Exchange()
    store = namespaces.NamespaceStore(ctx.root / "namespaces.db")
    ctx.on_close(store.close)
    ctx.on_close(exchange.close)
    splice = Splice(data, OWN_SERVICES, _no_own, known_namespaces=store.names())

    async def close_pools() -> None:
        for pool in pools.values():
            for backend in pool.backends:
                await backend.close()

    ctx.on_close(close_pools)

    async def usage(ns: str) -> list[str]:
        async def ask(pool: Pool) -> list[str]:
            last: Exception | None = None
            for backend in pool.backends:
                try:
                    client = await backend.client()
                    data = await client.unary_raw(
                        INTERNAL_SERVICE, "NamespaceUsage", ns.encode(), int(settings.usage_timeout * 1e9)
                    )
                    return [f"{pool.process}: {item}" for item in msgpack.unpackb(data)]
                except (OSError, RpcError, errdefs.Error) as exc:
                    last = exc
            raise errdefs.Unavailable(f"cannot ask {pool.process} what it holds in namespace {ns}: {last}")

        results = await asyncio.gather(*(ask(p) for p in pools.values()))
        held = [item for r in results for item in r]
        if not held:
            splice.forget_namespace(ns)
        return held

    ns_service = namespaces.NamespacesService(store, exchange.publish, usage)
    splice.on_namespace = ns_service.seen
    ev_service = events.EventsService(exchange)
    intro = introspection.IntrospectionService(control, OWN_SERVICES, ctx.root / "uuid", settings.health_timeout)
    lease_store = leases.LeaseStore(ctx.root / "leases.db")
    ctx.on_close(lease_store.close)
    collector = gc.Collector(
        gc.remote(str(ctx.config.socket_path("proxy"))),
        lease_store,
        lambda: set(store.names()) | splice.known_namespaces,
        table.keys(),
        settings.gc_thresholds(),
    )
    if settings.gc_auto:
        collector.start(exchange)
    ctx.on_close(collector.close)
    lease_service = leases.LeasesService(lease_store).raw()
    lease_service = gc.wrap_leases(lease_service, collector, settings.gc_auto)
    door = FrontDoor(splice, settings.relay)
    listener = Listener(door.serve, door.drain)
    if settings.grpc:
        from .grpc_front import GrpcFront

        front = GrpcFront(
            ctx.config.suite.state / "moorage.sock",
            str(ctx.config.socket_path("proxy")),
            ctx.state,
            settings.grpc_max_recv_message_size,
            settings.grpc_max_send_message_size,
        )
        listener = front.around(listener)
    return [ns_service.raw(), *ev_service.raw(), lease_service, gc.raw(collector), *intro.raw(),
            _ending_subscriptions(listener, exchange)]


def _ending_subscriptions(listener: Listener, exchange: events.Exchange) -> Listener:
    """``listener`` whose drain first ends every events subscription, so that the drain
    waits for calls that can end, not for Subscribe streams that never would."""

    async def drain(grace: float) -> None:
        exchange.close(keep_queued=True)
        await listener.drain(grace)

    return Listener(listener.serve, drain)


PROCESS = Process(
    name="proxy",
    services=OWN_SERVICES,
    build=build,
    replica_safe=False,
    config=ProxyConfig,
    description="the front door: routing, events, namespaces, introspection, version",
)
