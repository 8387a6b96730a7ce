"""``moor nri ls``: the connected NRI plugins (index, name, events, pid). Blocking, no asyncio.

    moor nri ls [-q]
"""

from __future__ import annotations

import sys

from moorage.cli.context import EXIT, CliContext, Usage

USAGE = "usage: moor nri ls [-q]"


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
    from moorage.api.moorage.nri.v1 import hooks_pb2 as pb
    from moorage.api.moorage.nri.v1.hooks_ttrpc import HooksBlockingClient

    hooks = HooksBlockingClient(ctx.connect())
    plugins = hooks.ListPlugins(pb.ListPluginsRequest(), timeout=ctx.timeout, metadata=ctx.metadata()).plugins
    if ctx.json:
        ctx.emit_json([
            {"index": p.index, "name": p.name, "events": list(p.event_names), "mask": p.events, "pid": p.pid,
             "launched": p.launched, "nri_version": p.nri_version}
            for p in plugins
        ])
        return EXIT["ok"]
    if quiet:
        for p in plugins:
            print(f"{p.index}-{p.name}")
        return EXIT["ok"]
    rows = [("INDEX", "NAME", "PID", "EVENTS")]
    for p in plugins:
        rows.append((p.index, p.name, str(p.pid), ",".join(p.event_names) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    return EXIT["ok"]
