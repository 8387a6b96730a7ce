"""``moor pull|push|images|rmi|tag|import|export``: images and transfers with the blocking client.

    moor pull [--platform P]... [--all-platforms] [--hosts-dir D] [--user U[:P]] [--plain-http]
              [--snapshotter S] [--no-unpack] [--label K=V]... REF
    moor push [--platform P]... [--hosts-dir D] [--user U[:P]] [--plain-http] REF [LOCAL]
    moor images [ls] [-q] [FILTER...]
    moor rmi [--sync] NAME...        (--sync: return once a collection freed what they held)
    moor tag SOURCE TARGET...
    moor import [--base-name N] [--platform P]... [--no-unpack] [--snapshotter S] FILE|-
    moor export [--platform P]... [--all-platforms] FILE|- NAME...

A transfer uses one connection per stream it names (progress, credentials, data), each
served by a thread, and the Transfer call on its own: nothing blocks on another stream.
Progress shows per-layer bars like nerdctl's on a terminal, one line per finished blob
otherwise. `--user` answers the daemon's credential requests for the reference's own host
only (never a mirror's or a token realm's). Light imports: no asyncio, no protobuf (messages
through moorage.cli.wire, by the field numbers of containerd's .proto files, named where
each message is built or read).
"""

from __future__ import annotations

import os
import sys
import time

from moorage import errdefs
from moorage.cli.context import EXIT, CliContext, Usage, human_size, pairs
from moorage.cli.wire import Fields, Msg, any_of
from ttrpc.lighttyping import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Sequence
    from typing import Any

    from moorage.cli.wire import Value
    from ttrpc.blocking import BlockingStream, Client

    Stream = BlockingStream[Msg, Fields]

USAGE = __doc__.split("\n\n")[1] if __doc__ else ""
NONE, CREDENTIALS = 0, 1  # registry.proto AuthType
IMAGES = "containerd.services.images.v1.Images"
TRANSFER = "containerd.services.transfer.v1.Transfer"
STREAMING = "containerd.services.streaming.v1.Streaming"
CONTENT = "containerd.services.content.v1.Content"
TYPES = "containerd.types.transfer."


class Descriptor(NamedTuple):
    """A containerd.types.Descriptor {media_type=1, digest=2, size=3}."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def read(cls, f: Fields) -> Descriptor:
        return cls(f.text(1), f.text(2), f.int64(3))


class ProgressEvent(NamedTuple):
    """A containerd.types.transfer.Progress {event=1, name=2, progress=4, total=5, desc=6}."""

    event: str
    name: str
    progress: int
    total: int
    desc: Descriptor

    @classmethod
    def read(cls, f: Fields) -> ProgressEvent:
        return cls(f.text(1), f.text(2), f.int64(4), f.int64(5), Descriptor.read(f.msg(6)))


class Image(NamedTuple):
    """An images.v1 Image {name=1, labels=2, target=3 Descriptor}."""

    name: str
    labels: dict[str, str]
    target: Descriptor

    @classmethod
    def read(cls, f: Fields) -> Image:
        return cls(f.text(1), f.pairs(2), Descriptor.read(f.msg(3)))


class Args:
    def __init__(self, argv: Sequence[str], flags: set[str], options: set[str], multi: set[str]) -> None:
        self.flags: set[str] = set()
        self.opts: dict[str, list[str]] = {}
        self.pos: list[str] = []
        it = iter(argv)
        for a in it:
            if a == "--":
                self.pos += list(it)
                break
            name, eq, val = a.partition("=")
            if name in flags and not eq:
                self.flags.add(name)
            elif name in options or name in multi:
                if not eq:
                    try:
                        val = next(it)
                    except StopIteration:
                        raise Usage(f"{name} needs a value") from None
                self.opts.setdefault(name, []).append(val)
            elif a.startswith("-") and a != "-":
                raise Usage(f"unknown option {a}\n{USAGE}")
            else:
                self.pos.append(a)

    def one(self, name: str, default: str = "") -> str:
        v = self.opts.get(name)
        return v[-1] if v else default


def _platforms(values: Sequence[str]) -> list[Msg]:
    """containerd.types.Platform {os=1, architecture=2, variant=3} of each value, else the host's."""
    from .oci import host_platform, parse_platform
    ps = [parse_platform(v) for v in values] or [host_platform()]
    return [Msg({1: p.os, 2: p.architecture, 3: p.variant}) for p in ps]


