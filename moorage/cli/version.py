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
    from google.protobuf import empty_pb2

    from moorage.api.containerd.services.version.v1 import version_pb2 as pb

    client = {"version": client_version()}
    resp = ctx.connect().unary(
        SERVICE, "Version", empty_pb2.Empty(), pb.VersionResponse, timeout=ctx.timeout, metadata=ctx.metadata()
    )
    assert isinstance(resp, pb.VersionResponse)
    server = {"version": resp.version, "revision": resp.revision}
    if ctx.json:
        ctx.emit_json({"client": client, "server": server})
    else:
        print(f"Client:\n  Version:  {client['version']}\n")
        print(f"Server:\n  Version:  {server['version']}\n  Revision: {server['revision']}")
    return EXIT["ok"]
