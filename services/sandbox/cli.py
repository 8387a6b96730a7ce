"""``moor sandbox run|ls|inspect|stop|rm``: sandbox.v1 Store and Controller through the proxy.

    moor sandbox run [--sandboxer NAME] [--runtime NAME] [--hostname H] [--host-network]
                     [-p|--port [IP:]HOST:CTR[/PROTO]]... [--dns IP]... [--dns-search D]...
                     [--dns-option OPT]... [--label K=V]... ID
    moor sandbox ls [-q]
    moor sandbox inspect ID...
    moor sandbox stop [--timeout SECONDS] ID...
    moor sandbox rm [-f] ID...          (-f stops a ready sandbox first)

Blocking client, no asyncio.
"""

from __future__ import annotations

import datetime
import sys

from moorage import errdefs
from moorage.cli.context import EXIT, CliContext, Usage, labels_text, pairs
from moorage.cli.flags import Args, Flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from moorage.api.containerd.services.sandbox.v1.sandbox_ttrpc import ControllerBlockingClient, StoreBlockingClient

DEFAULT_SANDBOXER = "podsandbox"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
USAGE = "usage: moor sandbox run [OPTIONS] ID | ls [-q] | inspect ID... | stop [--timeout S] ID... | rm [-f] ID..."


def _flags(action: str) -> Flags:
    if action == "run":
        p = Flags("moor sandbox run", "[FLAGS] ID", "Create and start a pod sandbox.")
        p.value("--sandboxer", metavar="NAME", default=DEFAULT_SANDBOXER, help="sandbox controller")
        p.value("--runtime", metavar="NAME", default=DEFAULT_RUNTIME, help="shim runtime")
        p.value("--hostname", metavar="NAME", help="the pod's hostname")
        p.switch("--host-network", help="the host's network namespace")
        p.value("-p", "--port", metavar="[IP:]HOST:CTR[/PROTO]", repeat=True, help="publish a port")
        p.value("--dns", metavar="IP", repeat=True, help="name server")
        p.value("--dns-search", metavar="DOMAIN", repeat=True, help="search domain")
        p.value("--dns-option", metavar="OPT", repeat=True, help="resolv.conf option")
        p.value("--label", metavar="KEY=VALUE", repeat=True, help="sandbox label")
        p.arg("id")
    elif action == "ls":
        p = Flags("moor sandbox ls", "[-q]", "List sandboxes.")
        p.switch("-q", "--quiet", help="ids only")
    elif action == "stop":
        p = Flags("moor sandbox stop", "[--timeout SECONDS] ID...", "Stop sandboxes.")
        p.value("--timeout", metavar="SECONDS", kind=int, default=0, help="grace time")
        p.many("ids", metavar="ID")
    elif action == "rm":
        p = Flags("moor sandbox rm", "[-f] ID...", "Remove sandboxes (-f stops a ready one first).")
        p.switch("-f", "--force", help="stop a ready sandbox first")
        p.many("ids", metavar="ID")
    else:
        p = Flags(f"moor sandbox {action}", "ID...")
        p.many("ids", metavar="ID")
    return p


class _Api:
    def __init__(self, ctx: CliContext) -> None:
        from moorage.api.containerd.services.sandbox.v1 import sandbox_pb2
        from moorage.api.containerd.services.sandbox.v1.sandbox_ttrpc import ControllerBlockingClient, StoreBlockingClient

        client = ctx.connect()
        self.pb = sandbox_pb2
        self.store: StoreBlockingClient = StoreBlockingClient(client)
        self.ctl: ControllerBlockingClient = ControllerBlockingClient(client)
        self.md = ctx.metadata()
        self.timeout = ctx.timeout

    def get(self, sandbox_id: str) -> Any:
        return self.store.Get(self.pb.StoreGetRequest(sandbox_id=sandbox_id), timeout=self.timeout, metadata=self.md).sandbox

    def status(self, sandbox_id: str, sandboxer: str, verbose: bool = False) -> Any | None:
        req = self.pb.ControllerStatusRequest(sandbox_id=sandbox_id, sandboxer=sandboxer, verbose=verbose)
        try:
            return self.ctl.Status(req, timeout=self.timeout, metadata=self.md)
        except errdefs.NotFound:
            return None


