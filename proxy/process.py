"""The proxy's registration record and build (``moorage serve proxy``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgpack

from moorage import errdefs, registry
from moorage.registry import BuildContext, Fallback, Process
from ttrpc.errors import RpcError

from . import events, introspection, namespaces
from .router import Pool, Router


@dataclass(frozen=True)
class ProxyConfig:
    """``[proxy]``: the front door's own keys."""

    health_timeout: float = 1.0
    """Seconds a Health call to one replica may take before it counts as down."""
    usage_timeout: float = 5.0
    """Seconds each process gets to answer NamespaceUsage before a namespace delete."""

    def __post_init__(self) -> None:
        if self.health_timeout <= 0 or self.usage_timeout <= 0:
            raise ValueError("timeouts must be > 0")


OWN_SERVICES = (
    namespaces.SERVICE,
    events.SERVICE,
    events.TTRPC_SERVICE,
    introspection.SERVICE,
    introspection.VERSION_SERVICE,
)


def routes(ctx: BuildContext) -> dict[str, Pool]:
    """Service name -> replica pool, for every enabled process but the proxy."""
    records, _ = registry.load_records(ctx.config.suite.plugins)
    out: dict[str, Pool] = {}
    for record in records:
        if record.name == "proxy":
            continue
        section = ctx.config.section(record.name)
        if not section.enabled:
            continue
        pool = Pool(record.name, ctx.config.backend_sockets(record.name))
        for service in record.services:
            if service in OWN_SERVICES or service in out:
                raise errdefs.InvalidArgument(f"service {service} is claimed twice ({record.name})")
            out[service] = pool
    return out


async def build(ctx: BuildContext) -> list[object]:
    settings: ProxyConfig = ctx.settings or ProxyConfig()
    exchange = events.Exchange()
    store = namespaces.NamespaceStore(ctx.root / "namespaces.db")
    ctx.on_close(store.close)
    ctx.on_close(exchange.close)
    router = Router(routes(ctx))
    ctx.on_close(router.close)

    async def usage(ns: str) -> list[str]:
        async def ask(pool: Pool) -> list[str]:
            last: Exception | None = None
            for backend in pool.backends:
                try:
                    client = await backend.get()
                    data = await client.unary_raw(
                        "moorage.internal.v1.Process", "NamespaceUsage", ns.encode(), int(settings.usage_timeout * 1e9)
                    )
                    return [f"{pool.process}: {item}" for item in msgpack.unpackb(data)]
                except (OSError, RpcError) as exc:
                    last = exc
            raise errdefs.Unavailable(f"cannot ask {pool.process} what it holds in namespace {ns}: {last}")

        results = await asyncio.gather(*(ask(p) for p in router.pools()))
        held = [item for r in results for item in r]
        if not held:
            router.known_namespaces.discard(ns)
        return held

    ns_service = namespaces.NamespacesService(store, exchange.publish, usage)
    router.on_namespace = ns_service.seen
    router.known_namespaces.update(store.names())
    ev_service = events.EventsService(exchange)
    intro = introspection.IntrospectionService(
        router, OWN_SERVICES, ctx.root / "uuid", settings.health_timeout
    )
    return [ns_service.raw(), *ev_service.raw(), *intro.raw(), Fallback(router)]


PROCESS = Process(
    name="proxy",
    services=OWN_SERVICES,
    build=build,
    replica_safe=False,
    config=ProxyConfig,
    description="the front door: routing, events, namespaces, introspection, version",
)
