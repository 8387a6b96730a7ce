"""Runtime v2 shims: finding the binary, `start`, `delete`, the records, the connection.

Start protocol (what Debian's containerd-shim-runc-v2 1.6 needs, see containerd-apis §6.1):
cwd = the bundle (holding config.json and a `log` fifo that already has a reader), stdin =
the encoded runtime options Any then EOF, env TTRPC_ADDRESS = the proxy's socket (where
the shim forwards its events), `-namespace`, `-address`, `-publish-binary`, `-id`, `start`.
`start` prints the task socket's address (bare `unix://...` or containerd 1.7's JSON) and
returns; the server it spawned keeps running in its own process group. Grouped containers
(annotation `io.containerd.runc.v2.group` or `io.kubernetes.cri.sandbox-id`) get the
address of the shim already serving their group.

`delete` (same flags plus `-bundle`, cwd = bundle) is for a shim that is gone: it
force-deletes the runtime's container, unmounts the rootfs and prints a DeleteResponse.

Records (SQLite, table `shims`): written before `start` (phase "starting") so a runtime
killed between shim start and task create finds the orphan on restart, and moved to
"created" once the shim created the task.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from moorage.errdefs import Unavailable
from moorage.protowire import read_varint

from .contract import ExitInfo
from .runtimes import binary_for

__all__ = ["binary_for"]

SHIM_START_TIMEOUT = 10.0
SHIM_DELETE_TIMEOUT = 10.0


def parse_start_output(out: bytes) -> str:
    """The socket path from what `start` printed (bare address or JSON bootstrap)."""
    text = out.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise Unavailable(f"shim start printed invalid JSON: {text[:200]!r}") from None
        proto = doc.get("protocol", "ttrpc")
        if proto != "ttrpc":
            raise Unavailable(f"shim speaks {proto!r}, only ttrpc is supported")
        text = str(doc.get("address", ""))
    if text.startswith("unix://"):
        text = text[len("unix://"):]
    if not text.startswith("/"):
        raise Unavailable(f"shim start printed no address: {out[:200]!r}")
    return text


def parse_delete_response(data: bytes) -> ExitInfo:
    """containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 Timestamp}."""
    pid = status = 0
    exited = 0
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(data, i)
            if field == 1:
                pid = v
            elif field == 2:
                status = v
        elif wt == 2:
            n, i = read_varint(data, i)
            body = data[i:i + n]
            i += n
            if field == 3:
                secs = nanos = 0
                j = 0
                while j < len(body):
                    k, j = read_varint(body, j)
                    v, j = read_varint(body, j)
                    if k >> 3 == 1:
                        secs = v
                    elif k >> 3 == 2:
                        nanos = v
                exited = secs * 1_000_000_000 + nanos
        elif wt == 5:
            i += 4
        elif wt == 1:
            i += 8
        else:
            raise ValueError(f"bad wire type {wt}")
    return ExitInfo(pid=pid, exit_status=status, exited_at=exited)


@dataclass(frozen=True)
class ShimFlags:
    """What every shim invocation gets (containerd's -address / -publish-binary / env)."""

    address: str
    """Hashed into the shim socket name; the proxy's address."""
    ttrpc_address: str
    """TTRPC_ADDRESS: where the shim forwards events (the proxy serves Events.Forward)."""
    publish_binary: str = "moorage"
    debug: bool = False

    def args(self, binary: str, namespace: str, id: str) -> list[str]:
        out = [binary, "-namespace", namespace, "-address", self.address,
               "-publish-binary", self.publish_binary, "-id", id]
        if self.debug:
            out.append("-debug")
        return out

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS",
                                                                 "LISTEN_PID")}
        env["TTRPC_ADDRESS"] = self.ttrpc_address
        env["GOMAXPROCS"] = env.get("GOMAXPROCS", "2")
        return env


