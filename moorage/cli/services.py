"""``moor services``: every service the proxy routes or serves, its process, replicas,
health and the round-trip time the proxy measured to it just now.

Data comes from containerd.services.introspection.v1 Plugins: one Plugin per service, type
``io.moorage.service.v1``, id = the ttrpc service name, exports ``process``, ``replicas``,
``healthy``, ``rtt_us`` and ``notes`` (see moorage.proxy.introspection): a healthy service
with notes (warnings its process reports, e.g. an unpatched runc) reads ``ok [note]``. The first row is the proxy
itself, with moor's own round trip to it. Messages go through moorage.cli.wire: no protobuf.
"""

from __future__ import annotations

import time

from moorage.cli.context import EXIT, CliContext
from moorage.cli.wire import Fields, Msg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SERVICE = "containerd.services.introspection.v1.Introspection"
PLUGIN_TYPE = "io.moorage.service.v1"


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    client = ctx.connect()
    start = time.perf_counter()
    # PluginsRequest{filters=1} -> PluginsResponse{plugins=1 Plugin{type=1, id=2, exports=5,
    # init_err=7 google.rpc.Status{message=2}}}
    resp = client.unary(SERVICE, "Plugins", Msg({1: [f"type=={PLUGIN_TYPE}"]}), Fields, timeout=ctx.timeout,
                        metadata=ctx.metadata())
    total_us = (time.perf_counter() - start) * 1e6
    rows: list[dict[str, Any]] = []
    for p in resp.msgs(1):
        if p.text(1) != PLUGIN_TYPE:
            continue
        ex = p.pairs(5)
        replicas = int(ex.get("replicas", "0"))
        healthy = int(ex.get("healthy", "0"))
        rtt = ex.get("rtt_us", "")
        rows.append({
            "service": p.text(2),
            "process": ex.get("process", ""),
            "replicas": replicas,
            "healthy": healthy,
            "health": "ok" if healthy == replicas and replicas else ("down" if healthy == 0 else "degraded"),
            "rtt_us": float(rtt) if rtt else None,
            "error": p.msg(7).text(2) if p.has(7) else "",
            "notes": ex.get("notes", ""),
        })
    if ctx.json:
        ctx.emit_json({"address": ctx.address, "call_us": round(total_us, 1), "services": rows})
    else:
        ctx.table(
            ["service", "process", "replicas", "health", "rtt"],
            [
                (r["service"], r["process"], f"{r['healthy']}/{r['replicas']}",
                 r["health"] + (f" ({r['error']})" if r["error"] else "")
                 + (f" [{r['notes']}]" if r["notes"] else ""),
                 "-" if r["rtt_us"] is None else _fmt_us(float(r["rtt_us"])))
                for r in rows
            ],
        )
    return EXIT["ok"] if all(r["health"] == "ok" for r in rows) else EXIT["unavailable"]


def _fmt_us(us: float) -> str:
    return f"{us:.0f}µs" if us < 10_000 else f"{us / 1000:.1f}ms"
