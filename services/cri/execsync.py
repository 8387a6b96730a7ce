"""ExecSync: run a command in a running container and collect its output and exit code.

Fifos for stdout and stderr under ``<state>/exec/<exec id>/`` are opened for reading (with
placeholder writers until the shim has opened its ends at Start), the process is created
with Tasks.Exec (the container's process spec with other args), started, and waited for.
After ``timeout`` seconds (0 = none) it is killed (SIGKILL), reaped, and DeadlineExceeded
raised. The exec process is always deleted and the fifos removed.

Each stream is kept up to ``limit`` bytes (``[cri] max_exec_output``) or ``REPLY_BUDGET``,
whichever is less, while it is read, and the reply then fits one ttrpc message, which is how
it leaves this process: stdout and stderr share ``REPLY_BUDGET`` (:func:`fit_reply`), each
keeping its first bytes, as a cap does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moorage.errdefs import DeadlineExceeded, Error, NotFound
from moorage.services.runtime.contract import StdIO
from ttrpc.frame import MAX_MESSAGE_SIZE

from .cio import BufferSink, FifoReader
from .contract import ExecResult
from .peers import Peers

OUTPUT_DRAIN = 5.0
KILL_WAIT = 30.0
REPLY_BUDGET = MAX_MESSAGE_SIZE - 4096
"""Output bytes one ExecSync reply carries: ttrpc's message limit less room for the reply's
other fields and the ttrpc Response around it."""


def fit_reply(stdout: bytes, stderr: bytes, budget: int = REPLY_BUDGET) -> tuple[bytes, bytes]:
    """``stdout`` and ``stderr`` cut to ``budget`` bytes in all, each keeping its first
    bytes: a stream under half the budget is kept whole and the other gets the rest;
    otherwise each gets half."""
    if len(stdout) + len(stderr) <= budget:
        return stdout, stderr
    half = budget // 2
    if len(stderr) <= half:
        return stdout[: budget - len(stderr)], stderr
    if len(stdout) <= half:
        return stdout, stderr[: budget - len(stdout)]
    return stdout[:half], stderr[: budget - half]


async def exec_sync(peers: Peers, root: Path, container_id: str, process: Mapping[str, Any], cmd: tuple[str, ...],
                    timeout: float, limit: int) -> ExecResult:
    exec_id = secrets.token_hex(8)
    d = root / exec_id
    d.mkdir(parents=True, mode=0o700)
    sink = BufferSink(min(limit, REPLY_BUDGET))  # no stream can bring back more
    readers: list[FifoReader] = []
    try:
        for name in ("stdout", "stderr"):
            os.mkfifo(d / name, 0o600)
            r = FifoReader(name, d / name, sink)
            r.open(placeholder=True)
            readers.append(r)
        proc = dict(process)
        proc.update(args=list(cmd), terminal=False)
        await peers.exec(container_id, exec_id, proc, StdIO("", str(d / "stdout"), str(d / "stderr")))
        tasks = await peers.tasks()
        try:
            await tasks.start(container_id, exec_id)
            for r in readers:
                r.drop_placeholder()
            waiting = asyncio.ensure_future(tasks.wait(container_id, exec_id))
            try:
                done, _ = await asyncio.wait({waiting}, timeout=timeout if timeout > 0 else None)
                if not done:
                    with contextlib.suppress(Error):
                        await tasks.kill(container_id, int(signal.SIGKILL), exec_id)
                    with contextlib.suppress(Error, asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(waiting), KILL_WAIT)
                    raise DeadlineExceeded(f"timeout {timeout:g}s exceeded running {list(cmd)!r}")
                info = waiting.result()
            finally:
                if not waiting.done():
                    waiting.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(asyncio.shield(r.done) for r in readers)), OUTPUT_DRAIN)
        finally:
            with contextlib.suppress(NotFound, Error):
                await peers.delete_process(container_id, exec_id)
        out, err = fit_reply(bytes(sink.data.get("stdout", b"")), bytes(sink.data.get("stderr", b"")))
        return ExecResult(out, err, info.exit_status)
    finally:
        for r in readers:
            r.close()
        shutil.rmtree(d, ignore_errors=True)
