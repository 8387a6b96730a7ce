"""``moor sandbox run|ls|inspect|stop|rm``: sandbox.v1 Store and Controller through the proxy.

    moor sandbox run [--sandboxer NAME] [--runtime NAME] [--hostname H] [--host-network]
                     [-p|--port [IP:]HOST:CTR[/PROTO]]... [--dns IP]... [--dns-search D]...
                     [--dns-option OPT]... [--label K=V]... ID
    moor sandbox ls [-q]
    moor sandbox inspect ID...
    moor sandbox stop [--timeout SECONDS] ID...
    moor sandbox rm [-f] ID...          (-f stops a ready sandbox first)

Blocking client, no asyncio nor protobuf: messages go through moorage.cli.wire by the field
numbers of containerd's sandbox.proto (services/sandbox/v1 and types), named where each is
built or read.
"""

from __future__ import annotations

import sys

from moorage import errdefs
from moorage.cli.context import EXIT, CliContext, Usage, labels_text, pairs
from moorage.cli.flags import Args, Flags
from moorage.cli.wire import Fields, Msg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SANDBOXER = "podsandbox"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
STORE = "containerd.services.sandbox.v1.Store"
CONTROLLER = "containerd.services.sandbox.v1.Controller"
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
    # Sandbox{sandbox_id=1, runtime=2 {name=1}, labels=4, created_at=5, updated_at=6,
    # extensions=7 map<string, Any{type_url=1, value=2}>, sandboxer=10}
    # ControllerStatusResponse{pid=2, state=3, info=4, created_at=5, exited_at=6, address=8}

    def __init__(self, ctx: CliContext) -> None:
        self.client = ctx.connect()
        self.md = ctx.metadata()
        self.timeout = ctx.timeout

    def call(self, service: str, method: str, fields: dict[int, Any]) -> Fields:
        reply: Fields = self.client.unary(service, method, Msg(fields), Fields, timeout=self.timeout, metadata=self.md)
        return reply

    def get(self, sandbox_id: str) -> Fields:
        return self.call(STORE, "Get", {1: sandbox_id}).msg(1)  # StoreGetRequest{sandbox_id=1} -> {sandbox=1}

    def status(self, sandbox_id: str, sandboxer: str, verbose: bool = False) -> Fields | None:
        try:  # ControllerStatusRequest{sandbox_id=1, verbose=2, sandboxer=10}
            return self.call(CONTROLLER, "Status", {1: sandbox_id, 2: verbose, 10: sandboxer})
        except errdefs.NotFound:
            return None


def _ts(msg: Fields, number: int) -> str:
    """A Timestamp field {seconds=1, nanos=2} to the second, as Timestamp.ToNanoseconds()
    through datetime wrote it; "-" when unset."""
    import datetime

    if not msg.has(number):
        return "-"
    ts = msg.msg(number)
    ns = ts.int64(1) * 1_000_000_000 + ts.int64(2)
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(api: _Api, args: Args, ctx: CliContext) -> int:
    from .podconfig import POD_CONFIG_TYPE, DNSConfig, PodConfig, PortMapping

    try:
        ports = tuple(PortMapping.parse(p) for p in args.port)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    dns = DNSConfig(tuple(args.dns), tuple(args.dns_search), tuple(args.dns_option)) if (args.dns or args.dns_search or args.dns_option) else None
    pod = PodConfig(hostname=args.hostname, dns=dns, port_mappings=ports, host_network=args.host_network)
    record = Msg({1: args.id, 2: Msg({1: args.runtime}), 4: pairs(args.label), 10: args.sandboxer})
    api.call(STORE, "Create", {1: record})  # StoreCreateRequest{sandbox=1}
    try:
        # ControllerCreateRequest{sandbox_id=1, options=3 Any{type_url=1, value=2}, sandbox=6,
        # sandboxer=10}; ControllerStartRequest{sandbox_id=1, sandboxer=10} -> {pid=2, address=5}
        api.call(CONTROLLER, "Create", {1: args.id, 3: Msg({1: POD_CONFIG_TYPE, 2: pod.to_json()}), 6: record,
                                        10: args.sandboxer})
        start = api.call(CONTROLLER, "Start", {1: args.id, 10: args.sandboxer})
    except errdefs.Error:
        if api.status(args.id, args.sandboxer) is None:  # nothing left to retry: forget the record
            api.call(STORE, "Delete", {1: args.id})  # StoreDeleteRequest{sandbox_id=1}
        else:
            print(f"moor: sandbox {args.id} kept NotReady; `moor sandbox rm {args.id}` retries its teardown", file=sys.stderr)
        raise
    st = api.status(args.id, args.sandboxer)
    ips = st.pairs(4).get("ips", "") if st is not None else ""
    if ctx.json:
        ctx.emit_json({"id": args.id, "pid": start.uint(2), "address": start.text(5), "ips": ips.split(",") if ips else []})
    else:
        print(args.id)
    return EXIT["ok"]


