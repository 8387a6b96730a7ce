"""The CRI streaming server end to end: an independent SPDY client (tests/cri/spdyclient,
Go, on spdystream as kubectl and crictl use it) against StreamingServer on the runtime
service's containers (namespace k8s.io), and port forwarding into a network namespace
made here. Root: runc, netns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.errdefs import InvalidArgument
from moorage.rpc import Peer
from moorage.services.cri.streaming import RuntimeBackend, StreamingServer
from moorage.services.cri.streaming.tokens import TokenCache
from runtime.conftest import make_rootfs
from runtime.helpers import Rt
from suite import Suite

pytestmark = [pytest.mark.root, pytest.mark.interop]

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / ".build" / "spdy-client"
NS = "k8s.io"


def client_binary() -> Path:
    sources = list((ROOT / "tests" / "cri" / "spdyclient").glob("*.go"))
    if not CLIENT.exists() or any(s.stat().st_mtime > CLIENT.stat().st_mtime for s in sources):
        if shutil.which("go") is None:
            pytest.skip("go is not installed (make deps installs golang-go)")
        if not Path("/usr/share/gocode/src/github.com/moby/spdystream").exists():
            pytest.skip("golang-github-docker-spdystream-dev is not installed (make deps)")
        subprocess.run(["make", "-s", "spdyclient"], cwd=ROOT, check=True)
    return CLIENT


@pytest.fixture(scope="module")
def rt_suite() -> Iterator[Suite]:
    tmp = Path(tempfile.mkdtemp(prefix="moorage-streaming-", dir="/tmp"))
    s = Suite(tmp)
    try:
        s.start("proxy")
        s.start("runtime")
        yield s
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def api(rt_suite: Suite) -> Iterator[Rt]:
    r = Rt(rt_suite.address, NS)
    yield r
    r.cleanup()
    r.close()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


class Netns:
    def __init__(self) -> None:
        self.name = "h3pf-" + secrets.token_hex(4)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.path = f"/var/run/netns/{self.name}"

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


@pytest.fixture
def netns() -> Iterator[Netns]:
    n = Netns()
    yield n
    n.close()


@pytest.fixture
async def server(rt_suite: Suite, tmp_path: Path,
                 netns: Netns) -> AsyncIterator[StreamingServer]:
    client_binary()
    peer = Peer(rt_suite.address)

    async def netns_of(pod: str) -> str:
        return {"pod-in-netns": netns.path, "pod-host": ""}[pod]

    srv = StreamingServer(RuntimeBackend(peer, tmp_path / "streaming", netns_of=netns_of))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
        await peer.close()


class Client:
    """The Go client as a subprocess; stdin written by the test, output read with deadlines."""

    def __init__(self, proc: asyncio.subprocess.Process, status: Path) -> None:
        self.proc = proc
        self.status_path = status
        self.out = b""
        self.err = b""

    @classmethod
    async def start(cls, tmp: Path, mode: str, url: str, *flags: str) -> Client:
        status = tmp / f"status-{secrets.token_hex(4)}.json"
        proc = await asyncio.create_subprocess_exec(
            str(CLIENT), mode, *flags, "-status", str(status), url,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return cls(proc, status)

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def expect(self, want: bytes, timeout: float = 20) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while want not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"{want!r} not in {self.out!r}"
            try:
                chunk = await asyncio.wait_for(self.proc.stdout.read(65536), left)
            except asyncio.TimeoutError:
                continue
            assert chunk, f"EOF before {want!r}: {self.out!r}"
            self.out += chunk

    async def expect_re(self, pattern: bytes, timeout: float = 20) -> bytes:
        """Wait for `pattern` in the output; its first group."""
        import re

        deadline = time.monotonic() + timeout
        while (m := re.search(pattern, self.out)) is None:
            await self._more(deadline)
        return m.group(1)

    async def _more(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        left = deadline - time.monotonic()
        assert left > 0, f"timed out: {self.out!r}"
        chunk = await asyncio.wait_for(self.proc.stdout.read(65536), left)
        assert chunk, f"EOF: {self.out!r}"
        self.out += chunk

    async def finish(self, timeout: float = 30, close_stdin: bool = True) -> dict[str, Any]:
        """Until the client exits (with our stdin closed first, unless told not to)."""
        assert self.proc.stdin is not None and self.proc.stdout and self.proc.stderr
        if close_stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        out, err, _ = await asyncio.wait_for(asyncio.gather(
            self.proc.stdout.read(), self.proc.stderr.read(), self.proc.wait()), timeout)
        self.out += out
        self.err += err
        assert self.proc.returncode in (0, 3), (self.proc.returncode, self.err)
        doc: dict[str, Any] = json.loads(self.status_path.read_text())
        return doc


def status(doc: dict[str, Any]) -> dict[str, Any]:
    assert doc["http"] == 101 and doc["protocol"] == "v4.channel.k8s.io", doc
    st: dict[str, Any] = json.loads(doc["error"])
    return st


def exit_code(st: dict[str, Any]) -> int:
    if st["status"] == "Success":
        return 0
    assert st["reason"] == "NonZeroExitCode", st
    (cause,) = st["details"]["causes"]
    assert cause["reason"] == "ExitCode"
    return int(cause["message"])


def sleeper(api: Rt, rootfs: Path, id: str = "c1", **kw: Any) -> None:
    api.container(id, ["sleep", "1000"], **kw)
    api.create(id, rootfs)
    api.start(id)


# ---- exec ------------------------------------------------------------------------------

async def test_exec_stdin_stdout_stderr_and_exit_code(server: StreamingServer, api: Rt,
                                                      rootfs: Path, tmp_path: Path) -> None:
    sleeper(api, rootfs)
    url = server.exec_url("c1", ["sh", "-c", "cat; echo oops >&2; exit 3"], tty=False,
                          stdin=True, stdout=True, stderr=True)
    c = await Client.start(tmp_path, "exec", url, "-stdin", "-stderr")
    await c.send(b"hello\nworld\n")
    c.close_stdin()
    st = status(await c.finish())
    assert c.out == b"hello\nworld\n" and c.err == b"oops\n"
    assert st["status"] == "Failure" and exit_code(st) == 3
    assert "non-zero exit code" in st["message"]
    big = 8 << 20  # far more than the server holds unread: back-pressure, nothing lost
    url = server.exec_url("c1", ["sh", "-c", "wc -c"], tty=False, stdin=True, stdout=True,
                          stderr=False)
    c = await Client.start(tmp_path, "exec", url, "-stdin")
    await c.send(b"z" * big)
    c.close_stdin()
    assert exit_code(status(await c.finish())) == 0 and int(c.out) == big
    url = server.exec_url("c1", ["echo", "hi"], tty=False, stdin=False, stdout=True,
                          stderr=False)
    c = await Client.start(tmp_path, "exec", url)
    st = status(await c.finish())
    assert st == {"metadata": {}, "status": "Success"}, st["message"]
    assert c.out == b"hi\n"


async def test_exec_tty_with_resize(server: StreamingServer, api: Rt, rootfs: Path,
                                    tmp_path: Path) -> None:
    sleeper(api, rootfs)
    url = server.exec_url("c1", ["sh"], tty=True, stdin=True, stdout=True, stderr=False)
    c = await Client.start(tmp_path, "exec", url, "-stdin", "-tty", "-resize", "77x33")
    await c.send(b"tty\n")
    await c.expect(b"/dev/pts/")
    for _ in range(100):  # the resize races the first commands (as in kubelet); it lands
        c.out = b""
        await c.send(b"stty size\n")
        size = await c.expect_re(rb"(\d+ \d+)\r\n")
        if size == b"33 77":
            break
    else:
        raise AssertionError(f"the terminal was never resized: {size!r}")
    await c.send(b"exit 5\n")
    st = status(await c.finish(close_stdin=False))  # (EOF on a terminal's stdin is a hang-up)
    assert exit_code(st) == 5
    assert c.err == b""


async def test_exec_ends_when_the_client_leaves(server: StreamingServer, api: Rt,
                                                rootfs: Path, tmp_path: Path) -> None:
    from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
    from runtime.helpers import TASKS, wait_until

    def pids() -> int:
        return len(api.call(TASKS, "ListPids", tpb.ListPidsRequest(container_id="c1"),
                            tpb.ListPidsResponse).processes)

    sleeper(api, rootfs)
    assert await asyncio.to_thread(pids) == 1
    url = server.exec_url("c1", ["sh", "-c", "echo started; exec sleep 1000"], tty=False,
                          stdin=False, stdout=True, stderr=False)
    c = await Client.start(tmp_path, "exec", url)
    await c.expect(b"started\n")
    assert await asyncio.to_thread(pids) == 2
    c.proc.kill()
    await c.proc.wait()
    await asyncio.to_thread(wait_until, lambda: pids() == 1, 20, "the exec'd process killed")


async def test_exec_in_a_missing_container(server: StreamingServer, api: Rt,
                                           tmp_path: Path) -> None:
    url = server.exec_url("nosuch", ["true"], tty=False, stdin=False, stdout=True,
                          stderr=False)
    c = await Client.start(tmp_path, "exec", url)
    st = status(await c.finish())
    assert st["status"] == "Failure" and st["reason"] == "InternalError"
    assert "nosuch" in st["message"]


async def test_older_protocol_gets_the_message_only(server: StreamingServer, api: Rt,
                                                    rootfs: Path, tmp_path: Path) -> None:
    sleeper(api, rootfs)
    url = server.exec_url("c1", ["sh", "-c", "exit 4"], tty=False, stdin=False, stdout=True,
                          stderr=False)
    c = await Client.start(tmp_path, "exec", url, "-protocols", "v9.channel.k8s.io,v2.channel.k8s.io")
    doc = await c.finish()
    assert doc["protocol"] == "v2.channel.k8s.io"
    assert doc["error"].startswith("command terminated with non-zero exit code")


# ---- attach ----------------------------------------------------------------------------

async def test_attach(server: StreamingServer, api: Rt, rootfs: Path, tmp_path: Path) -> None:
    from runtime.test_attach import LOOP, _container

    _container(api, "a1", ["sh", "-c", LOOP])
    api.create("a1", rootfs)
    api.start("a1")
    url = server.attach_url("a1", tty=False, stdin=True, stdout=True, stderr=True)
    c = await Client.start(tmp_path, "attach", url, "-stdin", "-stderr")
    await c.send(b"one\n")
    await c.expect(b"got one\n")
    c.close_stdin()  # stdin mode "open": the container's stdin stays open
    await asyncio.to_thread(api.kill, "a1", 9)
    st = status(await c.finish())
    assert st["status"] == "Success"
    assert c.err == b"err one\n"
    assert await asyncio.to_thread(api.wait, "a1") == 137


async def test_attach_to_stdio_the_cri_process_owns(server: StreamingServer, api: Rt,
                                                     rootfs: Path, tmp_path: Path) -> None:
    """services/cri's ContainerIO (the CRI containers' fifos, log and subscribers) through
    the backend's io_of hook; stdin_once closes the container's stdin after the attach."""
    from moorage.services.cri.cio import ContainerIO
    from runtime.test_attach import LOOP

    io = ContainerIO.create(tmp_path / "io", str(tmp_path / "c.log"), stdin=True, tty=False)
    try:
        stdin, stdout, stderr = io.paths()
        api.container("h1", ["sh", "-c", LOOP], logged=False)
        api.create("h1", rootfs, stdin=stdin, stdout=stdout, stderr=stderr)
        io.attached()
        api.start("h1")
        io.stdin_once = True  # type: ignore[attr-defined]
        backend = server.backend
        assert isinstance(backend, RuntimeBackend)
        backend.io_of = lambda id: io if id == "h1" else None  # type: ignore[assignment, return-value]
        url = server.attach_url("h1", tty=False, stdin=True, stdout=True, stderr=True)
        c = await Client.start(tmp_path, "attach", url, "-stdin", "-stderr")
        await c.send(b"x\n" * 20000)  # more than a pipe holds
        await c.expect(b"got x\n" * 20000)
        c.close_stdin()
        st = status(await c.finish())
        assert st["status"] == "Success"
        assert c.out.endswith(b"bye\n") and c.err.count(b"err x\n") == 20000
        assert await asyncio.to_thread(api.wait, "h1") == 7
        assert "stdout F bye" in (tmp_path / "c.log").read_text()
    finally:
        io.close()


async def test_attach_to_a_stopped_container_fails(server: StreamingServer, api: Rt,
                                                   rootfs: Path, tmp_path: Path) -> None:
    api.container("s1", ["true"])
    api.create("s1", rootfs)
    api.start("s1")
    assert await asyncio.to_thread(api.wait, "s1") == 0
    url = server.attach_url("s1", tty=False, stdin=False, stdout=True, stderr=False)
    st = status(await (await Client.start(tmp_path, "attach", url)).finish())
    assert st["status"] == "Failure" and "not running" in st["message"]


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    async def write(self, data: bytes) -> None:
        self.data += data

    async def close(self) -> None:
        pass


async def test_attach_to_a_task_that_exits_before_its_fifos_open(
        rt_suite: Suite, api: Rt, rootfs: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The task's output ends (the runtime closes its tees, nobody reading) after the
    backend saw it running and before it opened the tees: the attach ends anyway (its Wait
    beside the copy), having missed the output (it waited forever before)."""
    import os

    from moorage.services.runtime import attach as at
    from runtime.test_attach import _container, _read_to_eof

    _container(api, "r1", ["sh", "-c", "read x; echo got $x; echo err $x >&2; exit 5"])
    api.create("r1", rootfs)
    api.start("r1")
    st = api.get("r1")
    real, first = at.open_output, [True]

    def open_output(path: str) -> int:  # between the status check and the fifos' opening
        if first:
            first.clear()
            tees = [os.open(os.path.join(os.path.dirname(st.stdout), "attach-" + n),
                            os.O_RDONLY | os.O_NONBLOCK) for n in ("stdout", "stderr")]
            try:
                w = os.open(st.stdin, os.O_WRONLY)
                os.write(w, b"hi\n")
                os.close(w)
                assert list(_read_to_eof(tees).values()) == [b"got hi\n", b"err hi\n"]
            finally:
                for fd in tees:
                    os.close(fd)
            assert api.wait("r1") == 5
        return real(path)

    monkeypatch.setattr(at, "open_output", open_output)
    peer = Peer(rt_suite.address)
    out, err = _Sink(), _Sink()
    try:
        backend = RuntimeBackend(peer, tmp_path / "streaming")
        await asyncio.wait_for(backend.attach("r1", False, None, out, err, None), 20)
    finally:
        await peer.close()
    assert not first and (out.data, err.data) == (b"", b"")


