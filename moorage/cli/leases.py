"""``moor leases ls|create|rm``: containerd's leases.v1 through the proxy.

    moor leases ls [-q] [FILTER...]
    moor leases create [--id ID] [--expires DURATION] [KEY=VALUE...]   # prints the id
    moor leases rm [--sync] ID...

``--expires`` (default 24h, as ctr; 0 = never) sets ``containerd.io/gc.expire``;
DURATION is seconds or a number with ``s``, ``m``, ``h`` or ``d``.
"""

from __future__ import annotations

import time

from moorage.cli.context import EXIT, CliContext, Usage, labels_text, pairs

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
    from google.protobuf import empty_pb2

    from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT["ok"] if argv else EXIT["usage"]
    action, args = argv[0], argv[1:]
    client = ctx.connect()
    md = ctx.metadata()

    def call(method: str, req: object, resp_type: type) -> object:
        return client.unary(SERVICE, method, req, resp_type, timeout=ctx.timeout, metadata=md)

    if action in ("ls", "list"):
        quiet = any(a in ("-q", "--quiet") for a in args)
        filters = [a for a in args if a not in ("-q", "--quiet")]
        resp = call("List", pb.ListRequest(filters=filters), pb.ListResponse)
        assert isinstance(resp, pb.ListResponse)
        if ctx.json:
            ctx.emit_json(
                [
                    {"id": x.id, "created_at": _rfc3339(x.created_at.ToSeconds()), "labels": dict(x.labels)}
                    for x in resp.leases
                ]
            )
        elif quiet:
            for x in resp.leases:
                print(x.id)
        else:
            rows = [(x.id, _rfc3339(x.created_at.ToSeconds()), labels_text(x.labels)) for x in resp.leases]
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
        resp = call("Create", pb.CreateRequest(id=lease_id, labels=labels), pb.CreateResponse)
        assert isinstance(resp, pb.CreateResponse)
        if ctx.json:
            ctx.emit_json({"id": resp.lease.id, "labels": dict(resp.lease.labels)})
        else:
            print(resp.lease.id)
        return EXIT["ok"]
    if action in ("rm", "remove", "delete"):
        sync = "--sync" in args
        ids = [a for a in args if a != "--sync"]
        if not ids:
            raise Usage("leases rm [--sync] ID...")
        rc = EXIT["ok"]
        for lease_id in ids:
            try:
                call("Delete", pb.DeleteRequest(id=lease_id, sync=sync), empty_pb2.Empty)
                if not ctx.json:
                    print(lease_id)
            except Exception as exc:  # noqa: BLE001 - report each id, keep going
                rc = ctx.fail(exc)
        return rc
    raise Usage(f"unknown action {action!r}; {USAGE}")
