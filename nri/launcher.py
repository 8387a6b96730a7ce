"""Pre-installed plugins: found in the plugin folder, started with a socketpair on fd 3.

A plugin is a regular file with an exec bit named ``NN-name`` (two digits, a dash, a
name of ``[A-Za-z0-9_.+-]``); anything else in the folder is logged and skipped. Its
config is the first of ``<conf.d>/NN-name.conf`` and ``<conf.d>/name.conf`` that exists,
passed whole in Configure. The child gets one end of an AF_UNIX socketpair as fd 3 and an
environment of exactly ``NRI_PLUGIN_NAME``, ``NRI_PLUGIN_IDX`` and ``NRI_PLUGIN_SOCKET=3``
(as containerd/nri does); its stdout and stderr go to ``<log_dir>/NN-name.log`` (upstream
drops them). The runtime keeps the other end as the plugin's trunk.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("moorage.nri")

FILE_RE = re.compile(r"^([0-9]{2})-([A-Za-z0-9_.+-]+)$")


@dataclass(frozen=True)
class Preinstalled:
    idx: str
    name: str
    path: Path

    @property
    def id(self) -> str:
        return f"{self.idx}-{self.name}"


def discover(plugin_dir: Path) -> list[Preinstalled]:
    """The executables of ``plugin_dir`` named ``NN-name``, in index order."""
    try:
        entries = sorted(os.scandir(plugin_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            continue
        m = FILE_RE.match(entry.name)
        if m is None:
            log.warning("nri: skipping %s: not named NN-name", entry.path)
            continue
        found.append(Preinstalled(m.group(1), m.group(2), Path(entry.path)))
    return sorted(found, key=lambda p: (p.idx, p.name))


def read_config(plugin: Preinstalled, config_dir: Path) -> str:
    for candidate in (config_dir / f"{plugin.id}.conf", config_dir / f"{plugin.name}.conf"):
        try:
            return candidate.read_text()
        except FileNotFoundError:
            continue
    return ""


class Child:
    """A launched plugin process (what PluginConn needs of it: pid, poll, kill, wait)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = -1
        return self.returncode


def launch(plugin: Preinstalled, config_dir: Path, log_dir: Path) -> tuple[Child, socket.socket, str]:
    """Start ``plugin``; (its process, our end of its trunk, its config).

    posix_spawn with dup2 file actions puts the socket on fd 3 and the log on 1 and 2;
    every other descriptor of ours is close-on-exec (PEP 446), so the child gets no others.
    """
    config = read_config(plugin, config_dir)
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out = os.open(log_dir / f"{plugin.id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    src = theirs.fileno() if theirs.fileno() != 3 else os.dup(theirs.fileno())
    try:
        pid = os.posix_spawn(
            str(plugin.path),
            [str(plugin.path)],
            {"NRI_PLUGIN_NAME": plugin.name, "NRI_PLUGIN_IDX": plugin.idx, "NRI_PLUGIN_SOCKET": "3"},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
                (os.POSIX_SPAWN_DUP2, src, 3),
            ],
            setsid=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        if src != theirs.fileno():
            os.close(src)
        theirs.close()
        os.close(out)
    return Child(pid), ours, config
