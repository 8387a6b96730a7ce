"""`moor run` and friends end to end: a real suite (proxy, content, snapshots, transfer,
runtime), the busybox image imported through the transfer service with an overlayfs unpack."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from suite import Suite

from .helpers import read_pty, shims_of, wait_until
from .ociimage import build_archive, import_image

pytestmark = [pytest.mark.root, pytest.mark.slow]


class Env:
    def __init__(self, suite: Suite, ns: str) -> None:
        self.suite = suite
        self.ns = ns

    def moor(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "moorage.cli.main", "--address", self.suite.address,
               "--namespace", self.ns, *args]
        return subprocess.run(cmd, env=self.suite.env(), capture_output=True, text=True,
                              timeout=timeout, input=input)

    def nothing_left(self) -> None:
        assert self.moor("containers", "ls", "--json").stdout.strip() in ("", "[]") or \
            self.moor("--json", "containers", "ls").stdout.strip() == "[]"
        bundles = self.suite.state / "runtime" / "bundles" / self.ns
        assert not bundles.exists() or os.listdir(bundles) == []
        wait_until(lambda: shims_of(self.ns) == [], what="no shim left")
        snaps = self.moor("snapshots", "ls").stdout.splitlines()[1:]
        assert all("Committed" in s for s in snaps), snaps


def in_terminal(env: Env, rows: int, cols: int, *argv: str, keys: bytes = b"") -> tuple[int, str]:
    """`moor ARGV` on a pty of ``rows`` x ``cols``; ``keys`` typed at the shell's first prompt
    (``#``). Its exit code and everything it wrote."""
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.environ.update(env.suite.env())
        os.execv(sys.executable, [sys.executable, "-m", "moorage.cli.main", "--address",
                                  env.suite.address, "--namespace", env.ns, *argv])
    out = read_pty(fd, until=b"#") if keys else b""
    if keys and b"#" in out:
        os.write(fd, keys)
    out += read_pty(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix="moorage-cli-", dir="/tmp"))
    s = Suite(tmp)
    ns = "cli" + secrets.token_hex(3)
    try:
        for name in ("proxy", "content", "snapshots", "transfer", "runtime"):
            s.start(name)
        import_image(s.address, build_archive(tmp / "busybox.tar"), namespace=ns)
        yield Env(s, ns)
    finally:
        e = Env(s, ns)
        for line in e.moor("ps", "-a", "-q").stdout.split():
            e.moor("rm", "-f", line)
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_run_rm_echo_hi_leaves_nothing(env: Env) -> None:
    r = env.moor("run", "--rm", "busybox", "echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hi\n", "")
    env.nothing_left()
    assert env.moor("leases", "ls", "-q").stdout == ""  # the run's lease went with it


