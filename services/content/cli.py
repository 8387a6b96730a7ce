"""``moor content ...``: the content store through the proxy, with the blocking client.

    moor content ls [-q] [FILTER...]              blobs of the namespace
    moor content get DIGEST                        the blob's bytes on stdout
    moor content ingest [--expected-size N] [--expected-digest D] REF
                                                   stdin into the store (resumes REF)
    moor content rm DIGEST...
    moor content label DIGEST [KEY=VALUE | KEY=]... (an empty value removes the label)
    moor content active [-q] [FILTER...]           ingests in progress
    moor content abort REF...

Light imports only (no asyncio, no protobuf): messages through moorage.cli.wire (the field
numbers of content.proto, named where each is built or read) and the blocking client. Ingest
pipelines its 1 MiB WRITE requests (a bounded window of replies outstanding) and shows
progress on stderr when that is a terminal.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from moorage import errdefs
from moorage.cli.context import EXIT, CliContext, Usage, human_size, labels_text, pairs
from moorage.cli.wire import Fields, Msg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

    from ttrpc.blocking import BlockingStream, Client

SERVICE = "containerd.services.content.v1.Content"
CHUNK = 1 << 20
WINDOW = 16
STAT, COMMIT = 0, 2  # content.proto WriteAction
USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


def _age(seconds: int) -> str:
    delta = max(0, int(time.time()) - seconds)
    for unit, span in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if delta >= span:
            return f"{delta // span} {unit}"
    return f"{delta} seconds"


def _iso(ts: Fields) -> str:
    """A google.protobuf.Timestamp {seconds=1, nanos=2} as ISO 8601."""
    return datetime.fromtimestamp(ts.int64(1) + ts.int64(2) / 1e9, UTC).isoformat()


class _Info:
    """A content.v1 Info {digest=1, size=2, created_at=3, updated_at=4, labels=5}."""

    __slots__ = ("digest", "size", "created_at", "updated_at", "labels")

    def __init__(self, f: Fields) -> None:
        self.digest, self.size, self.labels = f.text(1), f.int64(2), f.pairs(5)
        self.created_at, self.updated_at = f.msg(3), f.msg(4)


class _Status:
    """A content.v1 Status {started_at=1, updated_at=2, ref=3, offset=4, total=5, expected=6}."""

    __slots__ = ("started_at", "updated_at", "ref", "offset", "total", "expected")

    def __init__(self, f: Fields) -> None:
        self.started_at, self.updated_at = f.msg(1), f.msg(2)
        self.ref, self.offset, self.total, self.expected = f.text(3), f.int64(4), f.int64(5), f.text(6)


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT["ok"] if argv else EXIT["usage"]
    action, args = argv[0], argv[1:]
    handler = _ACTIONS.get(action)
    if handler is None:
        raise Usage(f"unknown content command {action!r}\n{USAGE}")
    return handler(args, ctx)


def _ls(args: list[str], ctx: CliContext) -> int:
    quiet = any(a in ("-q", "--quiet") for a in args)
    filters = [a for a in args if not a.startswith("-")]
    client = ctx.connect()
    infos = [
        _Info(info)
        for resp in client.server_stream(  # ListContentRequest{filters=1} -> ListContentResponse{info=1}
            SERVICE, "List", Msg({1: filters}), Fields, timeout=ctx.timeout, metadata=ctx.metadata(),
        )
        for info in resp.msgs(1)
    ]
    if ctx.json:
        ctx.emit_json([
            {"digest": i.digest, "size": i.size, "created_at": _iso(i.created_at),
             "updated_at": _iso(i.updated_at), "labels": i.labels}
            for i in infos
        ])
    elif quiet:
        for i in infos:
            print(i.digest)
    else:
        ctx.table(
            ["digest", "size", "age", "labels"],
            [(i.digest, human_size(i.size), _age(i.created_at.int64(1)), labels_text(i.labels))
             for i in infos],
        )
    return EXIT["ok"]


def _get(args: list[str], ctx: CliContext) -> int:
    if len(args) != 1:
        raise Usage("content get DIGEST")
    out = sys.stdout.buffer
    client = ctx.connect()
    # ReadContentRequest{digest=1} -> ReadContentResponse{data=2}
    for resp in client.server_stream(SERVICE, "Read", Msg({1: args[0]}), Fields, metadata=ctx.metadata()):
        out.write(resp.blob(2))
    out.flush()
    return EXIT["ok"]


def _rm(args: list[str], ctx: CliContext) -> int:
    if not args:
        raise Usage("content rm DIGEST...")
    client = ctx.connect()
    code = EXIT["ok"]
    for d in args:
        try:
            # DeleteContentRequest{digest=1}
            client.unary_raw(SERVICE, "Delete", Msg({1: d}).SerializeToString(), metadata=ctx.metadata())
        except errdefs.Error as exc:
            code = ctx.fail(exc)
            continue
        if not ctx.json:
            print(d)
    return code


def _abort(args: list[str], ctx: CliContext) -> int:
    if not args:
        raise Usage("content abort REF...")
    client = ctx.connect()
    code = EXIT["ok"]
    for ref in args:
        try:
            # AbortRequest{ref=1}
            client.unary_raw(SERVICE, "Abort", Msg({1: ref}).SerializeToString(), metadata=ctx.metadata())
        except errdefs.Error as exc:
            code = ctx.fail(exc)
    return code


def _label(args: list[str], ctx: CliContext) -> int:
    if not args:
        raise Usage("content label DIGEST [KEY=VALUE | KEY=]...")
    labels = pairs(args[1:])
    client = ctx.connect()
    if labels:
        # UpdateRequest{info=1 Info{digest=1, labels=5}, update_mask=2 FieldMask{paths=1}}
        req = Msg({1: Msg({1: args[0], 5: labels}), 2: Msg({1: [f"labels.{k}" for k in labels]})})
        resp = client.unary(SERVICE, "Update", req, Fields, timeout=ctx.timeout, metadata=ctx.metadata())
    else:  # InfoRequest{digest=1}
        resp = client.unary(SERVICE, "Info", Msg({1: args[0]}), Fields, timeout=ctx.timeout, metadata=ctx.metadata())
    info = _Info(resp.msg(1))  # UpdateResponse / InfoResponse {info=1}
    if ctx.json:
        ctx.emit_json({"digest": info.digest, "labels": info.labels})
    else:
        print(f"{info.digest}\t{labels_text(info.labels)}")
    return EXIT["ok"]


def _active(args: list[str], ctx: CliContext) -> int:
    quiet = any(a in ("-q", "--quiet") for a in args)
    filters = [a for a in args if not a.startswith("-")]
    client = ctx.connect()
    # ListStatusesRequest{filters=1} -> ListStatusesResponse{statuses=1}
    resp = client.unary(SERVICE, "ListStatuses", Msg({1: filters}), Fields, timeout=ctx.timeout,
                        metadata=ctx.metadata())
    statuses = sorted((_Status(f) for f in resp.msgs(1)), key=lambda s: s.ref)
    if ctx.json:
        ctx.emit_json([
            {"ref": s.ref, "offset": s.offset, "total": s.total, "expected": s.expected,
             "started_at": _iso(s.started_at), "updated_at": _iso(s.updated_at)}
            for s in statuses
        ])
    elif quiet:
        for s in statuses:
            print(s.ref)
    else:
        ctx.table(
            ["ref", "size", "total", "age"],
            [(s.ref, human_size(s.offset), human_size(s.total) if s.total else "-",
              _age(s.started_at.int64(1))) for s in statuses],
        )
    return EXIT["ok"]


def _read_full(src: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` from ``src`` unless it ends first; the byte count."""
    got = 0
    while got < len(buf):
        n = src.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