# ---- port forwarding ---------------------------------------------------------------------

ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = b""
    while chunk := c.recv(65536):
        data += chunk
    c.sendall(b"echo:" + data)
    c.close()
"""


async def test_port_forward_into_a_netns(server: StreamingServer, netns: Netns,
                                         tmp_path: Path) -> None:
    port = 18000 + secrets.randbelow(2000)
    echo = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns.name, sys.executable, "-c", ECHO, str(port),
        stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        assert await asyncio.wait_for(echo.stdout.readline(), 20) == b"ready\n"
        url = server.port_forward_url("pod-in-netns", [port])
        c = await Client.start(tmp_path, "portforward", url, "-port", str(port))
        await c.send(b"x" * 100000)
        doc = await c.finish()
        assert doc["http"] == 101 and doc["protocol"] == "portforward.k8s.io"
        assert doc["error"] == "" and c.out == b"echo:" + b"x" * 100000
        # nothing listens on that port in the host's namespace: it really went in the netns
        url = server.port_forward_url("pod-host", [port])
        c = await Client.start(tmp_path, "portforward", url, "-port", str(port))
        doc = await c.finish()
        assert f"error forwarding port {port} to pod pod-host" in doc["error"]
        assert c.out == b""
    finally:
        with contextlib.suppress(ProcessLookupError):  # it exits after one connection
            echo.kill()
        await echo.wait()


async def test_port_forward_host_network(server: StreamingServer, tmp_path: Path) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello from the host\n")
        w.write_eof()
        await r.read()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        url = server.port_forward_url("pod-host", [])
        c = await Client.start(tmp_path, "portforward", url, "-port", str(port))
        doc = await c.finish()
        assert doc["error"] == "" and c.out == b"hello from the host\n"
    finally:
        srv.close()


# ---- WebSocket (the same streams as channels) ------------------------------------------

def ws_status(doc: dict[str, Any], protocol: str = "v5.channel.k8s.io") -> dict[str, Any]:
    assert doc["http"] == 101 and doc["protocol"] == protocol, doc
    st: dict[str, Any] = json.loads(doc["error"])
    return st


async def test_websocket_exec(server: StreamingServer, api: Rt, rootfs: Path,
                              tmp_path: Path) -> None:
    sleeper(api, rootfs)
    url = server.exec_url("c1", ["sh", "-c", "cat; echo oops >&2; exit 3"], tty=False,
                          stdin=True, stdout=True, stderr=True)
    c = await Client.start(tmp_path, "wsexec", url, "-stdin", "-stderr")
    await c.send(b"over websocket\n")
    c.close_stdin()  # v5: the close signal for channel 0
    st = ws_status(await c.finish())
    assert c.out == b"over websocket\n" and c.err == b"oops\n" and exit_code(st) == 3
    url = server.exec_url("c1", ["sh", "-c", "echo v4"], tty=False, stdin=False, stdout=True,
                          stderr=False)
    c = await Client.start(tmp_path, "wsexec", url, "-protocols", "v4.channel.k8s.io")
    st = ws_status(await c.finish(), "v4.channel.k8s.io")
    assert st["status"] == "Success" and c.out == b"v4\n"
    url = server.exec_url("c1", ["true"], tty=False, stdin=False, stdout=True, stderr=False)
    c = await Client.start(tmp_path, "wsexec", url, "-protocols", "base64.channel.k8s.io")
    assert (await c.finish())["http"] == 403


async def test_websocket_exec_tty_and_attach(server: StreamingServer, api: Rt, rootfs: Path,
                                             tmp_path: Path) -> None:
    from runtime.test_attach import LOOP, _container

    sleeper(api, rootfs)
    url = server.exec_url("c1", ["sh"], tty=True, stdin=True, stdout=True, stderr=False)
    c = await Client.start(tmp_path, "wsexec", url, "-stdin", "-tty", "-resize", "91x17")
    for _ in range(100):  # the resize races the first commands (as in kubelet); it lands
        c.out = b""
        await c.send(b"stty size\n")
        if await c.expect_re(rb"(\d+ \d+)\r\n") == b"17 91":
            break
    else:
        raise AssertionError("the terminal was never resized")
    await c.send(b"exit 6\n")
    assert exit_code(ws_status(await c.finish(close_stdin=False))) == 6

    _container(api, "a1", ["sh", "-c", LOOP])
    api.create("a1", rootfs)
    api.start("a1")
    url = server.attach_url("a1", tty=False, stdin=True, stdout=True, stderr=True)
    c = await Client.start(tmp_path, "wsattach", url, "-stdin", "-stderr")
    await c.send(b"ws\n")
    await c.expect(b"got ws\n")
    await asyncio.to_thread(api.kill, "a1", 9)
    st = ws_status(await c.finish(close_stdin=False))
    assert st["status"] == "Success" and c.err == b"err ws\n"


async def test_websocket_port_forward(server: StreamingServer, netns: Netns,
                                      tmp_path: Path) -> None:
    port = 20000 + secrets.randbelow(2000)
    echo = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns.name, sys.executable, "-c", ECHO_ONCE, str(port),
        stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        assert await asyncio.wait_for(echo.stdout.readline(), 20) == b"ready\n"
        url = server.port_forward_url("pod-in-netns", [port])
        c = await Client.start(tmp_path, "wsportforward", url, "-port", str(port))
        await c.send(b"ping\n")
        await c.expect(b"echo:ping\n")
        doc = await c.finish(close_stdin=False)
        assert doc["http"] == 101 and doc["protocol"] == "v4.channel.k8s.io" and doc["error"] == ""
    finally:
        with contextlib.suppress(ProcessLookupError):  # it exits after one connection
            echo.kill()
        await echo.wait()


ECHO_ONCE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
line = c.makefile("rb").readline()
c.sendall(b"echo:" + line)
c.close()
"""