def test_exit_code_and_streams(env: Env) -> None:
    r = env.moor("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    env.nothing_left()


def test_flags(env: Env) -> None:
    r = env.moor("run", "--rm", "--env", "A=b", "--user", "app", "--workdir", "/tmp",
                 "--hostname", "hh", "--memory", "64m", "--cpus", "0.5", "busybox", "sh", "-c",
                 "echo $A; id -u; id -G; pwd; hostname")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["b", "1000", "1000", "2000", "/tmp", "hh"]


def test_bind_mount(env: Env, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("from-host\n")
    r = env.moor("run", "--rm", "--mount", f"type=bind,src={tmp_path},dst=/host,ro", "busybox",
                 "cat", "/host/f")
    assert (r.returncode, r.stdout) == (0, "from-host\n")


def test_interactive_stdin(env: Env) -> None:
    r = env.moor("run", "--rm", "-i", "busybox", "cat", input="abc\ndef\n")
    assert (r.returncode, r.stdout) == (0, "abc\ndef\n")
    env.nothing_left()


def test_terminal_with_size(env: Env) -> None:
    code, text = in_terminal(env, 33, 101, "run", "--rm", "-t", "busybox", "sh", "-c", "tty; stty size")
    assert code == 0, text
    assert "/dev/pts/0" in text and "33 101" in text
    env.nothing_left()


def test_detached_lifecycle(env: Env) -> None:
    r = env.moor("run", "-d", "--name", "web", "busybox", "sh", "-c",
                 "echo started; exec sleep 1000")
    assert (r.returncode, r.stdout) == (0, "web\n"), r.stderr
    ps = env.moor("ps").stdout
    assert "web" in ps and "running" in ps
    assert env.moor("exec", "web", "echo", "in-exec").stdout == "in-exec\n"
    assert env.moor("exec", "web", "sh", "-c", "exit 5").returncode == 5
    assert "sleep 1000" in env.moor("top", "web").stdout
    stats = json.loads(env.moor("--json", "stats", "web").stdout)
    assert [s["id"] for s in stats] == ["web"]
    assert stats[0]["memory"] > 0 and stats[0]["pids"] == 1 and stats[0]["cpu_ns"] > 0, stats
    assert stats[0]["metrics_type"].startswith("io.containerd.cgroups.v")
    assert "web" in env.moor("stats").stdout
    r = env.moor("stats", "web", "nope")
    assert r.returncode != 0 and "nope" in r.stderr
    assert env.moor("pause", "web").returncode == 0
    assert "paused" in env.moor("ps").stdout
    assert env.moor("unpause", "web").returncode == 0
    assert env.moor("update", "--memory", "128m", "web").returncode == 0
    assert json.loads(env.moor("--json", "stats", "web").stdout)[0]["memory_limit"] == 128 << 20
    wait_until(lambda: env.moor("logs", "web").stdout == "started\n", what="log")
    r = env.moor("rm", "web")
    assert r.returncode == 6 and "running" in r.stderr  # refuses without -f
    assert env.moor("kill", "web").returncode == 0
    assert env.moor("wait", "web").stdout == "137\n"
    assert "exited (137)" in env.moor("ps", "-a").stdout
    assert env.moor("logs", "--follow", "web").stdout == "started\n"
    assert env.moor("rm", "web").returncode == 0
    env.nothing_left()


def test_stop(env: Env) -> None:
    assert env.moor("run", "-d", "--name", "st", "busybox", "sleep", "1000").returncode == 0
    r = env.moor("stop", "-t", "0.5", "st")  # sleep as pid 1 ignores SIGTERM: SIGKILL after 0.5 s
    assert r.returncode == 0, r.stderr
    assert "exited (137)" in env.moor("ps", "-a").stdout
    assert env.moor("rm", "st").returncode == 0


def test_missing_image(env: Env) -> None:
    r = env.moor("run", "--rm", "nosuchimage:1", "true")
    assert r.returncode == 3 and "not found" in r.stderr and "pull" in r.stderr
    env.nothing_left()


def test_bad_command(env: Env) -> None:
    r = env.moor("run", "--rm", "busybox", "/no/such/cmd")
    assert r.returncode != 0 and "/no/such/cmd" in r.stderr
    env.nothing_left()


def test_unknown_runtime(env: Env) -> None:
    r = env.moor("run", "--rm", "--runtime", "io.containerd.nope.v1", "busybox", "true")
    assert r.returncode == 3 and "containerd-shim-nope-v1" in r.stderr
    env.nothing_left()


def test_crun_runtime_binary(env: Env, tmp_path: Path) -> None:
    wrapper = tmp_path / "crun-legacy"
    wrapper.write_text("#!/bin/sh\nexec unshare -m sh -c "
                       "'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"' crun \"$@\"\n")
    wrapper.chmod(0o755)
    r = env.moor("run", "--rm", "--runtime", str(wrapper), "busybox", "echo", "crun-ok")
    assert (r.returncode, r.stdout) == (0, "crun-ok\n"), r.stderr
    env.nothing_left()


def test_signals_are_forwarded(env: Env) -> None:
    cmd = [sys.executable, "-m", "moorage.cli.main", "--address", env.suite.address,
           "--namespace", env.ns, "run", "--rm", "busybox", "sh", "-c",
           'trap "echo got-term; exit 9" TERM; echo ready; while true; do sleep 0.05; done']
    p = subprocess.Popen(cmd, env=env.suite.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 9, err
    assert out == b"got-term\n"
    env.nothing_left()


def test_task_rootfs_from_the_container_snapshot(env: Env) -> None:
    """Tasks.Create without rootfs: the runtime asks the snapshots service for the mounts of
    the container's snapshot key (what containerd does for clients like ctr)."""
    from google.protobuf import empty_pb2

    from moorage import errdefs
    from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
    from moorage.services.runtime import image
    from ttrpc.blocking import Client

    from .helpers import Rt

    md = {"containerd-namespace-ttrpc": env.ns}
    with Client(env.suite.address, error_factory=errdefs.from_status) as c:
        resolved = image.resolve(c, md, "busybox", 30)
        c.unary("containerd.services.snapshots.v1.Snapshots", "Prepare",
                spb.PrepareSnapshotRequest(snapshotter="overlayfs", key="snapkey1",
                                           parent=resolved.chain_id),
                spb.PrepareSnapshotResponse, metadata=md)
    api = Rt(env.suite.address, env.ns)
    try:
        ctr = api.container("s1", ["sh", "-c", "echo from-snapshot"], snapshotter="overlayfs",
                            snapshot_key="snapkey1")
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        api.call("containerd.services.tasks.v1.Tasks", "Create",
                 tpb.CreateTaskRequest(container_id="s1"), tpb.CreateTaskResponse)
        api.start("s1")
        assert api.wait("s1") == 0
        api.delete("s1")
        assert "stdout F from-snapshot" in api.log(ctr)
        api.remove("s1")
        api.call("containerd.services.snapshots.v1.Snapshots", "Remove",
                 spb.RemoveSnapshotRequest(snapshotter="overlayfs", key="snapkey1"),
                 empty_pb2.Empty)
    finally:
        api.close()
    env.nothing_left()


def test_interactive_terminal(env: Env) -> None:
    """`moor run -it`: raw terminal, keystrokes in, screen out, the shell's exit code back."""
    code, text = in_terminal(env, 40, 120, "run", "--rm", "-it", "busybox", "sh",
                             keys=b"stty size; echo hel''lo; exit 3\r")
    assert code == 3, text
    assert "40 120" in text and "hello" in text
    env.nothing_left()


def test_exec_in_a_terminal_with_its_size(env: Env) -> None:
    """`moor exec -it` from a terminal: the process's pty takes our size (ResizePty), keystrokes
    go in, its exit code comes back."""
    assert env.moor("run", "-d", "--name", "tty-exec", "busybox", "sleep", "1000").returncode == 0
    try:
        code, text = in_terminal(env, 27, 91, "exec", "-it", "tty-exec", "sh", keys=b"tty; stty size; exit 4\r")
        assert code == 4, text
        assert "/dev/pts/" in text and "27 91" in text
    finally:
        env.moor("rm", "-f", "tty-exec")
    env.nothing_left()


@pytest.mark.parametrize("argv", [
    ["exec", "np", "echo", "hi"], ["exec", "-i", "np", "cat"], ["exec", "-t", "np", "true"],
    ["exec", "-d", "np", "true"], ["update", "--memory", "64m", "--cpus", "0.5", "np"], ["top", "np"],
    ["attach", "--no-stdin", "np-gone"], ["pause", "np"], ["unpause", "np"], ["kill", "-s", "CONT", "np"],
    ["run", "--rm", "-t", "busybox", "true"], ["run", "--rm", "-i", "busybox", "cat"],
    ["run", "--rm", "--sandbox", "nope", "busybox", "true"], ["exec", "nope", "true"], ["stats"],
    ["--json", "stats", "np"]])
def test_commands_import_no_protobuf_nor_asyncio(env: Env, argv: list[str]) -> None:
    """Each command's whole run (requests built, replies and errors read), not only its
    module's import, loads no google.*, *_pb2, asyncio or uvloop (nor tempfile and shutil:
    the stdio fifos' directory is made and removed with os)."""
    if env.moor("ps", "-q").stdout.split().count("np") == 0:
        assert env.moor("run", "-d", "--name", "np", "busybox", "sleep", "1000").returncode == 0
    code = (
        "import sys; sys.argv = ['moor', '--address', %r, '--namespace', %r, *%r]\n"
        "import moorage.cli.main as m\n"
        "try:\n m.main()\n"
        "except SystemExit:\n pass\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('asyncio', 'uvloop', 'google', 'tempfile',"
        " 'shutil') or n.endswith('_pb2')), file=sys.stderr)"
    ) % (env.suite.address, env.ns, argv)
    r = subprocess.run([sys.executable, "-c", code], env=env.suite.env(), input=b"x\n", capture_output=True,
                       timeout=60)
    assert r.stderr.decode().strip().splitlines()[-1] == "[]", r.stderr