def _stream_id(prefix: str) -> str:
    from binascii import b2a_base64  # base64 imports re: ~15 ms of every command here

    token = b2a_base64(os.urandom(6), newline=False).decode().replace("+", "-").replace("/", "_")
    return f"{prefix}-{time.time_ns()}-{token}"


def _type(a: Fields) -> str:
    """The type name of a google.protobuf.Any {type_url=1, value=2}."""
    return a.text(1).rsplit("/", 1)[-1]


class Progress:
    """nerdctl-style progress: a line per blob, redrawn in place on a terminal."""

    def __init__(self, title: str, quiet: bool = False) -> None:
        self.title = title
        self.tty = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.rows: dict[str, list[Any]] = {}  # name -> [status, progress, total]
        self.order: list[str] = []
        self.start = time.monotonic()
        self.drawn = 0
        self.last = 0.0
        import threading  # only transfers draw progress (threading: several ms of `moor images`)

        self.lock = threading.Lock()
        self.total = 0

    def event(self, ev: ProgressEvent) -> None:
        with self.lock:
            name = ev.name
            if ev.event.startswith(("Resolving", "Pulling", "Completed", "fetching", "Pushed")):
                if self.title not in self.rows:
                    self.rows[self.title] = ["resolving", 0, 0]
                    self.order.insert(0, self.title)
                if ev.event.startswith(("Pulling", "fetching", "Completed", "Pushed")):
                    self.rows[self.title][0] = "resolved" if not ev.event.startswith(("Completed", "Pushed")) else "done"
                if not self.tty and not self.quiet and ev.event.startswith(("Completed", "Pushed")):
                    print(ev.event, file=sys.stderr)
                self.draw()
                return
            if ev.desc and ev.desc.digest:
                kind = "layer" if "layer" in ev.desc.media_type else "config" if "config" in ev.desc.media_type \
                    else "manifest" if "manifest" in ev.desc.media_type else "index" if "index" in ev.desc.media_type else "blob"
                name = f"{kind}-{ev.desc.digest}"
            elif not name:
                return
            if name not in self.rows:
                self.rows[name] = ["waiting", 0, 0]
                self.order.append(name)
            row = self.rows[name]
            was = row[0]
            row[0] = {"complete": "done", "already exists": "exists", "pushed content": "done", "exists": "exists",
                      "mounted": "mounted", "saved": "done"}.get(ev.event, ev.event)
            row[1], row[2] = max(row[1], ev.progress), ev.total or row[2] or (ev.desc.size if ev.desc else 0)
            if row[0] in ("done", "exists", "mounted") and was not in ("done", "exists", "mounted"):
                self.total += row[2] if row[0] == "done" else 0
                if not self.tty and not self.quiet:
                    print(f"{name}: {row[0]} {human_size(row[2])}", file=sys.stderr)
            self.draw()

    def draw(self, final: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.1:
            return
        self.last = now
        width = 40
        lines = []
        for name in self.order:
            st, cur, tot = self.rows[name]
            frac = 1.0 if st in ("done", "exists", "mounted", "resolved") else (cur / tot if tot else 0.0)
            bar = "+" * int(frac * width) + "-" * (width - int(frac * width))
            label = name[:19 + name.find("-") + 1] + "..." if len(name) > 30 else name
            amount = f"{human_size(cur)}/{human_size(tot)}" if st not in ("done", "exists", "mounted") and tot else ""
            lines.append(f"{label + ':':<32} {st:<12} |{bar}| {amount}")
        elapsed = now - self.start
        lines.append(f"elapsed: {elapsed:.1f} s{'':<20} total: {human_size(self.total)} ({human_size(int(self.total / max(elapsed, 1e-3)))}/s)")
        out = ("\x1b[%dA" % self.drawn if self.drawn else "") + "".join(f"\x1b[2K{line}\n" for line in lines)
        sys.stderr.write(out)
        sys.stderr.flush()
        self.drawn = len(lines)


class Transfer:
    """One Transfer call with its streams, each stream on its own connection and thread."""

    def __init__(self, ctx: CliContext) -> None:
        self.ctx = ctx
        self.clients: list[Client] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def _client(self) -> Client:
        from ttrpc.blocking import Client
        try:
            c = Client(self.ctx.address, error_factory=errdefs.from_status)
        except OSError as exc:
            raise errdefs.Unavailable(f"cannot reach moorage at {self.ctx.address}: {exc.strerror or exc}") from exc
        self.clients.append(c)
        return c

    def open(self, prefix: str, body: Callable[[Stream], None]) -> str:
        sid = _stream_id(prefix)
        s: Stream = self._client().stream(STREAMING, "Stream", Fields, None, self.ctx.metadata())
        s.send(any_of("containerd.services.streaming.v1.StreamInit", {1: sid}))  # StreamInit{id=1}
        if s.recv() is None:
            raise errdefs.Unavailable("stream closed before its ack")

        def run() -> None:
            try:
                body(s)
            except BaseException as exc:  # noqa: BLE001 - reported by run()
                self.errors.append(exc)
        import threading

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)
        return sid

    def run(self, src: Msg, dst: Msg, progress_stream: str = "") -> None:
        """Transfer ``src`` to ``dst`` (each an Any, see :func:`any_of`)."""
        # TransferRequest{source=1, destination=2, options=3 TransferOptions{progress_stream=1}}
        req = Msg({1: src, 2: dst, 3: Msg({1: progress_stream})})
        try:
            self._client().unary_raw(TRANSFER, "Transfer", req.SerializeToString(), metadata=self.ctx.metadata())
            for t in self.threads:
                t.join(30)
            if self.errors:
                raise self.errors[0]
        finally:
            for c in self.clients:
                c.close()


