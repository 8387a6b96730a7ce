"""Attach to a task's init process stdio, as containerd's `cio.NewAttach` does: the client
reopens the fifos named in the task's state (Tasks.Get: stdin, stdout, stderr, terminal).

Where the runtime owns a task's output (a logged container, see cio), the fifo to read is
the tee beside it, `io/attach-stdout|attach-stderr`: reading `io/stdout` itself would take
output away from the log. Elsewhere (a client's own fifos) the output fifo itself is read,
as `ctr task attach` does. stdin is written straight into the task's stdin fifo; when the
runtime owns it (label `moorage/stdin`), the runtime holds it open, so an attacher leaving
does not end the process's input; with mode `once` the attacher closes it (Tasks.CloseIO)
when it leaves, as CRI's `stdin_once`.

Protocol for an attacher (blocking or asyncio alike):
  1. open the output fifos `O_RDONLY | O_NONBLOCK` *before* writing any input, then poll:
     readable = output; EOF after hang-up = the writer is done (the task's output ended);
     no writer yet is neither (the runtime opens its tee at its next chunk);
  2. open stdin `O_WRONLY` (there is always a reader: the shim);
  3. terminal: Tasks.ResizePty(exec_id="") on every size change;
  4. end when the outputs reach EOF, or EXIT_GRACE after a Tasks.Wait sent beside the copy
     returns (its exit status is the attacher's), or when the client leaves (then CloseIO
     if the stdin mode is `once`). Wait is needed: a task that exits between the attacher's
     status check and its opening of the fifos closed its tee while nobody read it, and a
     fifo that never had a writer never says EOF.

No asyncio here: `moor attach` imports this.
"""

from __future__ import annotations

import os

from ttrpc.lighttyping import NamedTuple  # dataclasses: ~20 ms of `moor attach`

ATTACH_PREFIX = "attach-"
STDIN_LABEL = "moorage/stdin"
EXIT_GRACE = 1.0
"""Seconds an attacher goes on copying output after Tasks.Wait returned (the last chunks
may still be on their way; EOF on every output ends it sooner)."""


class AttachPaths(NamedTuple):
    """The fifos an attacher opens ("" = that stream is absent)."""

    stdin: str
    stdout: str
    stderr: str
    terminal: bool


def output_path(path: str) -> str:
    """The fifo to read for a task's output fifo `path`: its runtime tee when it has one."""
    if not path:
        return ""
    tee = os.path.join(os.path.dirname(path), ATTACH_PREFIX + os.path.basename(path))
    return tee if os.path.exists(tee) else path


def attach_paths(stdin: str, stdout: str, stderr: str, terminal: bool) -> AttachPaths:
    """From a task's stdio (Tasks.Get's process fields) to what an attacher opens (a
    stdin whose fifo is gone was closed: none)."""
    return AttachPaths(stdin if stdin and os.path.exists(stdin) else "", output_path(stdout),
                       "" if terminal else output_path(stderr), terminal)


def open_output(path: str) -> int:
    """Open an output fifo for an attacher (non-blocking: no writer need be there yet)."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def open_input(path: str) -> int:
    """Open a task's stdin fifo for writing (non-blocking open: the shim is its reader)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(fd, True)
    return fd
