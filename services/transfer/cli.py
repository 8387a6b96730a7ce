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
only (never a mirror's or a token realm's). Light imports: no asyncio.
"""

from __future__ import annotations

import base64
import getpass
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from moorage import errdefs
from moorage.cli.context import EXIT, CliContext, Usage, human_size, pairs

if TYPE_CHECKING:
    from ttrpc.blocking import Client

USAGE = __doc__.split("\n\n")[1] if __doc__ else ""
IMAGES = "containerd.services.images.v1.Images"
TRANSFER = "containerd.services.transfer.v1.Transfer"
STREAMING = "containerd.services.streaming.v1.Streaming"


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


def _platforms(values: Sequence[str]) -> list[Any]:
    from moorage.api.containerd.types import platform_pb2
    from .oci import host_platform, parse_platform
    ps = [parse_platform(v) for v in values] or [host_platform()]
    return [platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant) for p in ps]


def _stream_id(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}-{base64.urlsafe_b64encode(os.urandom(6)).decode()}"


def _pack(msg: Any) -> Any:
    from google.protobuf import any_pb2
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def _type(a: Any) -> str:
    return str(a.type_url).rsplit("/", 1)[-1]


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
        self.lock = threading.Lock()
        self.total = 0

    def event(self, ev: Any) -> None:
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

    def open(self, prefix: str, body: Callable[[Any], None]) -> str:
        from google.protobuf import any_pb2

        from moorage.api.containerd.services.streaming.v1 import streaming_pb2
        sid = _stream_id(prefix)
        s = self._client().stream(STREAMING, "Stream", any_pb2.Any, None, self.ctx.metadata())
        s.send(_pack(streaming_pb2.StreamInit(id=sid)))
        if s.recv() is None:
            raise errdefs.Unavailable("stream closed before its ack")

        def run() -> None:
            try:
                body(s)
            except BaseException as exc:  # noqa: BLE001 - reported by run()
                self.errors.append(exc)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)
        return sid

    def run(self, src: Any, dst: Any, progress_stream: str = "") -> None:
        from moorage.api.containerd.services.transfer.v1 import transfer_pb2 as tpb
        req = tpb.TransferRequest(source=_pack(src), destination=_pack(dst),
                                  options=tpb.TransferOptions(progress_stream=progress_stream))
        try:
            self._client().unary_raw(TRANSFER, "Transfer", req.SerializeToString(), metadata=self.ctx.metadata())
            for t in self.threads:
                t.join(30)
            if self.errors:
                raise self.errors[0]
        finally:
            for c in self.clients:
                c.close()


def progress_loop(p: Progress) -> Callable[[Any], None]:
    def body(s: Any) -> None:
        from moorage.api.containerd.types.transfer import progress_pb2
        for a in s:
            if _type(a) == "containerd.types.transfer.Progress":
                m = progress_pb2.Progress()
                m.ParseFromString(a.value)
                p.event(m)
    return body


def auth_loop(host: str, user: str, secret: str) -> Callable[[Any], None]:
    def body(s: Any) -> None:
        from moorage.api.containerd.types.transfer import registry_pb2
        for a in s:
            req = registry_pb2.AuthRequest()
            req.ParseFromString(a.value)
            if req.host == host or (host == "docker.io" and req.host == "registry-1.docker.io"):
                resp = registry_pb2.AuthResponse(authType=registry_pb2.CREDENTIALS, username=user, secret=secret)
            else:
                resp = registry_pb2.AuthResponse(authType=registry_pb2.NONE)
            s.send(_pack(resp))
    return body


def _user(value: str) -> tuple[str, str]:
    user, sep, secret = value.partition(":")
    if not sep:
        secret = getpass.getpass(f"Password for {user}: ")
    return user, secret


def _resolver(args: Args, ref_host: str, t: Transfer) -> Any:
    from moorage.api.containerd.types.transfer import registry_pb2
    r = registry_pb2.RegistryResolver(host_dir=args.one("--hosts-dir"),
                                      default_scheme="http" if "--plain-http" in args.flags else "")
    if args.one("--user"):
        user, secret = _user(args.one("--user"))
        r.auth_stream = t.open("creds", auth_loop(ref_host, user, secret))
    return r


def cmd_pull(args: Args, ctx: CliContext) -> int:
    from moorage.api.containerd.types.transfer import imagestore_pb2, registry_pb2
    from .reference import parse
    if len(args.pos) != 1:
        raise Usage(USAGE)
    ref = parse(args.pos[0])
    t = Transfer(ctx)
    p = Progress(str(ref), quiet=ctx.json)
    sid = t.open("progress", progress_loop(p))
    src = registry_pb2.OCIRegistry(reference=str(ref), resolver=_resolver(args, ref.host, t))
    dst = imagestore_pb2.ImageStore(name=str(ref), labels=pairs(args.opts.get("--label", [])))
    platforms = [] if "--all-platforms" in args.flags else _platforms(args.opts.get("--platform", []))
    dst.platforms.extend(platforms)
    if "--no-unpack" not in args.flags:
        for pl in (platforms or _platforms([]))[:1] if "--all-platforms" in args.flags else platforms:
            dst.unpacks.append(imagestore_pb2.UnpackConfiguration(platform=pl, snapshotter=args.one("--snapshotter")))
    t.run(src, dst, sid)
    p.draw(final=True)
    if ctx.json:
        ctx.emit_json({"name": str(ref)})
    return EXIT["ok"]


def cmd_push(args: Args, ctx: CliContext) -> int:
    from moorage.api.containerd.types.transfer import imagestore_pb2, registry_pb2
    from .reference import parse
    if len(args.pos) not in (1, 2):
        raise Usage(USAGE)
    ref = parse(args.pos[0])
    local = str(parse(args.pos[1])) if len(args.pos) == 2 else str(ref)
    t = Transfer(ctx)
    p = Progress(str(ref), quiet=ctx.json)
    sid = t.open("progress", progress_loop(p))
    src = imagestore_pb2.ImageStore(name=local)
    if args.opts.get("--platform"):
        src.platforms.extend(_platforms(args.opts["--platform"]))
    dst = registry_pb2.OCIRegistry(reference=str(ref), resolver=_resolver(args, ref.host, t))
    t.run(src, dst, sid)
    p.draw(final=True)
    return EXIT["ok"]


def _list(ctx: CliContext, filters: Sequence[str]) -> list[Any]:
    from moorage.api.containerd.services.images.v1 import images_pb2 as ipb
    resp = ctx.connect().unary(IMAGES, "List", ipb.ListImagesRequest(filters=list(filters)),
                               ipb.ListImagesResponse, metadata=ctx.metadata())
    return list(resp.images)


def _read_doc(ctx: CliContext, digest: str, limit: int = 4 << 20) -> bytes | None:
    from moorage.api.containerd.services.content.v1 import content_pb2 as cpb
    buf = bytearray()
    try:
        for r in ctx.connect().server_stream("containerd.services.content.v1.Content", "Read",
                                             cpb.ReadContentRequest(digest=digest), cpb.ReadContentResponse,
                                             metadata=ctx.metadata()):
            buf += r.data
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
                                                    "size": i.target.size}, "labels": dict(i.labels)} for i in imgs])
    else:
        rows = []
        for i in imgs:
            n = _image_size(ctx, i.target.media_type, i.target.digest, i.target.size)
            rows.append((i.name, i.target.media_type, i.target.digest, human_size(n) if n is not None else "-",
                         ",".join(f"{k}={v}" for k, v in sorted(i.labels.items())) or "-"))
        ctx.table(["REF", "TYPE", "DIGEST", "SIZE", "LABELS"], rows)
    return EXIT["ok"]


def cmd_rmi(args: Args, ctx: CliContext) -> int:
    from moorage.api.containerd.services.images.v1 import images_pb2 as ipb
    if not args.pos:
        raise Usage(USAGE)
    code = EXIT["ok"]
    sync = "--sync" in args.flags
    for name in args.pos:
        try:
            ctx.connect().unary_raw(IMAGES, "Delete", ipb.DeleteImageRequest(name=name, sync=sync).SerializeToString(),
                                    metadata=ctx.metadata())
            print(name)
        except errdefs.NotFound:
            try:
                from .reference import parse
                full = str(parse(name))
                ctx.connect().unary_raw(IMAGES, "Delete", ipb.DeleteImageRequest(name=full, sync=sync).SerializeToString(),
                                        metadata=ctx.metadata())
                print(full)
            except errdefs.Error as exc:
                code = ctx.fail(exc)
    return code


def cmd_tag(args: Args, ctx: CliContext) -> int:
    from moorage.api.containerd.types.transfer import imagestore_pb2
    if len(args.pos) < 2:
        raise Usage(USAGE)
    src = _resolve_name(ctx, args.pos[0])
    for target in args.pos[1:]:
        Transfer(ctx).run(imagestore_pb2.ImageStore(name=src), imagestore_pb2.ImageStore(name=target))
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
    from moorage.api.containerd.types.transfer import imagestore_pb2, importexport_pb2
    from moorage.api.containerd.types.transfer import streaming_pb2 as data_pb2
    if len(args.pos) != 1:
        raise Usage(USAGE)
    f = sys.stdin.buffer if args.pos[0] == "-" else open(args.pos[0], "rb")  # noqa: SIM115

    def send(s: Any) -> None:
        window = 0
        for a in s:
            if _type(a) != "containerd.types.transfer.WindowUpdate":
                continue
            u = data_pb2.WindowUpdate()
            u.ParseFromString(a.value)
            window += u.update
            while window > 0:
                chunk = f.read(min(window, 32 << 10))
                if not chunk:
                    s.close_send()
                    return
                s.send(_pack(data_pb2.Data(data=chunk)))
                window -= len(chunk)

    try:
        t = Transfer(ctx)
        p = Progress("import", quiet=ctx.json)
        sid = t.open("progress", progress_loop(p))
        data_sid = t.open("import", send)
        dst = imagestore_pb2.ImageStore(name=args.one("--base-name"))
        if "--no-unpack" not in args.flags:
            for pl in _platforms(args.opts.get("--platform", []))[:1]:
                dst.unpacks.append(imagestore_pb2.UnpackConfiguration(platform=pl, snapshotter=args.one("--snapshotter")))
        t.run(importexport_pb2.ImageImportStream(stream=data_sid, media_type="application/x-tar"), dst, sid)
        p.draw(final=True)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    return EXIT["ok"]


def cmd_export(args: Args, ctx: CliContext) -> int:
    from moorage.api.containerd.types.transfer import imagestore_pb2, importexport_pb2
    from moorage.api.containerd.types.transfer import streaming_pb2 as data_pb2
    if len(args.pos) < 2:
        raise Usage(USAGE)
    names = [_resolve_name(ctx, n) for n in args.pos[1:]]
    out = sys.stdout.buffer if args.pos[0] == "-" else open(args.pos[0] + ".partial", "wb")  # noqa: SIM115

    def recv(s: Any) -> None:
        s.send(_pack(data_pb2.WindowUpdate(update=64 << 10)))
        for a in s:
            if _type(a) != "containerd.types.transfer.Data":
                continue
            d = data_pb2.Data()
            d.ParseFromString(a.value)
            out.write(d.data)
            s.send(_pack(data_pb2.WindowUpdate(update=len(d.data))))

    ok = False
    try:
        t = Transfer(ctx)
        sid = t.open("export", recv)
        exp = importexport_pb2.ImageExportStream(stream=sid, all_platforms="--all-platforms" in args.flags)
        if args.opts.get("--platform"):
            exp.platforms.extend(_platforms(args.opts["--platform"]))
        t.run(imagestore_pb2.ImageStore(name=",".join(names)), exp)
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
