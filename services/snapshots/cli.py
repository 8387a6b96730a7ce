"""``moor snapshots ...``: snapshots through the proxy, with the blocking client.

    moor snapshots [--snapshotter NAME] ls [FILTER...]      KEY PARENT KIND
    moor snapshots tree                                      parent/child chains
    moor snapshots prepare [--mounts] KEY [PARENT]           an active snapshot
    moor snapshots view [--mounts] KEY [PARENT]              a read-only view
    moor snapshots mounts TARGET KEY                         `mount` commands for KEY
    moor snapshots mount TARGET KEY                          mount KEY on TARGET (root)
    moor snapshots commit NAME KEY
    moor snapshots rm KEY...
    moor snapshots usage [KEY...]                            SIZE INODES
    moor snapshots label KEY [KEY=VALUE | KEY=]...           an empty value removes it

The snapshotter defaults to overlayfs (``--snapshotter``, or $CONTAINERD_SNAPSHOTTER as
ctr). Light imports only (no asyncio, no protobuf): messages through moorage.cli.wire (the
field numbers of snapshots.proto, named where each is built or read) and the blocking client.
"""

from __future__ import annotations

import os

from moorage.cli.context import EXIT, CliContext, Usage, human_size, labels_text
from moorage.cli.wire import Fields, Msg, rfc3339
from ttrpc.lighttyping import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from moorage.cli.wire import Value

DEFAULT_SNAPSHOTTER = "overlayfs"  # contract.DEFAULT_SNAPSHOTTER, without its imports
_KINDS = {1: "View", 2: "Active", 3: "Committed"}


class Mount(NamedTuple):
    type: str
    source: str
    options: tuple[str, ...]
    target: str

    @classmethod
    def read(cls, f: Fields) -> Mount:
        # containerd.types.Mount{type=1, source=2, target=3, options=4}
        return cls(f.text(1), f.text(2), tuple(f.texts(4)), f.text(3))


class Info(NamedTuple):
    """A snapshots.v1 Info {name=1, parent=2, kind=3, created_at=4, updated_at=5, labels=6}."""

    name: str
    parent: str
    kind: int
    created_at: Fields
    updated_at: Fields
    labels: dict[str, str]

    @classmethod
    def read(cls, f: Fields) -> Info:
        return cls(f.text(1), f.text(2), f.uint(3), f.msg(4), f.msg(5), f.pairs(6))

SERVICE = "containerd.services.snapshots.v1.Snapshots"
USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


class _Cmd:
    def __init__(self, ctx: CliContext, snapshotter: str) -> None:
        self.ctx = ctx
        self.sn = snapshotter

    def call(self, method: str, fields: Mapping[int, Value]) -> Fields:
        """``method`` with a request of ``fields`` after snapshotter=1 (as every request here has it)."""
        return self.ctx.connect().unary(
            SERVICE, method, Msg({1: self.sn, **fields}), Fields, timeout=self.ctx.timeout,
            metadata=self.ctx.metadata(),
        )

    def infos(self, filters: Sequence[str] = ()) -> list[Info]:
        client = self.ctx.connect()
        return [
            Info.read(i)
            for resp in client.server_stream(  # ListSnapshotsRequest{filters=2} -> ListSnapshotsResponse{info=1}
                SERVICE, "List", Msg({1: self.sn, 2: list(filters)}), Fields, timeout=self.ctx.timeout,
                metadata=self.ctx.metadata(),
            )
            for i in resp.msgs(1)
        ]

    def mounts(self, key: str) -> list[Mount]:
        # MountsRequest{key=2} -> MountsResponse{mounts=1}
        return [Mount.read(m) for m in self.call("Mounts", {2: key}).msgs(1)]


def _kind(k: int) -> str:
    return _KINDS.get(k, "Unknown")


def _print_mounts(ctx: CliContext, target: str, mounts: Sequence[Mount]) -> None:
    if ctx.json:
        ctx.emit_json([{"type": m.type, "source": m.source, "target": m.target, "options": list(m.options)} for m in mounts])
        return
    import shlex  # re: ~15 ms, for the commands that print mounts only

    for m in mounts:
        where = os.path.join(target, m.target.lstrip("/")) if m.target else target
        opts = f" -o {shlex.quote(','.join(m.options))}" if m.options else ""
        print(f"mount -t {m.type} {shlex.quote(m.source)} {shlex.quote(where)}{opts}")


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    snapshotter = os.environ.get("CONTAINERD_SNAPSHOTTER", DEFAULT_SNAPSHOTTER)
    while argv and argv[0].startswith("--snapshotter"):
        opt = argv.pop(0)
        if "=" in opt:
            snapshotter = opt.split("=", 1)[1]
        elif argv:
            snapshotter = argv.pop(0)
        else:
            raise Usage("--snapshotter NAME")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT["ok"] if argv else EXIT["usage"]
    action, args = argv[0], argv[1:]
    handler = _ACTIONS.get(action)
    if handler is None:
        raise Usage(f"unknown snapshots command {action!r}\n{USAGE}")
    return handler(_Cmd(ctx, snapshotter), args)


