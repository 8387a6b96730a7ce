"""Task stdio the runtime owns: fifos in the bundle copied into one log file per container.

Fifos `<bundle>/io/stdout` and `io/stderr` are created and opened for reading (non-blocking)
before the shim is asked to create the task, as containerd's cio does: the shim opens them
write-only and would block (or fail) without a reader. Until the shim has opened its end, a
placeholder writer keeps the reader from seeing EOF; `attached()` drops it. EOF then means
the shim closed its end (the process's output is complete).

Log lines use the CRI format `<RFC3339Nano> <stdout|stderr> <F|P> <text>` so `moor logs`
can split and interleave the two streams; P marks a partial line (no newline yet, or a line
cut at MAX_LINE). After a runtime restart, `reopen` attaches to the same fifos again; what
the shim wrote meanwhile waits in the pipe.

Attach (`moor attach`, CRI Attach): every chunk read from `io/stdout|stderr` is also
written, raw, to `io/attach-stdout|attach-stderr` when a reader holds that fifo open (the
attaching client reopens it; one attacher per stream at a time). The tee never blocks: a
reader that falls behind loses output, not the container. When the output ends the tee
closes, so the attacher sees EOF on both streams (also on one that never wrote). A task with a runtime-owned
stdin (`io/stdin`) has it held open by the runtime (an O_RDWR descriptor) so the process's
stdin stays open across attaches; attachers write into it; CloseIO ends it. A terminal
task has no stderr fifo (the terminal's output comes on stdout).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from .attach import ATTACH_PREFIX
from .logs import MAX_LINE, timestamp

__all__ = ["ATTACH_PREFIX", "FifoReader", "LineSink", "LoggedIO", "LogFile", "MAX_LINE", "timestamp"]


class LineSink(Protocol):
    """Where a :class:`FifoReader` puts lines (``complete``: False for a P line)."""

    def write(self, stream: str, text: bytes, complete: bool) -> None: ...


class FifoReader:
    """Copies one fifo into a :class:`LineSink` as CRI log lines (the runtime's log file,
    the cri process's log and ExecSync buffers).

    Lines longer than ``MAX_LINE`` are cut into P lines; what is left at EOF is written as a
    complete line (containerd does the same). ``on_chunk`` sees each raw read first (tees).
    ``open(placeholder=True)`` also holds a writer so the reader sees no EOF before the shim
    opened its end; ``drop_placeholder`` lets it go. ``done`` resolves once closed.
    """

    def __init__(self, name: str, path: Path, sink: LineSink) -> None:
        self.name = name
        self.path = path
        self.sink = sink
        self.fd = -1
        self.placeholder = -1
        self.pending = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_chunk(self, chunk: bytes) -> None:
        """Raw bytes as read, before they are split into lines."""

    def open(self, placeholder: bool) -> None:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if placeholder:
            self.placeholder = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _read(self) -> bytes | None:
        """The next chunk; b"" at EOF (or a read error); None when nothing is there now."""
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _readable(self) -> None:
        chunk = self._read()
        if chunk is None:
            return
        if not chunk:
            self.finish()
            return
        self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        self.on_chunk(chunk)
        self.pending += chunk
        lines = self.pending.split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            while len(line) > MAX_LINE:
                self.sink.write(self.name, line[:MAX_LINE], False)
                line = line[MAX_LINE:]
            self.sink.write(self.name, line, True)
        while len(self.pending) >= MAX_LINE:
            self.sink.write(self.name, self.pending[:MAX_LINE], False)
            self.pending = self.pending[MAX_LINE:]

    def drain(self) -> None:
        """Read what the pipe holds now (the writer is done), then finish."""
        while self.fd >= 0:
            chunk = self._read()
            if not chunk:
                break
            self.feed(chunk)
        self.finish()

    def finish(self) -> None:
        if self.pending:
            self.sink.write(self.name, self.pending, True)
            self.pending = b""
        self.close()

    def drop_placeholder(self) -> None:
        if self.placeholder >= 0:
            os.close(self.placeholder)
            self.placeholder = -1

    def close(self) -> None:
        self.drop_placeholder()
        if self.fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if not self.done.done():
            self.done.set_result(None)


class _Stream(FifoReader):
    """A task's stdout or stderr: into its log file, teed to an attached client."""

    def __init__(self, name: str, path: Path, sink: LineSink) -> None:
        super().__init__(name, path, sink)
        self.tee = -1
        self.tee_path = path.with_name(ATTACH_PREFIX + path.name)

    def on_chunk(self, chunk: bytes) -> None:
        """Copy `chunk` to an attached reader of `attach-<name>`, if there is one."""
        if self.tee < 0:
            try:
                self.tee = os.open(self.tee_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # ENXIO: nobody attached (or the fifo is gone)
                return
        try:
            os.write(self.tee, chunk)
        except BlockingIOError:
            pass  # a slow attacher loses output; the container never waits for it
        except OSError as exc:
            os.close(self.tee)
            self.tee = -1
            if exc.errno == errno.EPIPE:  # the attacher left; a new one may be there already
                self.on_chunk(chunk)

    def close(self) -> None:
        """The output is complete: an attacher sees EOF on its tee. One that never got a
        chunk of this stream has never seen a writer, and a fifo without one never says
        EOF: open the tee now (if someone reads it) only to close it."""
        if self.tee < 0:
            with contextlib.suppress(OSError):  # ENXIO: nobody attached
                self.tee = os.open(self.tee_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if self.tee >= 0:
            os.close(self.tee)
            self.tee = -1
        super().close()


class LogFile:
    """One container's log file, appended to by its stream copiers."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, stream: str, text: bytes, complete: bool) -> None:
        line = b"%s %s %s %s\n" % (timestamp().encode(), stream.encode(),
                                   b"F" if complete else b"P", text)
        os.write(self.fd, line)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LoggedIO:
    """stdout and stderr (not for a terminal) fifos of one task, copied into its log file
    and teed to an attached client; optionally a stdin fifo the runtime holds open."""

    def __init__(self, io_dir: Path, log_path: Path, terminal: bool = False) -> None:
        self.io_dir = io_dir
        self.log = LogFile(log_path)
        names = ("stdout",) if terminal else ("stdout", "stderr")
        self.streams = [_Stream(n, io_dir / n, self.log) for n in names]
        self.stdin_holder = -1

    @property
    def stdout(self) -> str:
        return str(self.io_dir / "stdout")

    @property
    def stderr(self) -> str:
        return str(self.io_dir / "stderr") if len(self.streams) > 1 else ""

    @property
    def stdin(self) -> str:
        return str(self.io_dir / "stdin") if self.stdin_holder >= 0 else ""

    def _hold_stdin(self) -> None:
        self.stdin_holder = os.open(self.io_dir / "stdin", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    @classmethod
    def create(cls, io_dir: Path, log_path: Path, terminal: bool = False,
               stdin: bool = False) -> LoggedIO:
        io_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lio = cls(io_dir, log_path, terminal)
        names = [s.name for s in lio.streams]
        names += [ATTACH_PREFIX + n for n in names] + (["stdin"] if stdin else [])
        for n in names:
            with contextlib.suppress(FileExistsError):
                os.mkfifo(io_dir / n, 0o600)
        try:
            for s in lio.streams:
                s.open(placeholder=True)
            if stdin:
                lio._hold_stdin()
        except BaseException:
            lio.close()
            raise
        return lio

    @classmethod
    def reopen(cls, io_dir: Path, log_path: Path) -> LoggedIO | None:
        """Attach again after a restart (None when the fifos are gone)."""
        if not (io_dir / "stdout").exists():
            return None
        lio = cls(io_dir, log_path, terminal=not (io_dir / "stderr").exists())
        try:
            for s in lio.streams:
                s.open(placeholder=False)
            if (io_dir / "stdin").exists():
                lio._hold_stdin()
        except OSError:
            lio.close()
            return None
        return lio

    def close_stdin(self) -> None:
        """Stop holding stdin open (CloseIO: the process sees EOF once writers are gone).
        The fifo's name goes too: no later attacher (or restart) opens a closed stdin."""
        if self.stdin_holder >= 0:
            os.close(self.stdin_holder)
            self.stdin_holder = -1
            with contextlib.suppress(OSError):
                os.unlink(self.io_dir / "stdin")

    def attached(self) -> None:
        """The shim has opened its ends: EOF from now on means the output is complete."""
        for s in self.streams:
            s.drop_placeholder()

    def drain(self) -> None:
        """The shim finished writing (its Delete returned): log what is buffered, close."""
        for s in self.streams:
            s.drain()
        self.close()

    async def wait(self, timeout: float) -> None:
        """Until both streams reached EOF (or `timeout`), then close."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.done for s in self.streams)), timeout)
        self.close()

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self.close_stdin()
        self.log.close()


def fifo_set(directory: Path, id: str, stdin: bool, stdout: bool = True,
             stderr: bool = True) -> Iterator[Path]:
    """Create `<dir>/<id>-stdin|stdout|stderr` fifos (containerd's cio naming)."""
    for name, want in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if want:
            p = directory / f"{id}-{name}"
            os.mkfifo(p, 0o600)
            yield p
