"""Bundles: the directory a shim runs in, one per task, as containerd 1.6 lays it out.

    <state>/bundles/<ns>/<id>/        0700, the shim's working directory
        config.json                   the OCI spec (the shim reads its annotations: grouping)
        rootfs/                       mount point; the shim mounts CreateTaskRequest.rootfs
        log                           fifo; the shim dup2's it onto its stderr (logrus log).
                                      It must exist with a reader or the shim dies at once.
        shim-binary-path              the shim binary, for `delete` after a crash
        work -> <root>/work/<ns>/<id> durable work dir (runc's checkpoint area etc.)
        io/                           fifos the runtime owns for logged stdio
        (the shim adds: address, init.pid, log.json, options.json, runtime)

`remove` unmounts whatever is still mounted under the bundle (lazily) before deleting it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

from moorage.errdefs import AlreadyExists, InvalidArgument

from .containers import validate_id


def mounted_under(path: Path) -> list[str]:
    """Mount points at or below `path` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path)
    out: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 5:
                    continue
                mp = fields[4].encode().decode("unicode_escape")
                if mp == prefix or mp.startswith(prefix + "/"):
                    out.append(mp)
    except OSError:
        return []
    return sorted(out, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    mounts = mounted_under(path)
    if not mounts:
        return
    from moorage import syscalls

    for mp in mounts:
        try:
            syscalls.umount2(mp, 2)  # MNT_DETACH
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise


class Bundle:
    """One bundle directory (see the module docstring)."""

    def __init__(self, path: Path, namespace: str, id: str) -> None:
        self.path = path
        self.namespace = namespace
        self.id = id

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def io_dir(self) -> Path:
        return self.path / "io"

    def spec(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.path / "config.json").read_bytes())
        return data

    def shim_binary(self) -> str:
        try:
            return (self.path / "shim-binary-path").read_text().strip()
        except OSError:
            return ""

    def shim_address(self) -> str:
        try:
            return (self.path / "address").read_text().strip()
        except OSError:
            return ""

    def init_pid(self) -> int:
        try:
            return int((self.path / "init.pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def open_log(self) -> int:
        """Open the `log` fifo for reading (O_RDWR: never EOF, never blocks the shim)."""
        return os.open(self.path / "log", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def remove(self, shim_unmounted: bool = False) -> None:
        """Unmount what is left under the bundle, remove it and its work dir. After a clean
        shim Delete (which unmounts the rootfs itself) only the rootfs is checked."""
        if not shim_unmounted or os.path.ismount(self.rootfs):
            unmount_all(self.path)
        work = self.path / "work"
        if work.is_symlink():
            target = Path(os.readlink(work))
            shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


class Bundles:
    """Where bundles live: `<state>/bundles/<ns>/<id>`, work dirs under `<root>/work`."""

    def __init__(self, state: Path, root: Path) -> None:
        self.state = state / "bundles"
        self.root = root / "work"
        for d in (self.state, self.root):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, namespace: str, id: str) -> Path:
        validate_id(namespace, "namespace")
        validate_id(id)
        return self.state / namespace / id

    def get(self, namespace: str, id: str) -> Bundle:
        return Bundle(self.path(namespace, id), namespace, id)

    def create(self, namespace: str, id: str, spec_json: bytes, shim_binary: str) -> Bundle:
        path = self.path(namespace, id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise AlreadyExists(f"bundle for {namespace}/{id}: already exists") from None
        b = Bundle(path, namespace, id)
        try:
            if not spec_json:
                raise InvalidArgument("spec is empty")
            (path / "config.json").write_bytes(spec_json)
            (path / "rootfs").mkdir(mode=0o711)
            (path / "io").mkdir(mode=0o700)
            os.mkfifo(path / "log", 0o600)
            (path / "shim-binary-path").write_text(shim_binary)
            work = self.root / namespace / id
            work.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(mode=0o711)
            os.symlink(work, path / "work")
        except BaseException:
            b.remove()
            raise
        return b

    def list(self) -> list[Bundle]:
        out: list[Bundle] = []
        if not self.state.is_dir():
            return out
        for ns_dir in sorted(self.state.iterdir()):
            if not ns_dir.is_dir():
                continue
            for d in sorted(ns_dir.iterdir()):
                if stat.S_ISDIR(d.lstat().st_mode):
                    out.append(Bundle(d, ns_dir.name, d.name))
        return out
