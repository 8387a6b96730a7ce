"""``moor gc``: run one garbage collection now (the proxy's collector) and print what it freed.

    moor gc [-q]

A table of what went (NAMESPACE TYPE NAME SIZE), then one summary line; ``--json`` prints the
collector's answer as it is; ``-q`` only the summary. Exit 0 even when nothing was freed; 1 when
some deletions failed (they are listed on stderr).
"""

from __future__ import annotations

from moorage.cli.context import EXIT, CliContext, Usage

SERVICE = "moorage.internal.v1.GC"
USAGE = "usage: moor gc [-q]"


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    import sys

    import msgpack

    quiet = False
    for arg in argv:
        if arg in ("-h", "--help"):
            print(USAGE)
            return EXIT["ok"]
        if arg in ("-q", "--quiet"):
            quiet = True
            continue
        raise Usage(f"unknown argument {arg!r}; {USAGE}")
    timeout = int((ctx.timeout or 0) * 1e9)
    reply = ctx.connect().unary_raw(SERVICE, "Collect", msgpack.packb({}), timeout_nano=timeout,
                                    metadata=ctx.metadata())
    freed = msgpack.unpackb(reply)
    errors = list(freed.get("errors", []))
    if ctx.json:
        ctx.emit_json(freed)
    else:
        rows = []
        blobs = snaps = ingests = images = size = 0
        for ns, what in sorted(freed.get("namespaces", {}).items()):
            for blob in what.get("content", []):
                rows.append((ns, "content", blob["digest"], blob["size"]))
                blobs += 1
                size += int(blob["size"])
            for snap in what.get("snapshots", []):
                rows.append((ns, f"snapshot/{snap['snapshotter']}", snap["key"], "-"))
                snaps += 1
            for ref in what.get("ingests", []):
                rows.append((ns, "ingest", ref, "-"))
                ingests += 1
            for name in what.get("images", []):
                rows.append((ns, "image (expired)", name, "-"))
                images += 1
        if rows and not quiet:
            ctx.table(["namespace", "type", "name", "size"], rows)
        expired = f", {images} expired images" if images else ""
        print(f"freed {blobs} blobs ({size} bytes), {snaps} snapshots, {ingests} ingests{expired} "
              f"in {float(freed.get('seconds', 0)):.3f}s")
    for err in errors:
        print(f"moor: gc: {err}", file=sys.stderr)
    return EXIT["error"] if errors else EXIT["ok"]