def progress_loop(p: Progress) -> Callable[[Stream], None]:
    def body(s: Stream) -> None:
        for a in s:
            if _type(a) == TYPES + "Progress":
                p.event(ProgressEvent.read(a.msg(2)))
    return body


def auth_loop(host: str, user: str, secret: str) -> Callable[[Stream], None]:
    def body(s: Stream) -> None:
        for a in s:
            req_host = a.msg(2).text(1)  # AuthRequest{host=1}
            resp: dict[int, Value]
            if req_host == host or (host == "docker.io" and req_host == "registry-1.docker.io"):
                resp = {1: CREDENTIALS, 2: secret, 3: user}  # AuthResponse{authType=1, secret=2, username=3}
            else:
                resp = {1: NONE}
            s.send(any_of(TYPES + "AuthResponse", resp))
    return body


def _user(value: str) -> tuple[str, str]:
    user, sep, secret = value.partition(":")
    if not sep:
        from getpass import getpass

        secret = getpass(f"Password for {user}: ")
    return user, secret


def _registry(ref: str, args: Args, ref_host: str, t: Transfer) -> Msg:
    """OCIRegistry{reference=1, resolver=2 RegistryResolver{auth_stream=1, host_dir=3,
    default_scheme=4}} as an Any."""
    auth_stream = ""
    if args.one("--user"):
        user, secret = _user(args.one("--user"))
        auth_stream = t.open("creds", auth_loop(ref_host, user, secret))
    resolver = Msg({1: auth_stream, 3: args.one("--hosts-dir"),
                    4: "http" if "--plain-http" in args.flags else ""})
    return any_of(TYPES + "OCIRegistry", {1: ref, 2: resolver})


def _image_store(name: str, labels: dict[str, str] | None = None, platforms: Sequence[Msg] = (),
                 unpacks: Sequence[Msg] = (), snapshotter: str = "") -> Msg:
    """ImageStore{name=1, labels=2, platforms=3, unpacks=10 UnpackConfiguration{platform=1,
    snapshotter=2}} as an Any."""
    return any_of(TYPES + "ImageStore", {1: name, 2: labels or {}, 3: list(platforms),
                                         10: [Msg({1: pl, 2: snapshotter}) for pl in unpacks]})


def cmd_pull(args: Args, ctx: CliContext) -> int:
    from .reference import parse
    if len(args.pos) != 1:
        raise Usage(USAGE)
    ref = parse(args.pos[0])
    t = Transfer(ctx)
    p = Progress(str(ref), quiet=ctx.json)
    sid = t.open("progress", progress_loop(p))
    src = _registry(str(ref), args, ref.host, t)
    platforms = [] if "--all-platforms" in args.flags else _platforms(args.opts.get("--platform", []))
    unpacks: list[Msg] = []
    if "--no-unpack" not in args.flags:
        unpacks = (platforms or _platforms([]))[:1] if "--all-platforms" in args.flags else platforms
    dst = _image_store(str(ref), pairs(args.opts.get("--label", [])), platforms, unpacks, args.one("--snapshotter"))
    t.run(src, dst, sid)
    p.draw(final=True)
    if ctx.json:
        ctx.emit_json({"name": str(ref)})
    return EXIT["ok"]


