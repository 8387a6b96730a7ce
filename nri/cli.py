"""``moor nri ls``: the connected NRI plugins (index, name, events, pid). Blocking, no asyncio
nor protobuf: the reply is read by hooks.proto's field numbers.

    moor nri ls [-q]
"""

from __future__ import annotations

import sys

from moorage.cli.context import EXIT, CliContext, Usage
from moorage.cli.wire import Fields, Msg
from ttrpc.lighttyping import NamedTuple

USAGE = "usage: moor nri ls [-q]"


class _Plugin(NamedTuple):
    """A moorage.nri.v1 PluginInfo as `moor nri ls` reads it (through moorage.cli.wire)."""

    plugin_index: str
    name: str
    events: int
    event_names: list[str]
    pid: int
    launched: bool
    nri_version: str


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return EXIT["usage"] if not argv else EXIT["ok"]
    action, rest = argv[0], argv[1:]
    if action not in ("ls", "list"):
        raise Usage(f"nri: unknown command {action!r} ({USAGE})")
    quiet = False
    for arg in rest:
        if arg in ("-q", "--quiet"):
            quiet = True
        else:
            raise Usage(f"nri ls: unexpected argument {arg!r}")
    # ListPluginsRequest{} -> ListPluginsResponse{plugins=1 PluginInfo{index=1, name=2,
    # events=3 (int32), event_names=4, pid=5 (int32), launched=6, nri_version=7}}
    reply = ctx.connect().unary("moorage.nri.v1.Hooks", "ListPlugins", Msg({}), Fields, timeout=ctx.timeout,
                                metadata=ctx.metadata())
    plugins = [_Plugin(p.text(1), p.text(2), p.int64(3), p.texts(4), p.int64(5), bool(p.uint(6)), p.text(7))
               for p in reply.msgs(1)]
    if ctx.json:
        ctx.emit_json([
            {"index": p.plugin_index, "name": p.name, "events": list(p.event_names), "mask": p.events, "pid": p.pid,
             "launched": p.launched, "nri_version": p.nri_version}
            for p in plugins
        ])
        return EXIT["ok"]
    if quiet:
        for p in plugins:
            print(f"{p.plugin_index}-{p.name}")
        return EXIT["ok"]
    rows = [("INDEX", "NAME", "PID", "EVENTS")]
    for p in plugins:
        rows.append((p.plugin_index, p.name, str(p.pid), ",".join(p.event_names) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    return EXIT["ok"]
