"""Container stdio owned by the CRI process: fifos copied into the CRI log file kubelet names.

As containerd's CRI does, this process (not the runtime service) owns a CRI container's
stdio. ``<io_dir>/stdout`` and ``stderr`` (and ``stdin`` when the container asked for it)
are created and opened for reading before the task is created; the shim opens them by path.
Every line read goes to the log file as ``<RFC3339Nano> <stdout|stderr> <F|P> <text>``
(P: a line cut at 16 KiB; what is left at EOF is written as a full line, as containerd
does) and to
any attached reader (:meth:`ContainerIO.subscribe`, for the streaming server's Attach).

Lifecycle: :meth:`ContainerIO.create` (fifos, readers, placeholder writers so nothing sees
EOF before the shim opened its end) -> task created -> :meth:`attached` (placeholders
dropped) -> output copied -> EOF on both streams (the shim closed them: the process is
done) -> :meth:`wait` returns -> :meth:`close`. After a restart :meth:`reopen` attaches to
the same fifos. :meth:`reopen_log` reopens the log path (kubelet renamed the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from moorage.services.runtime import cio
from moorage.services.runtime.logs import timestamp

STREAMS = ("stdout", "stderr")


class LogSink:
    """The CRI log file (append), reopened on demand; "" path = no file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.subscribers: set[asyncio.Queue[tuple[str, bytes] | None]] = set()
        self.open()

    def open(self) -> None:
        if not self.path:
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)

    def write(self, stream: str, text: bytes, complete: bool) -> None:
        if self.fd >= 0:
            line = b"%s %s %s %s\n" % (timestamp().encode(), stream.encode(), b"F" if complete else b"P", text)
            with contextlib.suppress(OSError):
                os.write(self.fd, line)

    def raw(self, stream: str, data: bytes) -> None:
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait((stream, data))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        self.subscribers.clear()


class BufferSink:
    """Keeps what a stream wrote, up to ``limit`` bytes (ExecSync's output)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data: dict[str, bytearray] = {}

    def write(self, stream: str, text: bytes, complete: bool) -> None:
        return None

    def raw(self, stream: str, data: bytes) -> None:
        buf = self.data.setdefault(stream, bytearray())
        buf += data[: max(self.limit - len(buf), 0)]


class FifoReader(cio.FifoReader):
    """The runtime's fifo reader, feeding also the sink's raw subscribers (Attach)."""

    sink: LogSink | BufferSink

    def __init__(self, name: str, path: Path, sink: LogSink | BufferSink) -> None:
        super().__init__(name, path, sink)

    def on_chunk(self, chunk: bytes) -> None:
        self.sink.raw(self.name, chunk)


class ContainerIO:
    """One container's stdio fifos under ``io_dir`` and its CRI log."""

    def __init__(self, io_dir: Path, log_path: str, stdin: bool, tty: bool) -> None:
        self.io_dir = io_dir
        self.tty = tty
        self.has_stdin = stdin
        self.stdin_once = False
        """The CRI's stdin_once: the first attach that closes stdin closes it for good (the
        streaming server's Attach reads this)."""
        self.sink = LogSink(log_path)
        self.readers = [FifoReader(n, io_dir / n, self.sink) for n in (STREAMS[:1] if tty else STREAMS)]
        self.stdin_fd = -1

    def paths(self) -> tuple[str, str, str]:
        """(stdin, stdout, stderr) for the task's Create ("" = none)."""
        stdin = str(self.io_dir / "stdin") if self.has_stdin else ""
        stderr = "" if self.tty else str(self.io_dir / "stderr")
        return stdin, str(self.io_dir / "stdout"), stderr

    @classmethod
    def create(cls, io_dir: Path, log_path: str, stdin: bool = False, tty: bool = False) -> ContainerIO:
        io_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        names = list(STREAMS[:1] if tty else STREAMS) + (["stdin"] if stdin else [])
        for n in names:
            with contextlib.suppress(FileExistsError):
                os.mkfifo(io_dir / n, 0o600)
        cio = cls(io_dir, log_path, stdin, tty)
        try:
            for r in cio.readers:
                r.open(placeholder=True)
            cio._open_stdin()
        except BaseException:
            cio.close()
            raise
        return cio

    @classmethod
    def reopen(cls, io_dir: Path, log_path: str, stdin: bool = False, tty: bool = False) -> ContainerIO | None:
        """Attach again after a restart (None when the fifos are gone)."""
        if not all((io_dir / r).exists() for r in (STREAMS[:1] if tty else STREAMS)):
            return None
        cio = cls(io_dir, log_path, stdin, tty)
        try:
            for r in cio.readers:
                r.open(placeholder=False)
            cio._open_stdin()
        except OSError:
            cio.close()
            return None
        return cio

    def _open_stdin(self) -> None:
        if self.has_stdin:
            # read-write: never blocks, and keeps the container's stdin open until close
            self.stdin_fd = os.open(self.io_dir / "stdin", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def attached(self) -> None:
        """The shim has opened its ends: EOF from now on means the output is complete."""
        for r in self.readers:
            r.drop_placeholder()

    def write_stdin(self, data: bytes) -> int:
        """Write to the container's stdin (0 when it has none)."""
        if self.stdin_fd < 0:
            return 0
        try:
            return os.write(self.stdin_fd, data)
        except BlockingIOError:
            return 0

    def close_stdin(self) -> None:
        if self.stdin_fd >= 0:
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    @contextlib.asynccontextmanager
    async def subscribe(self, maxsize: int = 1024) -> AsyncIterator[asyncio.Queue[tuple[str, bytes] | None]]:
        """A queue of ``(stream, bytes)`` as they are read, None at the end (for Attach)."""
        q: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize)
        if all(r.done.done() for r in self.readers):
            q.put_nowait(None)
        self.sink.subscribers.add(q)
        try:
            yield q
        finally:
            self.sink.subscribers.discard(q)

    def reopen_log(self) -> None:
        self.sink.open()

    async def wait(self, timeout: float) -> None:
        """Until every stream reached EOF (or ``timeout``), then close."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(r.done) for r in self.readers)), timeout)
        self.close()

    def close(self) -> None:
        for r in self.readers:
            r.close()
        self.close_stdin()
        self.sink.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.io_dir, ignore_errors=True)