def cmd_push(args: Args, ctx: CliContext) -> int:
    from .reference import parse
    if len(args.pos) not in (1, 2):
        raise Usage(USAGE)
    ref = parse(args.pos[0])
    local = str(parse(args.pos[1])) if len(args.pos) == 2 else str(ref)
    t = Transfer(ctx)
    p = Progress(str(ref), quiet=ctx.json)
    sid = t.open("progress", progress_loop(p))
    src = _image_store(local, platforms=_platforms(args.opts["--platform"]) if args.opts.get("--platform") else ())
    dst = _registry(str(ref), args, ref.host, t)
    t.run(src, dst, sid)
    p.draw(final=True)
    return EXIT["ok"]


def _list(ctx: CliContext, filters: Sequence[str]) -> list[Image]:
    # ListImagesRequest{filters=1} -> ListImagesResponse{images=1}
    resp = ctx.connect().unary(IMAGES, "List", Msg({1: list(filters)}), Fields, metadata=ctx.metadata())
    return [Image.read(i) for i in resp.msgs(1)]


def _read_doc(ctx: CliContext, digest: str, limit: int = 4 << 20) -> bytes | None:
    buf = bytearray()
    try:
        # ReadContentRequest{digest=1} -> stream of ReadContentResponse{data=2}
        for r in ctx.connect().server_stream(CONTENT, "Read", Msg({1: digest}), Fields, metadata=ctx.metadata()):
            buf += r.blob(2)
            if len(buf) > limit:
                return None
    except errdefs.Error:
        return None
    return bytes(buf)


def _image_size(ctx: CliContext, media_type: str, digest: str, size: int) -> int | None:
    """Size of the image's content for this host's platform (as ctr images ls): the
    manifest, its config and layers; None when some of it is not in the store."""
    from . import oci
    for _ in range(4):
        data = _read_doc(ctx, digest)
        if data is None:
            return None
        try:
            doc = oci.parse_document(data, media_type)
        except errdefs.Error:
            return None
        if isinstance(doc, oci.Manifest):
            return size + doc.config.size + sum(d.size for d in doc.layers)
        picked = oci.select_manifests(doc, [oci.host_platform()])
        if not picked:
            return None
        media_type, digest, size = picked[0].media_type, picked[0].digest, picked[0].size
    return None


def cmd_images(args: Args, ctx: CliContext) -> int:
    pos = args.pos[1:] if args.pos[:1] in (["ls"], ["list"]) else args.pos
    imgs = _list(ctx, pos)
    if "-q" in args.flags:
        for i in imgs:
            print(i.name)
    elif ctx.json:
        ctx.emit_json([{"name": i.name, "target": {"mediaType": i.target.media_type, "digest": i.target.digest,
                                                    "size": i.target.size}, "labels": i.labels} for i in imgs])
    else:
        rows = []
        for i in imgs:
            n = _image_size(ctx, i.target.media_type, i.target.digest, i.target.size)
            rows.append((i.name, i.target.media_type, i.target.digest, human_size(n) if n is not None else "-",
                         ",".join(f"{k}={v}" for k, v in sorted(i.labels.items())) or "-"))
        ctx.table(["REF", "TYPE", "DIGEST", "SIZE", "LABELS"], rows)
    return EXIT["ok"]


def cmd_rmi(args: Args, ctx: CliContext) -> int:
    if not args.pos:
        raise Usage(USAGE)
    code = EXIT["ok"]
    sync = "--sync" in args.flags
    for name in args.pos:
        try:
            # DeleteImageRequest{name=1, sync=2}
            ctx.connect().unary_raw(IMAGES, "Delete", Msg({1: name, 2: sync}).SerializeToString(),
                                    metadata=ctx.metadata())
            print(name)
        except errdefs.NotFound:
            try:
                from .reference import parse
                full = str(parse(name))
                ctx.connect().unary_raw(IMAGES, "Delete", Msg({1: full, 2: sync}).SerializeToString(),
                                        metadata=ctx.metadata())
                print(full)
            except errdefs.Error as exc:
                code = ctx.fail(exc)
    return code


