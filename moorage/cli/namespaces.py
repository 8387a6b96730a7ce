"""``moor namespaces ls|create|rm|label``: containerd's namespaces.v1 through the proxy.

    moor namespaces ls [-q]
    moor namespaces create NAME [KEY=VALUE...]
    moor namespaces rm NAME...
    moor namespaces label NAME [KEY=VALUE | KEY=]...   (an empty value removes the label)

Messages go through moorage.cli.wire (namespace.proto's field numbers, named where each is
built or read): no protobuf.
"""

from __future__ import annotations

from moorage.cli.context import EXIT, CliContext, Usage, labels_text, pairs
from moorage.cli.wire import Fields, Msg

SERVICE = "containerd.services.namespaces.v1.Namespaces"
USAGE = "usage: moor namespaces ls [-q] | create NAME [K=V...] | rm NAME... | label NAME [K=V|K=]..."


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT["ok"] if argv else EXIT["usage"]
    action, args = argv[0], argv[1:]
    client = ctx.connect()
    md = ctx.metadata()

    def call(method: str, req: Msg) -> Fields:
        return client.unary(SERVICE, method, req, Fields, timeout=ctx.timeout, metadata=md)

    # Namespace{name=1, labels=2}
    if action in ("ls", "list"):
        quiet = "-q" in args or "--quiet" in args
        # ListNamespacesRequest{} -> ListNamespacesResponse{namespaces=1}
        items = sorted(((n.text(1), n.pairs(2)) for n in call("List", Msg({})).msgs(1)), key=lambda n: n[0])
        if ctx.json:
            ctx.emit_json([{"name": name, "labels": labels} for name, labels in items])
        elif quiet:
            for name, _ in items:
                print(name)
        else:
            ctx.table(["name", "labels"], [(name, labels_text(labels)) for name, labels in items])
        return EXIT["ok"]
    if action == "create":
        if not args:
            raise Usage("namespaces create NAME [KEY=VALUE...]")
        # CreateNamespaceRequest{namespace=1} -> CreateNamespaceResponse{namespace=1}
        ns = call("Create", Msg({1: Msg({1: args[0], 2: pairs(args[1:])})})).msg(1)
        if ctx.json:
            ctx.emit_json({"name": ns.text(1), "labels": ns.pairs(2)})
        return EXIT["ok"]
    if action in ("rm", "remove", "delete"):
        if not args:
            raise Usage("namespaces rm NAME...")
        rc = EXIT["ok"]
        for name in args:
            try:
                call("Delete", Msg({1: name}))  # DeleteNamespaceRequest{name=1}
                if not ctx.json:
                    print(name)
            except Exception as exc:  # noqa: BLE001 - report each name, keep going
                rc = ctx.fail(exc)
        return rc
    if action == "label":
        if not args:
            raise Usage("namespaces label NAME [KEY=VALUE | KEY=]...")
        labels = pairs(args[1:])
        paths = [f"labels.{k}" for k in labels] or ["labels"]
        # UpdateNamespaceRequest{namespace=1, update_mask=2 FieldMask{paths=1}} -> {namespace=1}
        update = Msg({1: Msg({1: args[0], 2: {k: v for k, v in labels.items() if v}}), 2: Msg({1: paths})})
        updated = call("Update", update).msg(1)
        if ctx.json:
            ctx.emit_json({"name": updated.text(1), "labels": updated.pairs(2)})
        else:
            print(f"{updated.text(1)}\t{labels_text(updated.pairs(2))}")
        return EXIT["ok"]
    raise Usage(f"unknown action {action!r}; {USAGE}")
