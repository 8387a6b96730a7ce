"""reliability.md §1f (CVE-2022-23471, CVE-2025-64329 class): failed TTY execs and
attaches to processes that are gone leak nothing, in the runtime process or the shim.

Each round: Exec of a missing binary with ``terminal=True`` and a stdout fifo we read (as
``moor exec -t`` passes it), Start (refused by runc), ResizePty on the failed process (the
upstream leak: a console resizer kept for a process that never ran), DeleteProcess; then a
ResizePty and a Get on an exec id that never existed (an attach to nothing). Afterwards
the fd and thread counts of both processes come back to where they were (the Go shim may
keep a few idle OS threads more, never one per round), and the
container holds no exec process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2

from moorage import errdefs
from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.services.runtime import spec as sp
from suite import Suite

from .helpers import TASKS, Rt, shim_pid, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROUNDS = 200
WARMUP = 5
GO_IDLE_THREADS = 3


def _counts(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        threads = int(next(line for line in f if line.startswith("Threads:")).split()[1])
    return len(os.listdir(f"/proc/{pid}/fd")), threads


def _fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def _failed_tty_exec(api: Rt, fifo_dir: Path, exec_id: str) -> str:
    """One failed TTY exec (and a resize of it), all of it deleted; the Start error text."""
    proc = sp.process_spec(sp.default_spec(api.ns, "c1"), ["/no/such/binary"])
    proc["terminal"] = True
    out = fifo_dir / exec_id
    os.mkfifo(out, 0o600)
    rfd = os.open(out, os.O_RDONLY | os.O_NONBLOCK)  # the shim's open for writing never blocks
    try:
        api.call(TASKS, "Exec", tpb.ExecProcessRequest(
            container_id="c1", exec_id=exec_id, terminal=True, stdout=str(out),
            spec=any_pb2.Any(type_url=sp.PROCESS_TYPE_URL, value=json.dumps(proc).encode())), empty_pb2.Empty)
        try:
            with pytest.raises(errdefs.Error) as exc:
                api.start("c1", exec_id)
            try:
                api.call(TASKS, "ResizePty", tpb.ResizePtyRequest(container_id="c1", exec_id=exec_id,
                                                                  width=80, height=24), empty_pb2.Empty)
            except errdefs.Error:
                pass  # refused or accepted: either way nothing may stay behind
        finally:
            api.call(TASKS, "DeleteProcess", tpb.DeleteProcessRequest(container_id="c1", exec_id=exec_id),
                     tpb.DeleteResponse)
    finally:
        os.close(rfd)
        out.unlink()
    return str(exc.value)


def _attach_to_nothing(api: Rt, exec_id: str) -> None:
    with pytest.raises(errdefs.NotFound):
        api.call(TASKS, "ResizePty", tpb.ResizePtyRequest(container_id="c1", exec_id=exec_id, width=80, height=24),
                 empty_pb2.Empty)
    with pytest.raises(errdefs.NotFound):
        api.get("c1", exec_id)


def test_failed_tty_execs_and_attaches_leave_fds_and_threads_at_baseline(
        rt: Suite, rootfs: Path, tmp_path: Path) -> None:
    api = Rt(rt.address)
    fifos = tmp_path / "fifos"
    fifos.mkdir()
    try:
        api.run("c1", rootfs, ["sleep", "1000"])
        runtime, shim = rt.procs["runtime"].pid, shim_pid("default", "c1")
        for i in range(WARMUP):  # first-use allocations (pools, Go's threads) are not leaks
            _failed_tty_exec(api, fifos, f"warm{i}")
            _attach_to_nothing(api, f"none{i}")
        base = {"runtime": _counts(runtime), "shim": _counts(shim)}

        for i in range(ROUNDS):
            err = _failed_tty_exec(api, fifos, f"e{i}")
            _attach_to_nothing(api, f"gone{i}")
        assert "no/such/binary" in err

        def settled() -> bool:
            # the Go shim never gives back an OS thread it once made (idle Ms stay), so its
            # threads may be a few more than at the baseline, never one per round
            (shim_fds, shim_threads), base_shim = _counts(shim), base["shim"]
            return _counts(runtime) == base["runtime"] and shim_fds == base_shim[0] \
                and shim_threads <= base_shim[1] + GO_IDLE_THREADS
        try:
            wait_until(settled, timeout=10, what="counts back at baseline")
        except TimeoutError:
            raise AssertionError(f"baseline {base}, now runtime {_counts(runtime)} shim {_counts(shim)}") from None
        pids = api.call(TASKS, "ListPids", tpb.ListPidsRequest(container_id="c1"), tpb.ListPidsResponse).processes
        assert len(pids) == 1  # only the container's init: no exec process survived
        for pid in (runtime, shim):
            assert not [t for t in _fd_targets(pid) if t.startswith(str(fifos))]
            assert not [t for t in _fd_targets(pid) if t.startswith("/dev/pts/")]
    finally:
        api.cleanup()
        api.close()
