"""``moor version``: the client's version and the server's (containerd.services.version.v1)."""

from __future__ import annotations

from moorage.cli.context import EXIT, CliContext

SERVICE = "containerd.services.version.v1.Version"


def client_version() -> str:
    """The package's version (pyproject reads it from here too; importlib.metadata would
    cost every `moor version` ~30 ms)."""
    from moorage import __version__

    return __version__


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    from moorage.cli.wire import Fields, Msg  # no protobuf import: ~40 ms of a short command

    client = {"version": client_version()}
    # google.protobuf.Empty -> VersionResponse{version=1, revision=2}
    resp = ctx.connect().unary(SERVICE, "Version", Msg({}), Fields, timeout=ctx.timeout, metadata=ctx.metadata())
    server = {"version": resp.text(1), "revision": resp.text(2)}
    if ctx.json:
        ctx.emit_json({"client": client, "server": server})
    else:
        print(f"Client:\n  Version:  {client['version']}\n")
        print(f"Server:\n  Version:  {server['version']}\n  Revision: {server['revision']}")
    return EXIT["ok"]
