"""The anchor the benches compare against: containerd 1.6 started here on its own dirs.

    from bench import anchor                      # REPO on sys.path (bench/ is no package
    with anchor.Containerd() as ctrd:             # of the suite, only this name is used)
        subprocess.run([*ctrd.ctr, "content", "ls"])

``Containerd`` writes a private config (``config``: every plugin the benches do not compare
disabled, CRI included, unless a bench passes its own ``disabled`` list; ``plugins`` adds or
replaces ``[plugins."<id>"]`` sections) under a temp dir (or ``base``), starts
``containerd --config`` in its own session, and returns once ``ctr version`` answers on its
socket (bounded, 30 s; a failure carries the tail of containerd's log). ``stop`` (also on
exit, and when the start fails) sends SIGTERM to its process group, SIGKILL after
``stop_timeout``, kills any shim left that names its socket, unmounts whatever is still
mounted under its dir and removes the dir unless the caller passed it. The containerd
systemd service is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

CRI = "io.containerd.grpc.v1.cri"
DISABLED = (CRI, "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
            "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing")
# the GC scheduler's first run comes at once (its default waits 100 ms after start)
GC_AT_ONCE = {"io.containerd.gc.v1.scheduler": 'startup_delay = "0ms"'}
READY_TIMEOUT = 30.0


def config(root: Path, state: Path, sock: Path, *, plugins: Mapping[str, str] | None = None,
           disabled: Iterable[str] = DISABLED) -> str:
    """containerd's config.toml; ``plugins`` maps a plugin id to its section's TOML body."""
    names = list(disabled)
    lines = [
        "version = 2", f'root = "{root}"', f'state = "{state}"', 'plugin_dir = ""',
        "disabled_plugins = [" + ", ".join(f'"{n}"' for n in names) + "]", "",
        "[grpc]", f'  address = "{sock}"', "",
        "[ttrpc]", f'  address = "{sock}.ttrpc"', "",
        "[debug]", '  address = ""', "",
        "[metrics]", '  address = ""', "",
    ]
    for plugin, body in {"io.containerd.internal.v1.opt": f'path = "{root}/opt"', **(plugins or {})}.items():
        lines += [f'[plugins."{plugin}"]', textwrap.indent(textwrap.dedent(body).strip("\n"), "  "), ""]
    return "\n".join(lines)


def unmount_under(path: Path) -> None:
    """Lazily unmount everything mounted at or below ``path``, the last mounted first."""
    top = str(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for mp in reversed(points):
        if mp == top or mp.startswith(top + "/"):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def shims_of(address: str) -> list[int]:
    """Shims started with ``address`` (a containerd's socket) on their command line."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if address.encode() in argv and b"shim" in argv[0]:
                found.append(int(d.name))
    return found


class Containerd:
    """One ``containerd --config`` on ``base`` (default: a new dir under /tmp)."""

    def __init__(self, *, namespace: str = "bench", plugins: Mapping[str, str] | None = None,
                 disabled: Iterable[str] = DISABLED, base: Path | None = None, prefix: str = "ctrd-",
                 wrapper: Sequence[str] = (), stop_timeout: float = 20.0) -> None:
        self.owned = base is None
        self.base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")) if base is None else base
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.sock = self.base / "c.sock"
        self.log = self.base / "containerd.log"
        self.toml = config(self.root, self.state, self.sock, plugins=plugins, disabled=disabled)
        self.ctr = ["ctr", "--address", str(self.sock), "--namespace", namespace]
        self.argv = [*wrapper, "containerd", "--config", str(self.base / "config.toml")]
        self.stop_timeout = stop_timeout
        self.version = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "config.toml").write_text(self.toml)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode}: {self.log_tail()}")
            if self.sock.exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r = subprocess.run([*self.ctr, "version"], capture_output=True, text=True, timeout=5, check=False)
                    if r.returncode == 0:
                        self.version = next((ln.split()[-1] for ln in r.stdout.splitlines()
                                             if ln.strip().startswith("Version:")), "")
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd did not answer `ctr version` within {READY_TIMEOUT:.0f} s: "
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
            for pid in shims_of(str(self.sock)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        unmount_under(self.base)
        if self.owned:
            shutil.rmtree(self.base, ignore_errors=True)
