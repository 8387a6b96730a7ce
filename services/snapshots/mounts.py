"""Performing ``Mount`` records (containerd's ``mount.Mount.Mount``/``UnmountAll``).

Options split as containerd's ``parseMountOptions``: known flag words (``ro``, ``rbind``,
``nosuid``...) become mount(2) flags, the rest is the data string (overlay's
``lowerdir=...``). A read-only bind is a bind followed by a read-only remount. Blocking;
no asyncio, so ``moor snapshots mount`` can use it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from moorage import syscalls

from .contract import Mount

_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, syscalls.MS_SYNCHRONOUS),
    "atime": (True, syscalls.MS_NOATIME),
    "bind": (False, syscalls.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, syscalls.MS_NODEV),
    "diratime": (True, syscalls.MS_NODIRATIME),
    "dirsync": (False, syscalls.MS_DIRSYNC),
    "exec": (True, syscalls.MS_NOEXEC),
    "mand": (False, syscalls.MS_MANDLOCK),
    "noatime": (False, syscalls.MS_NOATIME),
    "nodev": (False, syscalls.MS_NODEV),
    "nodiratime": (False, syscalls.MS_NODIRATIME),
    "noexec": (False, syscalls.MS_NOEXEC),
    "nomand": (True, syscalls.MS_MANDLOCK),
    "norelatime": (True, syscalls.MS_RELATIME),
    "nostrictatime": (True, syscalls.MS_STRICTATIME),
    "nosuid": (False, syscalls.MS_NOSUID),
    "rbind": (False, syscalls.MS_BIND | syscalls.MS_REC),
    "relatime": (False, syscalls.MS_RELATIME),
    "remount": (False, syscalls.MS_REMOUNT),
    "ro": (False, syscalls.MS_RDONLY),
    "rw": (True, syscalls.MS_RDONLY),
    "strictatime": (False, syscalls.MS_STRICTATIME),
    "suid": (True, syscalls.MS_NOSUID),
    "sync": (False, syscalls.MS_SYNCHRONOUS),
}


def parse_options(options: Sequence[str]) -> tuple[int, str]:
    flags = 0
    data: list[str] = []
    for opt in options:
        known = _FLAGS.get(opt)
        if known is None:
            data.append(opt)
            continue
        clear, flag = known
        if clear:
            flags &= ~flag
        else:
            flags |= flag
    return flags, ",".join(data)


def mount(m: Mount, target: str) -> None:
    """Perform one mount onto ``target``."""
    flags, data = parse_options(m.options)
    bind = flags & syscalls.MS_BIND
    syscalls.mount(m.source, target, m.type if not bind else None, flags & ~syscalls.MS_RDONLY if bind else flags, data or None)
    if bind and flags & syscalls.MS_RDONLY:
        syscalls.mount(
            None, target, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY | (flags & syscalls.MS_REC), None
        )


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount every record onto ``target`` in order (later ones on top)."""
    done = 0
    try:
        for m in mounts:
            mount(m, os.path.join(target, m.target.lstrip("/")) if m.target else target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount_all(target)
        raise


def unmount_all(target: str) -> None:
    """Unmount everything stacked on ``target`` (lazily if busy)."""
    while True:
        try:
            syscalls.umount2(target, 0)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return  # not a mount point (any more)
            if exc.errno == errno.EBUSY:
                syscalls.umount2(target, syscalls.MNT_DETACH)
                continue
            if exc.errno == errno.ENOENT:
                return
            raise


def read_only(mounts: Sequence[Mount]) -> list[Mount]:
    """The same mounts made read-only (for diffing and viewing)."""
    out: list[Mount] = []
    for m in mounts:
        opts = [o for o in m.options if o not in ("rw", "ro")]
        if m.type == "overlay":
            upper = [o for o in opts if o.startswith("upperdir=")]
            lowers = [o for o in opts if o.startswith("lowerdir=")]
            rest = [o for o in opts if not o.startswith(("upperdir=", "workdir=", "lowerdir="))]
            if upper:
                lowerdirs = [upper[0][len("upperdir=") :]]
                if lowers:
                    lowerdirs.append(lowers[0][len("lowerdir=") :])
                opts = [*rest, "lowerdir=" + ":".join(lowerdirs)]
        out.append(Mount(m.type, m.source, (*opts, "ro"), m.target))
    return out