def _ls(c: _Cmd, args: list[str]) -> int:
    infos = c.infos([a for a in args if not a.startswith("-")])
    if c.ctx.json:
        c.ctx.emit_json([
            {"key": i.name, "parent": i.parent, "kind": _kind(i.kind),
             "created_at": rfc3339(i.created_at), "updated_at": rfc3339(i.updated_at), "labels": i.labels}
            for i in infos
        ])
    else:
        c.ctx.table(["key", "parent", "kind"], [(i.name, i.parent, _kind(i.kind)) for i in infos])
    return EXIT["ok"]


def _tree(c: _Cmd, args: list[str]) -> int:
    infos = c.infos()
    children: dict[str, list[str]] = {}
    for i in infos:
        children.setdefault(i.parent, []).append(i.name)
    if c.ctx.json:
        c.ctx.emit_json({p: sorted(ch) for p, ch in children.items()})
        return EXIT["ok"]

    def show(name: str, depth: int) -> None:
        print("  " * depth + ("\\_ " if depth else "") + name)
        for child in sorted(children.get(name, [])):
            show(child, depth + 1)

    for root in sorted(children.get("", [])):
        show(root, 0)
    return EXIT["ok"]


def _create(c: _Cmd, args: list[str], view: bool) -> int:
    show = "--mounts" in args
    rest = [a for a in args if a != "--mounts"]
    if not 1 <= len(rest) <= 2:
        raise Usage(f"snapshots {'view' if view else 'prepare'} [--mounts] KEY [PARENT]")
    key, parent = rest[0], rest[1] if len(rest) == 2 else ""
    # View/PrepareSnapshotRequest{key=2, parent=3} -> View/PrepareSnapshotResponse{mounts=1}
    resp = c.call("View" if view else "Prepare", {2: key, 3: parent})
    if show or c.ctx.json:
        _print_mounts(c.ctx, "/tmp", [Mount.read(m) for m in resp.msgs(1)])
    return EXIT["ok"]


def _prepare(c: _Cmd, args: list[str]) -> int:
    return _create(c, args, False)


def _view(c: _Cmd, args: list[str]) -> int:
    return _create(c, args, True)


def _mounts(c: _Cmd, args: list[str]) -> int:
    if len(args) != 2:
        raise Usage("snapshots mounts TARGET KEY")
    _print_mounts(c.ctx, args[0], c.mounts(args[1]))
    return EXIT["ok"]


def _mount(c: _Cmd, args: list[str]) -> int:
    if len(args) != 2:
        raise Usage("snapshots mount TARGET KEY")
    from .contract import Mount as MountRecord
    from .mounts import mount_all

    records: list[MountRecord] = [MountRecord(m.type, m.source, m.options, m.target) for m in c.mounts(args[1])]
    mount_all(records, args[0])
    return EXIT["ok"]


def _commit(c: _Cmd, args: list[str]) -> int:
    if len(args) != 2:
        raise Usage("snapshots commit NAME KEY")
    c.call("Commit", {2: args[0], 3: args[1]})  # CommitSnapshotRequest{name=2, key=3}
    return EXIT["ok"]


def _rm(c: _Cmd, args: list[str]) -> int:
    if not args:
        raise Usage("snapshots rm KEY...")
    code = EXIT["ok"]
    for key in args:
        try:
            c.call("Remove", {2: key})  # RemoveSnapshotRequest{key=2}
        except Exception as exc:  # report each, keep going, as ctr
            code = c.ctx.fail(exc)
    return code


def _usage(c: _Cmd, args: list[str]) -> int:
    keys = args or [i.name for i in c.infos()]
    rows = []
    for key in keys:
        u = c.call("Usage", {2: key})  # UsageRequest{key=2} -> UsageResponse{size=1, inodes=2}
        rows.append((key, u.int64(1), u.int64(2)))
    if c.ctx.json:
        c.ctx.emit_json([{"key": k, "size": s, "inodes": n} for k, s, n in rows])
    else:
        c.ctx.table(["key", "size", "inodes"], [(k, human_size(s), n) for k, s, n in rows])
    return EXIT["ok"]


def _label(c: _Cmd, args: list[str]) -> int:
    if not args:
        raise Usage("snapshots label KEY [KEY=VALUE | KEY=]...")
    key, pairs = args[0], args[1:]
    labels: dict[str, str] = {}
    paths = []
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise Usage(f"label {p!r} is not KEY=VALUE")
        paths.append(f"labels.{k}")
        if v:
            labels[k] = v
    if paths:
        # UpdateSnapshotRequest{info=2 Info{name=1, labels=6}, update_mask=3 FieldMask{paths=1}}
        resp = c.call("Update", {2: Msg({1: key, 6: labels}), 3: Msg({1: paths})})
    else:
        resp = c.call("Stat", {2: key})  # StatSnapshotRequest{key=2}
    result = Info.read(resp.msg(1))  # Update/StatSnapshotResponse{info=1}
    if c.ctx.json:
        c.ctx.emit_json(result.labels)
    else:
        print(labels_text(result.labels))
    return EXIT["ok"]


_ACTIONS = {
    "ls": _ls, "list": _ls, "tree": _tree, "prepare": _prepare, "view": _view,
    "mounts": _mounts, "mount": _mount, "commit": _commit, "rm": _rm, "remove": _rm,
    "delete": _rm, "usage": _usage, "label": _label,
}