def _ts(msg: Any, field: str) -> str:
    if not msg.HasField(field):
        return "-"
    ns = getattr(msg, field).ToNanoseconds()
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(api: _Api, args: Args, ctx: CliContext) -> int:
    from google.protobuf import any_pb2

    from moorage.api.containerd.types import sandbox_pb2 as types_pb

    from .contract import POD_CONFIG_TYPE, DNSConfig, PodConfig, PortMapping

    try:
        ports = tuple(PortMapping.parse(p) for p in args.port)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    dns = DNSConfig(tuple(args.dns), tuple(args.dns_search), tuple(args.dns_option)) if (args.dns or args.dns_search or args.dns_option) else None
    pod = PodConfig(hostname=args.hostname, dns=dns, port_mappings=ports, host_network=args.host_network)
    record = types_pb.Sandbox(sandbox_id=args.id, sandboxer=args.sandboxer, labels=pairs(args.label))
    record.runtime.name = args.runtime
    pb = api.pb
    api.store.Create(pb.StoreCreateRequest(sandbox=record), timeout=api.timeout, metadata=api.md)
    req = pb.ControllerCreateRequest(sandbox_id=args.id, sandboxer=args.sandboxer, sandbox=record)
    req.options.CopyFrom(any_pb2.Any(type_url=POD_CONFIG_TYPE, value=pod.to_json()))
    try:
        api.ctl.Create(req, timeout=api.timeout, metadata=api.md)
        start = api.ctl.Start(pb.ControllerStartRequest(sandbox_id=args.id, sandboxer=args.sandboxer), timeout=api.timeout, metadata=api.md)
    except errdefs.Error:
        if api.status(args.id, args.sandboxer) is None:  # nothing left to retry: forget the record
            api.store.Delete(pb.StoreDeleteRequest(sandbox_id=args.id), timeout=api.timeout, metadata=api.md)
        else:
            print(f"moor: sandbox {args.id} kept NotReady; `moor sandbox rm {args.id}` retries its teardown", file=sys.stderr)
        raise
    st = api.status(args.id, args.sandboxer)
    ips = st.info.get("ips", "") if st is not None else ""
    if ctx.json:
        ctx.emit_json({"id": args.id, "pid": start.pid, "address": start.address, "ips": ips.split(",") if ips else []})
    else:
        print(args.id)
    return EXIT["ok"]


def _ls(api: _Api, args: Args, ctx: CliContext) -> int:
    resp = api.store.List(api.pb.StoreListRequest(), timeout=api.timeout, metadata=api.md)
    rows: list[dict[str, Any]] = []
    for sb in resp.list:
        st = api.status(sb.sandbox_id, sb.sandboxer) if sb.sandboxer else None
        rows.append(
            {
                "id": sb.sandbox_id,
                "sandboxer": sb.sandboxer,
                "runtime": sb.runtime.name,
                "state": st.state if st is not None else "-",
                "ips": st.info.get("ips", "") if st is not None else "",
                "created": _ts(sb, "created_at"),
                "labels": dict(sb.labels),
            }
        )
    if ctx.json:
        ctx.emit_json(rows)
    elif args.quiet:
        for r in rows:
            print(r["id"])
    else:
        ctx.table(
            ["sandbox", "sandboxer", "runtime", "state", "ip", "created", "labels"],
            [(r["id"], r["sandboxer"], r["runtime"], r["state"], r["ips"] or "-", r["created"], labels_text(r["labels"])) for r in rows],
        )
    return EXIT["ok"]


def _inspect(api: _Api, args: Args, ctx: CliContext) -> int:
    out = []
    for sandbox_id in args.ids:
        sb = api.get(sandbox_id)
        st = api.status(sandbox_id, sb.sandboxer, verbose=True) if sb.sandboxer else None
        out.append(
            {
                "id": sb.sandbox_id,
                "sandboxer": sb.sandboxer,
                "runtime": {"name": sb.runtime.name},
                "labels": dict(sb.labels),
                "extensions": {k: {"type_url": v.type_url, "value": v.value.decode("utf-8", "replace")} for k, v in sb.extensions.items()},
                "created_at": _ts(sb, "created_at"),
                "updated_at": _ts(sb, "updated_at"),
                "status": None
                if st is None
                else {
                    "state": st.state,
                    "pid": st.pid,
                    "info": dict(st.info),
                    "created_at": _ts(st, "created_at"),
                    "exited_at": _ts(st, "exited_at"),
                    "address": st.address,
                },
            }
        )
    ctx.emit_json(out)
    return EXIT["ok"]


def _stop(api: _Api, args: Args, ctx: CliContext) -> int:
    for sandbox_id in args.ids:
        sb = api.get(sandbox_id)
        req = api.pb.ControllerStopRequest(sandbox_id=sandbox_id, sandboxer=sb.sandboxer, timeout_secs=args.timeout)
        api.ctl.Stop(req, timeout=api.timeout, metadata=api.md)
        print(sandbox_id)
    return EXIT["ok"]


def _rm(api: _Api, args: Args, ctx: CliContext) -> int:
    pb = api.pb
    for sandbox_id in args.ids:
        sb = api.get(sandbox_id)
        st = api.status(sandbox_id, sb.sandboxer) if sb.sandboxer else None
        if st is not None:
            if st.state == "SANDBOX_READY" and not args.force:
                raise errdefs.FailedPrecondition(f"sandbox {sandbox_id} is ready: stop it first or use -f")
            api.ctl.Shutdown(pb.ControllerShutdownRequest(sandbox_id=sandbox_id, sandboxer=sb.sandboxer), timeout=api.timeout, metadata=api.md)
        api.store.Delete(pb.StoreDeleteRequest(sandbox_id=sandbox_id), timeout=api.timeout, metadata=api.md)
        print(sandbox_id)
    return EXIT["ok"]


ACTIONS = {"run": _run, "ls": _ls, "list": _ls, "inspect": _inspect, "stop": _stop, "rm": _rm, "remove": _rm}


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT["ok"] if argv else EXIT["usage"]
    action = ACTIONS.get(argv[0])
    if action is None:
        raise Usage(f"unknown sandbox command {argv[0]!r}\n{USAGE}")
    name = "ls" if argv[0] == "list" else "rm" if argv[0] == "remove" else argv[0]
    args = _flags(name).parse(argv[1:])
    return action(_Api(ctx), args, ctx)