def cmd_tag(args: Args, ctx: CliContext) -> int:
    if len(args.pos) < 2:
        raise Usage(USAGE)
    src = _resolve_name(ctx, args.pos[0])
    for target in args.pos[1:]:
        Transfer(ctx).run(_image_store(src), _image_store(target))
        print(target)
    return EXIT["ok"]


def _resolve_name(ctx: CliContext, name: str) -> str:
    """An image name as stored: as given, else normalised (`busybox` -> docker.io/library/busybox:latest)."""
    if _list(ctx, [f'name=={_quote(name)}']):
        return name
    from .reference import parse
    try:
        return str(parse(name))
    except errdefs.InvalidArgument:
        return name


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_import(args: Args, ctx: CliContext) -> int:
    if len(args.pos) != 1:
        raise Usage(USAGE)
    f = sys.stdin.buffer if args.pos[0] == "-" else open(args.pos[0], "rb")  # noqa: SIM115

    def send(s: Stream) -> None:
        window = 0
        for a in s:
            if _type(a) != TYPES + "WindowUpdate":
                continue
            window += a.msg(2).int64(1)  # WindowUpdate{update=1}
            while window > 0:
                chunk = f.read(min(window, 32 << 10))
                if not chunk:
                    s.close_send()
                    return
                s.send(any_of(TYPES + "Data", {1: chunk}))  # Data{data=1}
                window -= len(chunk)

    try:
        t = Transfer(ctx)
        p = Progress("import", quiet=ctx.json)
        sid = t.open("progress", progress_loop(p))
        data_sid = t.open("import", send)
        unpacks = [] if "--no-unpack" in args.flags else _platforms(args.opts.get("--platform", []))[:1]
        dst = _image_store(args.one("--base-name"), unpacks=unpacks, snapshotter=args.one("--snapshotter"))
        # ImageImportStream{stream=1, media_type=2}
        src = any_of(TYPES + "ImageImportStream", {1: data_sid, 2: "application/x-tar"})
        t.run(src, dst, sid)
        p.draw(final=True)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    return EXIT["ok"]


def cmd_export(args: Args, ctx: CliContext) -> int:
    if len(args.pos) < 2:
        raise Usage(USAGE)
    names = [_resolve_name(ctx, n) for n in args.pos[1:]]
    out = sys.stdout.buffer if args.pos[0] == "-" else open(args.pos[0] + ".partial", "wb")  # noqa: SIM115

    def recv(s: Stream) -> None:
        s.send(any_of(TYPES + "WindowUpdate", {1: 64 << 10}))  # WindowUpdate{update=1}
        for a in s:
            if _type(a) != TYPES + "Data":
                continue
            data = a.msg(2).blob(1)  # Data{data=1}
            out.write(data)
            s.send(any_of(TYPES + "WindowUpdate", {1: len(data)}))

    ok = False
    try:
        t = Transfer(ctx)
        sid = t.open("export", recv)
        # ImageExportStream{stream=1, platforms=3, all_platforms=4}
        platforms = _platforms(args.opts["--platform"]) if args.opts.get("--platform") else []
        exp = any_of(TYPES + "ImageExportStream", {1: sid, 3: platforms, 4: "--all-platforms" in args.flags})
        t.run(_image_store(",".join(names)), exp)
        ok = True
    finally:
        if out is not sys.stdout.buffer:
            out.close()
            if ok:
                os.replace(args.pos[0] + ".partial", args.pos[0])
            else:
                os.unlink(args.pos[0] + ".partial")
    return EXIT["ok"]


COMMON = {"--hosts-dir", "--user", "--snapshotter", "--base-name"}
COMMANDS: dict[str, Callable[[Args, CliContext], int]] = {
    "pull": cmd_pull, "push": cmd_push, "images": cmd_images, "rmi": cmd_rmi, "tag": cmd_tag,
    "import": cmd_import, "export": cmd_export,
}


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    if cmd not in COMMANDS or argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return EXIT["ok"] if argv[:1] in (["-h"], ["--help"]) else EXIT["usage"]
    try:
        args = Args(argv, {"--all-platforms", "--plain-http", "--no-unpack", "-q", "--sync"}, COMMON,
                    {"--platform", "--label"})
        return COMMANDS[cmd](args, ctx)
    except (errdefs.Error, Usage, OSError) as exc:
        return ctx.fail(exc)
