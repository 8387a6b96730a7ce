"""Read small files of a container's rootfs before it is mounted (for /etc/passwd, /etc/group).

The rootfs is described by its mounts (a bind of a directory, or overlay upper/lower dirs).
Every read is confined to one layer directory with openat2(RESOLVE_IN_ROOT) (symlinks and
`..` resolve inside the layer) and bounded in size: the image is untrusted.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing costs `moor run` ~15 ms)
    from collections.abc import Sequence
    from typing import Protocol

    class Mount(Protocol):
        """Anything shaped like a mount: contract.Mount or a containerd.types.Mount message."""

        @property
        def type(self) -> str: ...

        @property
        def source(self) -> str: ...

        @property
        def options(self) -> Sequence[str]: ...


MAX_FILE = 1 << 20


def layer_dirs(mounts: Sequence[Mount]) -> list[str]:
    """The directories to search, topmost first."""
    dirs: list[str] = []
    for m in mounts:
        if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
            dirs.insert(0, m.source)
        elif m.type == "overlay":
            upper = ""
            lowers: list[str] = []
            for o in m.options:
                if o.startswith("upperdir="):
                    upper = o[len("upperdir="):]
                elif o.startswith("lowerdir="):
                    lowers = o[len("lowerdir="):].split(":")
            dirs[:0] = ([upper] if upper else []) + lowers
    return [d for d in dirs if d]


def _read_in(root: str, rel: str) -> bytes | None:
    from moorage import syscalls

    try:
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if syscalls.has_openat2():
            fd = syscalls.openat2(dfd, rel, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, 0,
                                  syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS)
        else:
            fd = os.open(rel, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        import stat

        if not stat.S_ISREG(st.st_mode):
            return None
        return os.read(fd, MAX_FILE)
    finally:
        os.close(fd)


def reader(mounts: Sequence[Mount]) -> "RootfsFiles":
    return RootfsFiles(layer_dirs(mounts))


class RootfsFiles:
    """Callable `(relative path) -> bytes | None`, the topmost layer holding it wins."""

    def __init__(self, dirs: Sequence[str]) -> None:
        self.dirs = list(dirs)

    def __call__(self, rel: str) -> bytes | None:
        rel = rel.lstrip("/")
        for d in self.dirs:
            data = _read_in(d, rel)
            if data is not None:
                return data
        return None
