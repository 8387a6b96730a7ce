"""`moor attach`: a client reopens a running container's stdio (runtime-owned fifos with a
tee, stdin held open by the runtime), through the proxy (root: runc)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from suite import Suite

from .helpers import Rt, read_pty
from .test_cli import Env, env  # noqa: F401  (the module-scoped suite with a busybox image)

pytestmark = [pytest.mark.root]

LOOP = "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; echo bye; exit 7"


@pytest.fixture
def api(rt: Suite) -> Iterator[Rt]:
    r = Rt(rt.address, "a" + secrets.token_hex(4))
    yield r
    r.cleanup()
    r.close()


class Attached:
    """`moor attach` in a subprocess with pipes; lines read with a deadline."""

    def __init__(self, rt: Suite, ns: str, id: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "moorage.cli.main", "--address", rt.address,
             "--namespace", ns, "attach", id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=rt.env())
        self.buf = {"out": b"", "err": b""}

    def send(self, data: bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_stdin(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.stdin = None

    def expect(self, want: bytes, stream: str = "out", timeout: float = 20) -> None:
        pipe = self.p.stdout if stream == "out" else self.p.stderr
        assert pipe is not None
        deadline = time.monotonic() + timeout
        while want not in self.buf[stream]:
            left = deadline - time.monotonic()
            assert left > 0, f"{want!r} not in {stream}: {self.buf[stream]!r}"
            ready, _, _ = select.select([pipe], [], [], left)
            if ready:
                chunk = os.read(pipe.fileno(), 65536)
                assert chunk or want in self.buf[stream], f"EOF before {want!r}: {self.buf}"
                self.buf[stream] += chunk

    def finish(self, timeout: float = 20) -> int:
        out, err = self.p.communicate(timeout=timeout)
        self.buf["out"] += out
        self.buf["err"] += err
        return self.p.returncode

    def kill(self) -> None:
        self.p.kill()
        self.p.communicate()


def test_attach_stdin_stdout_stderr_and_exit_code(rt: Suite, api: Rt, rootfs: Path) -> None:
    c = _container(api, "c1", ["sh", "-c", LOOP])
    api.create("c1", rootfs)
    api.start("c1")
    st = api.get("c1")
    assert st.stdin.endswith("/io/stdin") and not st.terminal
    first = Attached(rt, api.ns, "c1")
    first.send(b"one\n")
    first.expect(b"got one\n")
    first.expect(b"err one\n", "err")
    first.kill()  # a client leaving ends neither the process nor its stdin
    second = Attached(rt, api.ns, "c1")
    second.send(b"two\n")
    second.expect(b"got two\n")
    second.close_stdin()  # stdin mode "open": EOF here is not the container's EOF
    api.kill("c1", 9)  # (sh as PID 1 ignores SIGTERM)
    assert second.finish() == 137
    assert api.wait("c1") == 137
    log = api.log(c)
    assert " stdout F got one\n" in log and " stdout F got two\n" in log
    assert " stderr F err two\n" in log


def test_stdin_once_closes_when_the_attacher_leaves(rt: Suite, api: Rt, rootfs: Path) -> None:
    _container(api, "c1", ["sh", "-c", LOOP], stdin="once")
    api.create("c1", rootfs)
    api.start("c1")
    a = Attached(rt, api.ns, "c1")
    a.send(b"x\n")
    a.expect(b"got x\n")
    a.close_stdin()
    assert a.finish() == 7
    assert a.buf["out"].endswith(b"bye\n")


def test_attach_terminal(rt: Suite, api: Rt, rootfs: Path) -> None:
    c = _container(api, "t1", ["sh"], terminal=True)
    api.create("t1", rootfs, terminal=True)
    api.start("t1")
    a = Attached(rt, api.ns, "t1")
    a.send(b"echo $((6*7))\n")
    a.expect(b"42\r\n")
    a.send(b"exit 3\n")
    assert a.finish() == 3
    assert a.buf["err"] == b""
    assert "stdout F 42" in api.log(c)


def test_attach_terminal_from_a_terminal_is_resized(rt: Suite, api: Rt, rootfs: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    _container(api, "t2", ["sh"], terminal=True)
    api.create("t2", rootfs, terminal=True)
    api.start("t2")
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 29, 97, 0, 0))
        os.environ.update(rt.env())
        os.execv(sys.executable, [sys.executable, "-m", "moorage.cli.main", "--address",
                                  rt.address, "--namespace", api.ns, "attach", "t2"])
    out = b""
    try:
        for _ in range(20):  # the first resize races the first command, and ash may take
            os.write(fd, b"stty size\n")  # a line as its cursor report: ask again
            deadline = time.monotonic() + 3
            while not re.search(rb"\r\n(\d+ \d+)\r\n", out) and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.5)[0]:
                    out += os.read(fd, 4096)
            if re.search(rb"\r\n29 97\r\n", out):
                break
            out = b""
        else:
            raise AssertionError(out)
        os.write(fd, b"exit 4\n")
        out += read_pty(fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4, out
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, 9)
                os.waitpid(pid, 0)


def test_detach_keys_leave_the_container_running(rt: Suite, api: Rt, rootfs: Path) -> None:
    import pty

    _container(api, "t3", ["sh"], terminal=True)
    api.create("t3", rootfs, terminal=True)
    api.start("t3")
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(rt.env())
        os.execv(sys.executable, [sys.executable, "-m", "moorage.cli.main", "--address",
                                  rt.address, "--namespace", api.ns, "attach", "t3"])
    try:
        out = b""
        for _ in range(20):  # once it answers, our terminal is raw (ash may take the first
            os.write(fd, b"echo $((7*6))\n")  # line as its cursor report: ask again)
            deadline = time.monotonic() + 3
            while b"42\r\n" not in out and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.5)[0]:
                    out += os.read(fd, 4096)
            if b"42\r\n" in out:
                break
        else:
            raise AssertionError(out)
        os.write(fd, b"\x10\x11")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert api.get("t3").status == 2  # still running
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, 9)
                os.waitpid(pid, 0)


def test_attach_refuses_a_stopped_task(rt: Suite, api: Rt, rootfs: Path) -> None:
    _container(api, "s1", ["true"])
    api.create("s1", rootfs)
    api.start("s1")
    assert api.wait("s1") == 0
    a = Attached(rt, api.ns, "s1")
    assert a.finish() != 0
    assert b"stopped" in a.buf["err"]
    b = Attached(rt, api.ns, "nosuch")
    assert b.finish() != 0


# `moor attach` held between its status check and its opening of the fifos (at.open_output)
# until the test says go: argv[1] is told "here", argv[2] says "go".
HELD_ATTACH = """
import os, sys
from moorage.cli.main import main
from moorage.services.runtime import attach as at

