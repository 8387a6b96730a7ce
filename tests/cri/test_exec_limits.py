"""reliability.md §1f through the CRI: ExecSync output is capped (CVE-2022-31030 /
CRI-O CVE-2022-1708) and failed TTY execs leave nothing behind (CVE-2022-23471 class).

ExecSync keeps at most ``[cri] max_exec_output`` bytes of each stream (16 MiB by default,
services/cri/cio.py:BufferSink) and, as containerd's cappedWriter, drops the rest silently
while still draining the fifo, so the command runs to its end and the call returns; the
reply then carries what one ttrpc message can (execsync.fit_reply).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from moorage.api.k8s.cri.v1 import api_pb2 as api
from moorage.services.cri.execsync import REPLY_BUDGET

from .conftest import CriSuite, wait_until

pytestmark = pytest.mark.root

BUSYBOX = "/bin/busybox"
CAP = 16 << 20
TTY_ROUNDS = 100
ATTACH_ROUNDS = 5


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def _fds_threads(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        threads = int(next(line for line in f if line.startswith("Threads:")).split()[1])
    return len(os.listdir(f"/proc/{pid}/fd")), threads


@pytest.fixture
def big_channel(cri: CriSuite) -> Iterator[grpc.Channel]:
    """A channel that accepts a reply of two full streams (grpc's default is 4 MiB)."""
    ch = grpc.insecure_channel(f"unix:{cri.suite.state / 'moorage.sock'}",
                               options=[("grpc.max_receive_message_length", 64 << 20)])
    try:
        yield ch
    finally:
        ch.close()


def _exec_sync(ch: grpc.Channel, container_id: str, *cmd: str, timeout: int = 60) -> api.ExecSyncResponse:
    fn = ch.unary_unary("/runtime.v1.RuntimeService/ExecSync", request_serializer=api.ExecSyncRequest.SerializeToString,
                        response_deserializer=api.ExecSyncResponse.FromString)
    return fn(api.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout), timeout=timeout + 30)


def _idle(cri: CriSuite, name: str) -> str:
    pod_id, cfg = cri.run_pod(name)
    c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    return c


FLOOD = (f"{BUSYBOX} yes | {BUSYBOX} head -c {128 << 20}; {BUSYBOX} yes e | {BUSYBOX} head -c {64 << 20} >&2; "
         f"echo done > /finished; exit 7")
"""128 MiB on stdout, 64 MiB on stderr, then a marker file and exit 7."""