def _ls(api: _Api, args: Args, ctx: CliContext) -> int:
    rows: list[dict[str, Any]] = []
    for sb in api.call(STORE, "List", {}).msgs(1):  # StoreListRequest{} -> {list=1}
        st = api.status(sb.text(1), sb.text(10)) if sb.text(10) else None
        rows.append(
            {
                "id": sb.text(1),
                "sandboxer": sb.text(10),
                "runtime": sb.msg(2).text(1),
                "state": st.text(3) if st is not None else "-",
                "ips": st.pairs(4).get("ips", "") if st is not None else "",
                "created": _ts(sb, 5),
                "labels": sb.pairs(4),
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
        st = api.status(sandbox_id, sb.text(10), verbose=True) if sb.text(10) else None
        extensions = {e.text(1): e.msg(2) for e in sb.msgs(7)}
        out.append(
            {
                "id": sb.text(1),
                "sandboxer": sb.text(10),
                "runtime": {"name": sb.msg(2).text(1)},
                "labels": sb.pairs(4),
                "extensions": {k: {"type_url": v.text(1), "value": v.blob(2).decode("utf-8", "replace")} for k, v in extensions.items()},
                "created_at": _ts(sb, 5),
                "updated_at": _ts(sb, 6),
                "status": None
                if st is None
                else {
                    "state": st.text(3),
                    "pid": st.uint(2),
                    "info": st.pairs(4),
                    "created_at": _ts(st, 5),
                    "exited_at": _ts(st, 6),
                    "address": st.text(8),
                },
            }
        )
    ctx.emit_json(out)
    return EXIT["ok"]


def _stop(api: _Api, args: Args, ctx: CliContext) -> int:
    for sandbox_id in args.ids:
        sb = api.get(sandbox_id)
        # ControllerStopRequest{sandbox_id=1, timeout_secs=2, sandboxer=10}
        api.call(CONTROLLER, "Stop", {1: sandbox_id, 2: args.timeout, 10: sb.text(10)})
        print(sandbox_id)
    return EXIT["ok"]


def _rm(api: _Api, args: Args, ctx: CliContext) -> int:
    for sandbox_id in args.ids:
        sb = api.get(sandbox_id)
        st = api.status(sandbox_id, sb.text(10)) if sb.text(10) else None
        if st is not None:
            if st.text(3) == "SANDBOX_READY" and not args.force:
                raise errdefs.FailedPrecondition(f"sandbox {sandbox_id} is ready: stop it first or use -f")
            # ControllerShutdownRequest{sandbox_id=1, sandboxer=10}
            api.call(CONTROLLER, "Shutdown", {1: sandbox_id, 10: sb.text(10)})
        api.call(STORE, "Delete", {1: sandbox_id})  # StoreDeleteRequest{sandbox_id=1}
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
    if name == "stop" and not 0 <= args.timeout < 1 << 32:  # ControllerStopRequest's timeout_secs: a uint32
        raise errdefs.InvalidArgument(f"--timeout: {args.timeout} is out of range (0 to {(1 << 32) - 1} seconds)")
    return action(_Api(ctx), args, ctx)
