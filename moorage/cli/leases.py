"""``moor leases ls|create|rm``: containerd's leases.v1 through the proxy.

    moor leases ls [-q] [FILTER...]
    moor leases create [--id ID] [--expires DURATION] [KEY=VALUE...]   # prints the id
    moor leases rm [--sync] ID...

``--expires`` (default 24h, as ctr; 0 = never) sets ``containerd.io/gc.expire``;
DURATION is seconds or a number with ``s``, ``m``, ``h`` or ``d``. Messages go through
moorage.cli.wire (leases.proto's field numbers, named where each is built or read): no protobuf.
"""

from __future__ import annotations

import time

from moorage.cli.context import EXIT, CliContext, Usage, labels_text, pairs
from moorage.cli.wire import Fields, Msg

SERVICE = "containerd.services.leases.v1.Leases"
EXPIRE_LABEL = "containerd.io/gc.expire"
USAGE = "usage: moor leases ls [-q] [FILTER...] | create [--id ID] [--expires D] [K=V...] | rm [--sync] ID..."
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``24h``, ``7d``."""
    unit = _UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        return float(number) * (unit or 1)
    except ValueError:
        raise Usage(f"bad duration {text!r} (e.g. 90s, 15m, 24h)") from None


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT["ok"] if argv else EXIT["usage"]
    action, args = argv[0], argv[1:]
    client = ctx.connect()
    md = ctx.metadata()

    def call(method: str, req: Msg) -> Fields:
        return client.unary(SERVICE, method, req, Fields, timeout=ctx.timeout, metadata=md)

    if action in ("ls", "list"):
        quiet = any(a in ("-q", "--quiet") for a in args)
        filters = [a for a in args if a not in ("-q", "--quiet")]
        # ListRequest{filters=1} -> ListResponse{leases=1 Lease{id=1, created_at=2 {seconds=1}, labels=3}}
        leases = [(x.text(1), x.msg(2).int64(1), x.pairs(3)) for x in call("List", Msg({1: filters})).msgs(1)]
        if ctx.json:
            ctx.emit_json([{"id": i, "created_at": _rfc3339(t), "labels": labels} for i, t, labels in leases])
        elif quiet:
            for i, _, _ in leases:
                print(i)
        else:
            rows = [(i, _rfc3339(t), labels_text(labels)) for i, t, labels in leases]
            ctx.table(["id", "created at", "labels"], rows)
        return EXIT["ok"]
    if action == "create":
        lease_id = ""
        expires = 24 * 3600.0
        rest: list[str] = []
        while args:
            a = args.pop(0)
            if a in ("--id", "--expires", "-x"):
                if not args:
                    raise Usage(f"{a} needs a value")
                value = args.pop(0)
                if a == "--id":
                    lease_id = value
                else:
                    expires = duration(value)
            else:
                rest.append(a)
        labels = pairs(rest)
        if expires > 0:
            labels[EXPIRE_LABEL] = _rfc3339(time.time() + expires)
        # CreateRequest{id=1, labels=3} -> CreateResponse{lease=1 Lease{id=1, labels=3}}
        lease = call("Create", Msg({1: lease_id, 3: labels})).msg(1)
        if ctx.json:
            ctx.emit_json({"id": lease.text(1), "labels": lease.pairs(3)})
        else:
            print(lease.text(1))
        return EXIT["ok"]
    if action in ("rm", "remove", "delete"):
        sync = "--sync" in args
        ids = [a for a in args if a != "--sync"]
        if not ids:
            raise Usage("leases rm [--sync] ID...")
        rc = EXIT["ok"]
        for lease_id in ids:
            try:
                call("Delete", Msg({1: lease_id, 2: sync}))  # DeleteRequest{id=1, sync=2}
                if not ctx.json:
                    print(lease_id)
            except Exception as exc:  # noqa: BLE001 - report each id, keep going
                rc = ctx.fail(exc)
        return rc
    raise Usage(f"unknown action {action!r}; {USAGE}")