@pytest.mark.slow
def test_exec_sync_flood_is_capped_memory_bounded_and_the_call_returns(pods: CriSuite, big_channel: grpc.Channel) -> None:
    """The CRI process kept at most the cap of each stream, and the reply carries the
    first bytes of each, half the reply budget each (one ttrpc message crosses the proxy).
    The command ran to its end."""
    cri = pods
    c = _idle(cri, "chatty")
    pid = cri.suite.procs["cri"].pid
    before = _rss_kib(pid)
    r = _exec_sync(big_channel, c, BUSYBOX, "sh", "-c", FLOOD)
    half = REPLY_BUDGET // 2
    assert r.exit_code == 7
    assert r.stdout == b"y\n" * (half // 2) and r.stderr == b"e\n" * ((REPLY_BUDGET - half) // 2)
    after = _rss_kib(pid)
    assert cri.exec_sync(c, BUSYBOX, "cat", "/finished").stdout == b"done\n"  # drained, not cut short
    # two capped streams plus one encoded reply; at most half of the 192 MiB printed
    assert after - before < 96 * 1024, (before, after)
    assert list((cri.suite.state / "cri" / "exec").iterdir()) == []


def test_exec_sync_output_over_the_reply_comes_back_cut(pods: CriSuite, big_channel: grpc.Channel) -> None:
    """Output past what one reply carries comes back cut, not refused (it was refused with
    RESOURCE_EXHAUSTED at the 4 MiB ttrpc hop): stdout gets what stderr leaves."""
    cri = pods
    c = _idle(cri, "capped")
    r = _exec_sync(big_channel, c, BUSYBOX, "sh", "-c",
                   f"{BUSYBOX} yes | {BUSYBOX} head -c {CAP + (8 << 20)}; echo err >&2")
    assert r.exit_code == 0 and r.stderr == b"err\n"
    assert r.stdout == (b"y\n" * CAP)[: REPLY_BUDGET - 4]


def test_exec_sync_output_that_fits_the_reply_is_whole(pods: CriSuite, big_channel: grpc.Channel) -> None:
    cri = pods
    c = _idle(cri, "quiet")
    n = 3 << 20
    r = _exec_sync(big_channel, c, BUSYBOX, "sh", "-c", f"{BUSYBOX} yes | {BUSYBOX} head -c {n}; echo err >&2")
    assert r.exit_code == 0 and r.stdout == b"y\n" * (n // 2) and r.stderr == b"err\n"


@pytest.mark.interop  # the Go SPDY client
@pytest.mark.slow
def test_failed_tty_execs_and_attaches_through_the_cri_leave_nothing(pods: CriSuite, tmp_path: Path) -> None:
    """Failed TTY execs (a missing binary) and attaches whose container stopped before the
    client came, through the streaming server as kubectl would: the CRI process's, the
    runtime's and the shim's fd and thread counts come back to where they were."""
    from .test_streaming_cri import run_client

    cri = pods
    c = _idle(cri, "tty-fails")
    (shim,) = cri.shims([cri.pods[-1]])  # the pod's shim hosts its containers
    procs = {"cri": cri.suite.procs["cri"].pid, "runtime": cri.suite.procs["runtime"].pid, "shim": shim}

    def failed_exec() -> None:
        url = cri.rt("Exec", api.ExecRequest(container_id=c, cmd=["/no/such/binary"], tty=True, stdin=True,
                                             stdout=True)).url
        doc, out, _ = run_client(tmp_path, "exec", url, "-stdin", "-tty", "-resize", "80x24")
        assert "no/such/binary" in doc["error"] and out == b"", doc

    def failed_attach() -> None:
        pod_id, cfg = cri.run_pod("gone")
        g = cri.create(pod_id, cfg, cri.container_config("gone", cri.images.busybox, BUSYBOX, "sleep", "1000",
                                                         tty=True, stdin=True))
        cri.rt("StartContainer", api.StartContainerRequest(container_id=g))
        url = cri.rt("Attach", api.AttachRequest(container_id=g, tty=True, stdin=True, stdout=True)).url
        cri.rt("StopContainer", api.StopContainerRequest(container_id=g, timeout=0))
        doc, out, _ = run_client(tmp_path, "attach", url, "-stdin", "-tty", "-resize", "80x24")
        cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        cri.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert "has no running task" in doc["error"] and out == b"", doc

    for _ in range(3):  # first-use allocations (executor threads, Go's threads) are not leaks
        failed_exec()
    failed_attach()
    base = {k: _fds_threads(pid) for k, pid in procs.items()}
    for _ in range(TTY_ROUNDS):
        failed_exec()
    for _ in range(ATTACH_ROUNDS):
        failed_attach()

    def settled() -> bool:
        now = {k: _fds_threads(pid) for k, pid in procs.items()}
        # the Go shim keeps OS threads it once made (idle), never one per round
        return all(now[k] == base[k] for k in ("cri", "runtime")) and now["shim"][0] == base["shim"][0] \
            and now["shim"][1] <= base["shim"][1] + 3

    try:
        wait_until(settled, 10, "fd and thread counts back at the baseline")
    except AssertionError:
        raise AssertionError(f"baseline {base}, now {({k: _fds_threads(p) for k, p in procs.items()})}") from None
    assert [p for top in (cri.suite.state, cri.suite.root) for p in top.rglob("exec-*")] == []  # no fifo dirs
