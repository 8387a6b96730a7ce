"""``moor namespaces ls|create|rm|label``: containerd's namespaces.v1 through the proxy.

    moor namespaces ls [-q]
    moor namespaces create NAME [KEY=VALUE...]
    moor namespaces rm NAME...
    moor namespaces label NAME [KEY=VALUE | KEY=]...   (an empty value removes the label)
"""

from __future__ import annotations


from moorage.cli.context import EXIT, CliContext, Usage, labels_text, pairs

SERVICE = "containerd.services.namespaces.v1.Namespaces"
USAGE = "usage: moor namespaces ls [-q] | create NAME [K=V...] | rm NAME... | label NAME [K=V|K=]..."


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    from moorage.api.containerd.services.namespaces.v1 import namespace_pb2 as pb

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT["ok"] if argv else EXIT["usage"]
    action, args = argv[0], argv[1:]
    client = ctx.connect()
    md = ctx.metadata()

    def call(method: str, req: object, resp_type: type) -> object:
        return client.unary(SERVICE, method, req, resp_type, timeout=ctx.timeout, metadata=md)

    if action in ("ls", "list"):
        quiet = "-q" in args or "--quiet" in args
        resp = call("List", pb.ListNamespacesRequest(), pb.ListNamespacesResponse)
        assert isinstance(resp, pb.ListNamespacesResponse)
        items = sorted(resp.namespaces, key=lambda n: n.name)
        if ctx.json:
            ctx.emit_json([{"name": n.name, "labels": dict(n.labels)} for n in items])
        elif quiet:
            for n in items:
                print(n.name)
        else:
            ctx.table(["name", "labels"], [(n.name, labels_text(n.labels)) for n in items])
        return EXIT["ok"]
    if action == "create":
        if not args:
            raise Usage("namespaces create NAME [KEY=VALUE...]")
        ns = pb.Namespace(name=args[0], labels=pairs(args[1:]))
        resp = call("Create", pb.CreateNamespaceRequest(namespace=ns), pb.CreateNamespaceResponse)
        if ctx.json:
            assert isinstance(resp, pb.CreateNamespaceResponse)
            ctx.emit_json({"name": resp.namespace.name, "labels": dict(resp.namespace.labels)})
        return EXIT["ok"]
    if action in ("rm", "remove", "delete"):
        if not args:
            raise Usage("namespaces rm NAME...")
        from google.protobuf import empty_pb2

        rc = EXIT["ok"]
        for name in args:
            try:
                call("Delete", pb.DeleteNamespaceRequest(name=name), empty_pb2.Empty)
                if not ctx.json:
                    print(name)
            except Exception as exc:  # noqa: BLE001 - report each name, keep going
                rc = ctx.fail(exc)
        return rc
    if action == "label":
        if not args:
            raise Usage("namespaces label NAME [KEY=VALUE | KEY=]...")
        from google.protobuf import field_mask_pb2

        labels = pairs(args[1:])
        paths = [f"labels.{k}" for k in labels] or ["labels"]
        req = pb.UpdateNamespaceRequest(
            namespace=pb.Namespace(name=args[0], labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        resp = call("Update", req, pb.UpdateNamespaceResponse)
        assert isinstance(resp, pb.UpdateNamespaceResponse)
        if ctx.json:
            ctx.emit_json({"name": resp.namespace.name, "labels": dict(resp.namespace.labels)})
        else:
            print(f"{resp.namespace.name}\t{labels_text(resp.namespace.labels)}")
        return EXIT["ok"]
    raise Usage(f"unknown action {action!r}; {USAGE}")
