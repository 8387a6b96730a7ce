"""File locks shared by every process on one content root.

A lock is flock(2) on ``<root>/locks/<name>``: held per open file description, so two store
instances in one process exclude each other as two processes do, and the kernel drops it
when its holder dies (kill -9 included). The lock file is unlinked on release; a taker
re-checks after locking that the path still names the inode it locked, so an unlink racing a
take can never leave two holders.
"""

from __future__ import annotations

import errno
import fcntl
import os
from types import TracebackType

from moorage.errdefs import Unavailable


class FileLock:
    """One held lock. Release exactly once (``release`` or the context manager)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: str, *, blocking: bool, what: str = "") -> FileLock:
        """Take the lock at ``path``; non-blocking raises Unavailable when it is held."""
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, flags)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise Unavailable(f"{what or path} locked") from None
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