here, go, real, first = int(sys.argv[1]), int(sys.argv[2]), at.open_output, [True]
def open_output(path):
    if first:
        first.clear()
        os.write(here, b"h")
        os.read(go, 1)
    return real(path)
at.open_output = open_output
sys.exit(main(sys.argv[3:]))
"""


def _read_to_eof(fds: list[int], timeout: float = 20) -> dict[int, bytes]:
    got = {fd: b"" for fd in fds}
    left = set(fds)
    deadline = time.monotonic() + timeout
    while left:
        ready, _, _ = select.select(list(left), [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no EOF: {got}"
        for fd in ready:
            chunk = os.read(fd, 65536)
            got[fd] += chunk
            if not chunk:
                left.discard(fd)
    return got


def test_attach_to_a_task_that_exits_before_its_fifos_open(rt: Suite, api: Rt,
                                                           rootfs: Path) -> None:
    """The task's output ends (the runtime closes its tees, nobody reading) after attach
    saw it running and before attach opened the tees: attach ends anyway (Tasks.Wait), with
    the exit code, having missed the output (it waited forever before)."""
    _container(api, "r1", ["sh", "-c", "read x; echo got $x; echo err $x >&2; exit 5"])
    api.create("r1", rootfs)
    api.start("r1")
    st = api.get("r1")
    io_dir = os.path.dirname(st.stdout)
    here_r, here_w = os.pipe()
    go_r, go_w = os.pipe()
    p = subprocess.Popen(
        [sys.executable, "-c", HELD_ATTACH, str(here_w), str(go_r), "--address", rt.address,
         "--namespace", api.ns, "attach", "r1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=rt.env(), pass_fds=(here_w, go_r))
    os.close(here_w)
    os.close(go_r)
    tees: list[int] = []
    try:
        assert select.select([here_r], [], [], 20)[0] and os.read(here_r, 1) == b"h", \
            p.communicate(timeout=5)
        # we read the tees meanwhile: their EOF says the runtime has closed them
        tees = [os.open(os.path.join(io_dir, "attach-" + n), os.O_RDONLY | os.O_NONBLOCK)
                for n in ("stdout", "stderr")]
        w = os.open(st.stdin, os.O_WRONLY)
        os.write(w, b"hi\n")
        os.close(w)
        got = _read_to_eof(tees)
        assert list(got.values()) == [b"got hi\n", b"err hi\n"]
        for fd in tees:
            os.close(fd)
        tees = []
        assert api.wait("r1") == 5  # stopped, not deleted
        os.write(go_w, b"g")
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"attach never ended: {out!r} {err!r}") from None
        assert (p.returncode, out, err) == (5, b"", b"")
    finally:
        for fd in (here_r, go_w, *tees):
            os.close(fd)
        if p.poll() is None:
            p.kill()
            p.communicate()


def _container(api: Rt, id: str, args: list[str], stdin: str = "open", **kw: object) -> object:
    from google.protobuf import any_pb2

    from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
    from moorage.services.runtime import spec as sp

    from .helpers import CONTAINERS

    spec = sp.build_spec(api.ns, id, sp.ImageConfig(cmd=tuple(args)), sp.Overrides(**kw))
    c = cpb.Container(id=id, labels={"moorage/logging": "file", "moorage/stdin": stdin})
    c.runtime.name = "io.containerd.runc.v2"
    c.spec.CopyFrom(any_pb2.Any(type_url=sp.SPEC_TYPE_URL, value=sp.dumps(spec)))
    return api.call(CONTAINERS, "Create", cpb.CreateContainerRequest(container=c),
                    cpb.CreateContainerResponse).container


def test_moor_run_detached_interactive_then_attach(env: Env) -> None:
    """`moor run -d -i` gives the runtime the container's stdio; `moor attach` joins it
    later, leaves, and joins again."""
    r = env.moor("run", "-d", "-i", "--name", "talker", "busybox", "sh", "-c", LOOP)
    assert r.returncode == 0, r.stderr
    try:
        for word in (b"first", b"second"):
            a = subprocess.Popen(
                [sys.executable, "-m", "moorage.cli.main", "--address", env.suite.address,
                 "--namespace", env.ns, "attach", "talker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env.suite.env())
            assert a.stdin is not None and a.stdout is not None
            a.stdin.write(word + b"\n")
            a.stdin.flush()
            assert a.stdout.readline() == b"got " + word + b"\n"
            a.kill()
            a.wait()
        logs = env.moor("logs", "talker")
        assert "got first\n" in logs.stdout and "got second\n" in logs.stdout
    finally:
        env.moor("rm", "-f", "talker")


def test_attach_ends_with_the_container(env: Env) -> None:
    """A container that exits by itself while attached: `moor attach` prints what it wrote
    and returns its exit code (as `ctr task attach`)."""
    r = env.moor("run", "-d", "-i", "--name", "once", "busybox", "sh", "-c",
                 "read x; echo got $x; exit 4")
    assert r.returncode == 0, r.stderr
    try:
        a = subprocess.Popen(
            [sys.executable, "-m", "moorage.cli.main", "--address", env.suite.address,
             "--namespace", env.ns, "attach", "once"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env.suite.env())
        try:
            out, err = a.communicate(b"hello\n", timeout=20)
        except subprocess.TimeoutExpired:
            a.kill()
            out, err = a.communicate()
            raise AssertionError(f"attach did not end with the container: {out!r} {err!r}") from None
        assert out == b"got hello\n", err
        assert a.returncode == 4, err
    finally:
        env.moor("rm", "-f", "once")
