"""Persistent network namespaces: create, bind-mount, remove, list.

A namespace is a file in a directory (``/var/run/netns`` by default, so ``ip netns exec``
sees it) onto which a fresh network namespace is bind-mounted, as containerd's pkg/netns
and iproute2 do. Creation happens on a dedicated, short-lived thread: the thread unshares
its network namespace (namespaces belong to threads), brings ``lo`` up inside it and
bind-mounts ``/proc/thread-self/ns/net`` onto the file, then exits; no other thread of the
process ever changes namespace. Removal detaches the mount and unlinks the file; removing a
path that is already gone is not an error (teardown is idempotent).

Unlike ``ip netns add`` the directory is not turned into a shared mount of itself: like
containerd, nothing is mounted but the namespace files, so nothing else is left behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
NSFS_MAGIC = 0x6E736673
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]

def _check(rc: int, what: str, path: str | None = None) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _mount(source: str, target: str, flags: int) -> None:
    _check(_libc.mount(source.encode(), target.encode(), b"none", flags, None), "mount", target)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _bind_new_netns(path: str) -> None:
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    _loopback_up()
    _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, MS_BIND)


def create(path: str) -> None:
    """Create a new network namespace bind-mounted at ``path`` (which must not exist).

    ``lo`` is up inside it. On failure nothing is left at ``path``.
    """
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _bind_new_netns(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="netns-create", daemon=True)
    worker.start()
    worker.join()
    if failure:
        remove(path)
        raise failure[0]


def is_netns(path: str) -> bool:
    """Whether ``path`` is a mounted network namespace (an nsfs file)."""
    try:
        return _fs_magic(path) == NSFS_MAGIC
    except OSError:
        return False


def _fs_magic(path: str) -> int:
    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]

    buf = _Statfs()
    _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
    _check(_libc.statfs(path.encode(), ctypes.byref(buf)), "statfs", path)
    return int(buf.f_type) & 0xFFFFFFFF


def remove(path: str) -> None:
    """Unmount and unlink ``path``; a missing path or a path no longer mounted is fine."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {path}: {os.strerror(err)}", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def listdir(directory: str, prefix: str) -> list[str]:
    """Paths in ``directory`` whose file name starts with ``prefix``, sorted."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.startswith(prefix))
