"""Real moorage processes for tests: ``moorage serve NAME`` under a tmp root and state.

    suite = Suite(tmp_path, config={"echo": {"replicas": 2}}, plugins=["skeleton.echo:PROCESS"])
    suite.start("proxy"); suite.start("echo", replica=1)
    ...
    suite.close()

or the ``suite`` fixture (tests/conftest.py), which closes it. ``start`` returns once the
process sent READY=1 on its own NOTIFY_SOCKET (a datagram socket per process): no sleeps.
A process that exits before it is ready fails the start with its output. ``up()`` runs the
whole suite under ``moorage up`` and waits for its READY=1 the same way.

Tests in other folders use it as ``from suite import Suite`` (tests/ is on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from ttrpc.frame import Frame, FrameDecoder

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
READY_TIMEOUT = 30.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def render_config(sections: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


class Notify:
    """A NOTIFY_SOCKET: a bound datagram socket and what arrived on it."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, needle: str, proc: subprocess.Popen[bytes] | None, timeout: float = READY_TIMEOUT) -> str:
        """Block until a datagram containing ``needle`` arrives (or ``proc`` exits)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {needle!r} on {self.path} within {timeout}s (got {self.messages})")
            self.sock.settimeout(min(left, 0.25) if proc is not None else left)
            try:
                data = self.sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                if proc is not None and proc.poll() is not None:
                    raise ProcessExited(proc) from None
                continue
            self.messages.append(data)
            if needle in data:
                return data

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class ProcessExited(RuntimeError):
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        super().__init__(f"{proc.args} exited {proc.returncode} before it was ready:\n{out}")
        self.returncode = proc.returncode
        self.output = out


class Proc:
    def __init__(self, program: str, popen: subprocess.Popen[bytes], notify: Notify, log: Path) -> None:
        self.program = program
        self.popen = popen
        self.notify = notify
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Suite:
    """Processes of one test's suite, sharing one generated config."""

    def __init__(
        self,
        tmp: Path,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        plugins: Iterable[str] = (),
        suite: Mapping[str, Any] | None = None,
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.root = tmp / "root"
        # unix socket paths are limited to 108 bytes: keep state short
        self.state = Path(tmpdir_short()) if len(str(tmp)) > 60 else tmp / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        sections: dict[str, dict[str, Any]] = {
            "suite": {
                "root": str(self.root),
                "state": str(self.state),
                "plugins": list(plugins),
                "log_format": "text",
                "log_level": "info",
                "shutdown_timeout": 5.0,
                "event_loop": os.environ.get("MOORAGE_TEST_LOOP", "uvloop"),
                **(suite or {}),
            }
        }
        for name, keys in (config or {}).items():
            sections[name] = dict(keys)
        self.config_path = tmp / "config.toml"
        self.config_path.write_text(render_config(sections))
        self.procs: dict[str, Proc] = {}
        self.up_proc: Proc | None = None
        self.extra_env: dict[str, str] = {}
        """Set in the environment of every process started from here on."""

    @property
    def address(self) -> str:
        return str(self.state / "moorage.sock.ttrpc")

    def socket(self, name: str, replica: int | None = None) -> str:
        sock = f"{name}.sock" if replica is None else f"{name}-{replica}.sock"
        return str(self.state / "services" / sock)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.extra_env)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "moorage.daemon", *args]

    def start(self, name: str, replica: int | None = None, wait: bool = True) -> Proc:
        """Start ``moorage serve name`` and wait for its READY=1."""
        program = name if replica is None else f"{name}-{replica}"
        old = self.procs.get(program)
        if old is not None and old.popen.poll() is None:
            raise RuntimeError(f"{program} is already running")
        notify = Notify(self.tmp / f"notify-{program}.sock")
        args = ["serve", name, "--config", str(self.config_path)]
        if replica is not None:
            args += ["--replica", str(replica)]
        env = self.env()
        env["NOTIFY_SOCKET"] = str(notify.path)
        log = self.tmp / f"{program}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(self.command(*args), env=env, stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(program, popen, notify, log)
        self.procs[program] = proc
        if wait:
            try:
                notify.wait_for("READY=1", popen)
            except ProcessExited as exc:
                raise RuntimeError(f"{program} exited {exc.returncode} before ready:\n{proc.output()}") from None
        return proc

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``moorage ARGS`` to completion (config checks and such)."""
        return subprocess.run(self.command(*args), env=self.env(), capture_output=True, text=True, timeout=timeout)

    def moor(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "moorage.cli.main", "--address", self.address, *args]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def kill(self, program: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs[program]
        proc.popen.send_signal(sig)
        return proc.popen.wait(timeout=30)

    def stop(self, program: str) -> int:
        return self.kill(program, signal.SIGTERM)

    def up(self, timeout: float = READY_TIMEOUT) -> Proc:
        """``moorage up`` in the foreground (its own session); returns once the suite is ready."""
        notify = Notify(self.tmp / "notify-up.sock")
        env = self.env()
        env["NOTIFY_SOCKET"] = str(notify.path)
        log = self.tmp / "up.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                self.command("up", "--config", str(self.config_path)),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.up_proc = Proc("up", popen, notify, log)
        try:
            notify.wait_for("READY=1", popen, timeout)
        except ProcessExited:
            raise RuntimeError(f"moorage up exited {popen.returncode}:\n{self.up_proc.output()}") from None
        return self.up_proc

    def close(self) -> None:
        procs = list(self.procs.values())
        if self.up_proc is not None:
            procs.append(self.up_proc)
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
            proc.notify.close()


def tmpdir_short() -> str:
    return tempfile.mkdtemp(prefix="moorage-", dir="/tmp")


@contextlib.asynccontextmanager
async def running(
    names: Iterable[str],
    config: Mapping[str, Mapping[str, Any]] | None = None,
    plugins: Iterable[str] = (),
) -> AsyncIterator[Suite]:
    """The proxy and the processes ``names`` (one replica each, or as config says), running
    under a fresh tmp dir for the duration of an ``async with``."""
    tmp = Path(tempfile.mkdtemp(prefix="moorage-", dir="/tmp"))
    s = Suite(tmp, config=config, plugins=plugins)
    try:
        await asyncio.to_thread(s.start, "proxy")
        for name in names:
            if name == "proxy":
                continue
            replicas = int((config or {}).get(name, {}).get("replicas", 1))
            if replicas == 1:
                await asyncio.to_thread(s.start, name)
            else:
                for n in range(1, replicas + 1):
                    await asyncio.to_thread(s.start, name, n)
        yield s
    finally:
        await asyncio.to_thread(s.close)
        shutil.rmtree(tmp, ignore_errors=True)


def raw_frames(sock: socket.socket, data: bytes, want: int, timeout: float = 20.0) -> list[Frame]:
    """Send ``data`` (raw ttrpc frames, or b"" to only read) on a connected ``sock`` and read
    back ``want`` frames, (stream id, type, flags, body) each; fails if the peer closes first,
    sends an oversized frame, or is silent for ``timeout`` seconds."""
    sock.sendall(data)
    sock.settimeout(timeout)
    dec = FrameDecoder()
    out: list[Frame] = []
    while len(out) < want:
        chunk = sock.recv(1 << 20)
        assert chunk, "the peer closed the connection"
        for event in dec.feed(chunk):
            assert isinstance(event, Frame), event
            out.append(event)
    return out


def skeleton_suite(tmp_path: Path, **proxy: Any) -> Suite:
    """The proxy and the test processes ``echo`` and ``other`` (tests/skeleton/echo.py)
    configured, every built-in service disabled; ``proxy``: more ``[proxy]`` keys."""
    from moorage.registry import builtin_names

    disabled = {name: {"enabled": False} for name in builtin_names() if name != "proxy"}
    config = {**disabled, "proxy": {"health_timeout": 5.0, **proxy}}  # a loaded CI machine is slow, not down
    return Suite(tmp_path, config=config, plugins=["skeleton.echo:PROCESS", "skeleton.echo:OTHER"])
