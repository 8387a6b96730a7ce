"""containerd.services.introspection.v1 Introspection and version.v1 Version, by the proxy.

``Plugins`` lists one Plugin per ttrpc service the suite serves: type
:data:`PLUGIN_TYPE`, id = the service name, exports ``process``, ``replicas``, ``healthy``
and ``rtt_us`` (the best round trip of a Health call to a replica, measured now; empty for
the proxy's own services), ``sockets``, and ``notes`` when healthy replicas report warnings
(BuildContext.health_notes); ``init_err`` carries why a service is down.
Filters use containerd's syntax over ``type``, ``id`` and ``exports.<key>``.
``Server`` answers the suite's uuid (kept in ``<root>/proxy/uuid``), the proxy's pid and pidns.
"""

from __future__ import annotations

import asyncio
import os
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import empty_pb2

from moorage.api.containerd.services.introspection.v1 import introspection_pb2 as pb
from moorage.api.containerd.services.version.v1 import version_pb2 as version_pb
from moorage.api.google.rpc import status_pb2
from moorage.registry import RawService
from ttrpc.codes import Code
from ttrpc.server import Context

from .handlers import unary
from .router import Pool, ping

SERVICE = "containerd.services.introspection.v1.Introspection"
VERSION_SERVICE = "containerd.services.version.v1.Version"
PLUGIN_TYPE = "io.moorage.service.v1"


def suite_uuid(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = str(uuidlib.uuid4())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value + "\n")
        os.replace(tmp, path)
        return value


def version() -> tuple[str, str]:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        v = pkg_version("moorage")
    except PackageNotFoundError:
        v = "unknown"
    return v, os.environ.get("MOORAGE_REVISION", "")


class IntrospectionService:
    def __init__(self, routes: Mapping[str, Pool], own: Sequence[str], uuid_path: Path, health_timeout: float) -> None:
        self.routes = dict(routes)
        self.own = list(own)
        self.uuid = suite_uuid(uuid_path)
        self.health_timeout = health_timeout

    def raw(self) -> list[RawService]:
        return [
            RawService(
                SERVICE,
                {
                    "Plugins": unary(pb.PluginsRequest, self.plugins),
                    "Server": unary(empty_pb2.Empty, self.server),
                },
            ),
            RawService(VERSION_SERVICE, {"Version": unary(empty_pb2.Empty, self.version)}),
        ]

    async def _pool_health(self, pool: Pool) -> tuple[int, float | None, str, str]:
        results = await asyncio.gather(*(ping(b, self.health_timeout) for b in pool.backends))
        healthy = sum(1 for ok, _, _, _ in results if ok)
        rtts = [rtt for ok, rtt, _, _ in results if ok and rtt is not None]
        errors = [f"{b.path}: {err}" for b, (ok, _, err, _) in zip(pool.backends, results) if not ok]
        notes = dict.fromkeys(n for _, _, _, ns in results for n in ns)  # replicas say the same
        return healthy, (min(rtts) if rtts else None), "; ".join(errors), "; ".join(notes)

    async def plugins(self, req: pb.PluginsRequest, ctx: Context) -> pb.PluginsResponse:
        pools = list({id(p): p for p in self.routes.values()}.values())
        health = dict(zip((id(p) for p in pools), await asyncio.gather(*(self._pool_health(p) for p in pools))))
        plugins = [
            pb.Plugin(type=PLUGIN_TYPE, id=s, exports={"process": "proxy", "replicas": "1", "healthy": "1", "rtt_us": ""})
            for s in self.own
        ]
        for service, pool in sorted(self.routes.items()):
            healthy, rtt, error, notes = health[id(pool)]
            p = pb.Plugin(
                type=PLUGIN_TYPE,
                id=service,
                exports={
                    "process": pool.process,
                    "replicas": str(len(pool.backends)),
                    "healthy": str(healthy),
                    "rtt_us": "" if rtt is None else f"{rtt:.1f}",
                    "sockets": ",".join(b.path for b in pool.backends),
                    **({"notes": notes} if notes else {}),
                },
            )
            if error:
                p.init_err.CopyFrom(status_pb2.Status(code=Code.UNAVAILABLE, message=error))
            plugins.append(p)
        if req.filters:
            from moorage import filters

            f = filters.parse(list(req.filters))
            plugins = [p for p in plugins if f.match(_adaptor(p))]
        return pb.PluginsResponse(plugins=plugins)

    async def server(self, req: empty_pb2.Empty, ctx: Context) -> pb.ServerResponse:
        try:
            pidns = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            pidns = 0
        return pb.ServerResponse(uuid=self.uuid, pid=os.getpid(), pidns=pidns)

    async def version(self, req: empty_pb2.Empty, ctx: Context) -> version_pb.VersionResponse:
        v, rev = version()
        return version_pb.VersionResponse(version=v, revision=rev)


def _adaptor(p: pb.Plugin):  # type: ignore[no-untyped-def]
    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] == "type":
            return p.type, bool(p.type)
        if path[0] == "id":
            return p.id, bool(p.id)
        if path[0] == "exports" and len(path) > 1:
            key = ".".join(path[1:])
            return p.exports.get(key, ""), key in p.exports
        return "", False

    return field