class _Chunks:
    """Reads ``src`` into one reused buffer, leaving room before the data for the WRITE
    request's other fields, so a request is built without copying its data."""

    def __init__(self, src: BinaryIO, room: int) -> None:
        self.src = src
        self.room = room
        self.buf = bytearray(room + CHUNK)
        self.mv = memoryview(self.buf)

    def skip(self, n: int) -> None:
        while n > 0:
            got = _read_full(self.src, self.mv[self.room : self.room + min(n, CHUNK)])
            if got == 0:
                raise errdefs.FailedPrecondition(f"input ended within the {n} bytes to resume past")
            n -= got

    def requests(self, ref: bytes, offset: int) -> Iterator[tuple[memoryview, int]]:
        """(serialized WRITE request, data length) per chunk, the request a view of the buffer."""
        from .writes import write_prefix

        while n := _read_full(self.src, self.mv[self.room :]):
            head = write_prefix(ref, offset, n)
            start = self.room - len(head)
            self.mv[start : self.room] = head
            yield self.mv[start : self.room + n], n
            offset += n


class _Progress:
    def __init__(self, ref: str, total: int, on: bool) -> None:
        self.ref, self.total, self.on = ref, total, on
        self.start = self.last = time.monotonic()

    def show(self, offset: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.on or (not final and now - self.last < 0.2):
            return
        self.last = now
        rate = offset / max(now - self.start, 1e-6)
        total = f"/{human_size(self.total)}" if self.total else ""
        sys.stderr.write(f"\r{self.ref}: {human_size(offset)}{total} {human_size(int(rate))}/s   ")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def ingest(client: Client, md: dict[str, str], ref: str, src: BinaryIO, total: int = 0,
           expected: str = "", progress: bool = False) -> tuple[str, int]:
    """Write ``src`` into the store under ``ref`` (resuming it); (digest, size)."""
    from collections import deque

    from ttrpc.frame import FLAG_REMOTE_OPEN

    from .memory import keep_freed_memory

    keep_freed_memory()
    stream: BlockingStream[bytes, bytes] = client.open_stream(
        SERVICE, "Write", None, FLAG_REMOTE_OPEN, metadata=md)
    try:
        def reply() -> tuple[int, str]:
            """(offset, digest) of a WriteContentResponse {offset=4, digest=6}."""
            data = stream.recv()
            if data is None:
                raise errdefs.Unavailable(f"ref {ref}: write stream ended early")
            f = Fields(data)
            return f.int64(4), f.text(6)

        # WriteContentRequest{action=1 (STAT 0, WRITE 1, COMMIT 2), ref=2, total=3, expected=4, offset=5}
        stream.send(Msg({1: STAT, 2: ref, 3: total, 4: expected}).SerializeToString())
        offset = reply()[0]
        bar = _Progress(ref, total, progress)
        refb = ref.encode()
        pending: deque[int] = deque()

        def settle(keep: int) -> None:
            while len(pending) > keep:
                want = pending.popleft()
                got = reply()[0]
                if got != want:
                    raise errdefs.OutOfRange(f"ref {ref}: server at offset {got}, expected {want}")

        if not (expected and total and offset == total):
            chunks = _Chunks(src, room=len(refb) + 32)
            chunks.skip(offset)
            for request, n in chunks.requests(refb, offset):
                settle(WINDOW - 1)
                stream.send(request)  # type: ignore[arg-type]  # a view: framed with one copy
                offset += n
                pending.append(offset)
                bar.show(offset)
            settle(0)
        stream.send(Msg({1: COMMIT, 2: ref, 3: total, 4: expected, 5: offset}).SerializeToString())
        size, digest = reply()
        bar.show(size, final=True)
        stream.close_send()
        while stream.recv() is not None:
            pass
        return digest, size
    finally:
        stream.close()


def _ingest(args: list[str], ctx: CliContext) -> int:
    total, expected, rest = 0, "", []
    it = iter(args)
    for a in it:
        if a in ("--expected-size", "--expected-digest"):
            value = next(it, None)
            if value is None:
                raise Usage(f"{a} needs a value")
            a = f"{a}={value}"
        if a.startswith("--expected-size="):
            try:
                total = int(a.partition("=")[2])
            except ValueError:
                raise Usage("--expected-size takes a byte count") from None
            if not 0 <= total < 1 << 63:  # WriteContentRequest's total: an int64
                raise errdefs.InvalidArgument(f"--expected-size: {total} is out of range (0 to {(1 << 63) - 1} bytes)")
        elif a.startswith("--expected-digest="):
            expected = a.partition("=")[2]
        elif a.startswith("-"):
            raise Usage(f"unknown option {a}")
        else:
            rest.append(a)
    if len(rest) != 1:
        raise Usage("content ingest [--expected-size N] [--expected-digest D] REF")
    digest, size = ingest(ctx.connect(), ctx.metadata(), rest[0], sys.stdin.buffer, total,
                          expected, progress=sys.stderr.isatty())
    if ctx.json:
        ctx.emit_json({"ref": rest[0], "digest": digest, "size": size})
    else:
        print(digest)
    return EXIT["ok"]


_ACTIONS = {
    "ls": _ls, "list": _ls,
    "get": _get,
    "ingest": _ingest,
    "rm": _rm, "delete": _rm,
    "label": _label,
    "active": _active,
    "abort": _abort,
}
