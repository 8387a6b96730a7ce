"""The one module for Linux syscalls the standard library lacks.

cffi in ABI mode (``dlopen`` of the C library already loaded into the interpreter), so
nothing is compiled at install time. Every wrapper raises ``OSError`` with the errno of the
failed call (``OSError.filename`` set where a path is involved), exactly as the ``os``
module does, and releases nothing it did not acquire.

What is here and who uses it:

- ``openat2(dirfd, path, flags, mode, resolve)``: path resolution with kernel-enforced
  confinement (``RESOLVE_IN_ROOT``: ``/`` and ``..`` and absolute symlinks stay inside
  ``dirfd``; ``RESOLVE_BENEATH``: any escape fails with EXDEV; ``RESOLVE_NO_SYMLINKS``: any
  symlink fails with ELOOP). Linux >= 5.6; ``has_openat2()`` says whether the running kernel
  has it. Layer extraction (services/snapshots) relies on it.
- ``mount(source, target, fstype, flags, data)`` and ``umount2(target, flags)``: the raw
  mount(2)/umount2(2); ``MS_*`` / ``MNT_*`` constants below.
- ``setns(fd, nstype)``: join the namespace an fd refers to (``CLONE_NEW*`` constants).
  Note: a thread's namespaces change, not the process's; callers that need a whole process
  in a namespace do it in a child.
"""

from __future__ import annotations

import os
from typing import Any

import cffi

__all__ = [
    "openat2",
    "has_openat2",
    "mount",
    "umount2",
    "setns",
    "RESOLVE_NO_XDEV",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_BENEATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_CACHED",
]

# openat2(2) resolve flags (linux/openat2.h)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

# mount(2) flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# setns(2) namespace types (linux/sched.h); 0 = any
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# The generic syscall table gives openat2 the same number on every architecture.
_SYS_openat2 = 437

_ffi = cffi.FFI()
_ffi.cdef(
    """
    struct open_how { uint64_t flags; uint64_t mode; uint64_t resolve; };
    long syscall(long number, ...);
    int mount(const char *source, const char *target, const char *filesystemtype,
              unsigned long mountflags, const void *data);
    int umount2(const char *target, int flags);
    int setns(int fd, int nstype);
    """
)
_libc: Any = _ffi.dlopen(None)


def _raise(path: str | None = None) -> None:
    err = _ffi.errno
    raise OSError(err, os.strerror(err), path)


def _cstr(value: str | bytes | None) -> Any:
    if value is None:
        return _ffi.NULL
    return os.fsencode(value)


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Open ``path`` relative to ``dirfd`` under ``resolve`` rules; returns a new fd.

    ``flags`` are ``os.O_*`` (O_CLOEXEC is always added); ``mode`` only with O_CREAT or
    O_TMPFILE (the kernel rejects a mode otherwise). Raises ``OSError`` (ENOSYS when the
    kernel lacks openat2, EXDEV/ELOOP on a refused resolution, EAGAIN with RESOLVE_CACHED).
    """
    how = _ffi.new("struct open_how *")
    how.flags = flags | os.O_CLOEXEC
    how.mode = mode
    how.resolve = resolve
    cpath = os.fsencode(path)
    cbuf = _ffi.new("char[]", cpath)
    while True:
        fd = int(
            _libc.syscall(
                _ffi.cast("long", _SYS_openat2),
                _ffi.cast("int", dirfd),
                cbuf,
                how,
                _ffi.cast("size_t", _ffi.sizeof("struct open_how")),
            )
        )
        if fd >= 0:
            return fd
        if _ffi.errno != 4:  # EINTR: retry, as os.open does
            _raise(os.fsdecode(cpath))


_has_openat2: bool | None = None


def has_openat2() -> bool:
    """Whether the running kernel implements openat2 (probed once, cached)."""
    global _has_openat2
    if _has_openat2 is None:
        try:
            os.close(openat2(-100, "/", os.O_PATH | os.O_DIRECTORY, 0, RESOLVE_IN_ROOT))
            _has_openat2 = True
        except OSError:
            _has_openat2 = False
    return _has_openat2


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2). ``data`` is the comma-joined option string (e.g. overlay's lowerdir=...)."""
    if _libc.mount(_cstr(source), _cstr(target), _cstr(fstype), flags, _cstr(data)) != 0:
        _raise(target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2); ``MNT_DETACH`` for a lazy unmount."""
    if _libc.umount2(_cstr(target), flags) != 0:
        _raise(target)


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): move the calling thread into the namespace ``fd`` refers to."""
    if _libc.setns(fd, nstype) != 0:
        _raise()