def _run(args: list[str], cwd: Path, env: dict[str, str], stdin: bytes,
         timeout: float) -> subprocess.CompletedProcess[bytes]:
    # stdlib subprocess in a thread: its pipes are O_CLOEXEC and close_fds is honoured, so
    # the shim server the `start` process leaves behind never holds our stdout open (with
    # uvloop's spawn it did, and reading to EOF hung until the shim exited).
    return subprocess.run(args, cwd=str(cwd), env=env, input=stdin, capture_output=True,
                          timeout=timeout, close_fds=True, check=False)


async def _exec(args: list[str], cwd: Path, env: dict[str, str], stdin: bytes,
                timeout: float, what: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return await asyncio.to_thread(_run, args, cwd, env, stdin, timeout)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what} timed out after {timeout}s") from None
    except OSError as exc:
        raise Unavailable(f"{what}: {exc}") from None


async def run_start(flags: ShimFlags, binary: str, namespace: str, id: str, bundle: Path,
                    options: bytes) -> str:
    """`<shim> ... start` in the bundle; the task socket path it printed."""
    r = await _exec([*flags.args(binary, namespace, id), "start"], bundle, flags.env(), options,
                    SHIM_START_TIMEOUT, f"{os.path.basename(binary)} start")
    if r.returncode != 0:
        msg = r.stderr.decode("utf-8", "replace").strip() or r.stdout.decode("utf-8", "replace").strip()
        raise Unavailable(f"{os.path.basename(binary)}: start failed: {msg}")
    return parse_start_output(r.stdout)


async def run_delete(flags: ShimFlags, binary: str, namespace: str, id: str,
                     bundle: Path) -> ExitInfo:
    """`<shim> ... -bundle B delete` for a shim that is gone: force-delete and unmount."""
    r = await _exec([*flags.args(binary, namespace, id), "-bundle", str(bundle), "delete"],
                    bundle, flags.env(), b"", SHIM_DELETE_TIMEOUT,
                    f"{os.path.basename(binary)} delete")
    if r.returncode != 0:
        raise Unavailable(f"shim delete failed: {r.stderr.decode('utf-8', 'replace').strip()}")
    try:
        return parse_delete_response(r.stdout)
    except ValueError as exc:
        raise Unavailable(f"shim delete printed an invalid response: {exc}") from None


def group_of(annotations: Mapping[str, str], id: str) -> str:
    for key in ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"):
        if annotations.get(key):
            return annotations[key]
    return id


@dataclass
class ShimRecord:
    namespace: str
    id: str
    runtime: str
    binary: str
    bundle: str
    address: str = ""
    phase: str = "starting"  # starting | created | pool (a pre-started shim, no task yet)
    logged: bool = False
    created_at: int = 0
    shim_bundle: str = ""
    """The directory the shim runs in when it is not `bundle` (a pre-started shim's own)."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS shims (
    namespace TEXT NOT NULL, id TEXT NOT NULL, runtime TEXT NOT NULL,
    binary TEXT NOT NULL, bundle TEXT NOT NULL, address TEXT NOT NULL,
    phase TEXT NOT NULL, logged INTEGER NOT NULL, created_at INTEGER NOT NULL,
    shim_bundle TEXT NOT NULL DEFAULT '', PRIMARY KEY (namespace, id)
);
"""


class ShimRecords:
    """The `shims` table: one row per task whose shim we started."""

    def __init__(self, db: sqlite3.Connection) -> None:
        """``db`` holds :data:`SCHEMA` (the runtime opens it with the container store)."""
        self._db = db

    def put(self, r: ShimRecord) -> None:
        if not r.created_at:
            r.created_at = time.time_ns()
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO shims VALUES (?,?,?,?,?,?,?,?,?,?)",
                (r.namespace, r.id, r.runtime, r.binary, r.bundle, r.address, r.phase,
                 int(r.logged), r.created_at, r.shim_bundle))

    def delete(self, namespace: str, id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM shims WHERE namespace=? AND id=?", (namespace, id))

    def all(self) -> list[ShimRecord]:
        rows = self._db.execute(
            "SELECT namespace, id, runtime, binary, bundle, address, phase, logged, created_at, "
            "shim_bundle FROM shims ORDER BY created_at").fetchall()
        return [ShimRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9])
                for r in rows]