# ---- tokens and HTTP -------------------------------------------------------------------

async def _http(server: StreamingServer, path: str, headers: str = "") -> str:
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    await w.drain()
    line = (await asyncio.wait_for(r.readline(), 20)).decode()
    w.close()
    return line.split(" ", 2)[1]


UPGRADE = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"


async def test_tokens_are_single_use_and_expire(server: StreamingServer,
                                                tmp_path: Path) -> None:
    now = [0.0]
    server.tokens = TokenCache(60.0, clock=lambda: now[0])
    url = server.exec_url("c1", ["true"], tty=False, stdin=False, stdout=True, stderr=False)
    path = url.removeprefix(server.base_url)
    assert await _http(server, "/exec/nosuchtoken", UPGRADE) == "404"
    assert await _http(server, path.replace("/exec/", "/attach/"), UPGRADE) == "404"
    assert await _http(server, path, UPGRADE) == "404"  # wrong kind spent it
    url = server.exec_url("c1", ["true"], tty=False, stdin=False, stdout=True, stderr=False)
    now[0] += 61
    c = await Client.start(tmp_path, "exec", url)
    assert (await c.finish())["http"] == 404
    url = server.exec_url("c1", ["true"], tty=False, stdin=False, stdout=True, stderr=False)
    assert await _http(server, url.removeprefix(server.base_url)) == "400"  # no upgrade
    c = await Client.start(tmp_path, "exec", url)
    assert (await c.finish())["http"] == 404  # used by the bad request
    url = server.exec_url("c1", ["true"], tty=False, stdin=False, stdout=True, stderr=False)
    c = await Client.start(tmp_path, "exec", url, "-protocols", "v9.channel.k8s.io")
    doc = await c.finish()
    assert doc["http"] == 403 and "unable to negotiate" in doc["body"]


def test_url_requests_are_checked() -> None:
    srv = StreamingServer(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        srv.exec_url("c1", ["true"], tty=False, stdin=False, stdout=False, stderr=False)
    with pytest.raises(InvalidArgument):
        srv.exec_url("c1", ["sh"], tty=True, stdin=True, stdout=True, stderr=True)
    with pytest.raises(InvalidArgument):
        srv.exec_url("c1", [], tty=False, stdin=False, stdout=True, stderr=False)
    with pytest.raises(InvalidArgument):
        srv.port_forward_url("p", [70000])
    assert srv.attach_url("c1", tty=True, stdin=True, stdout=True,
                          stderr=False).startswith("http://127.0.0.1:0/attach/")
