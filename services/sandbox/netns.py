"""Persistent network namespaces: create, bind-mount, remove, list.

A namespace is a file in a directory (``/var/run/netns`` by default, so ``ip netns exec``
sees it) onto which a fresh network namespace is bind-mounted, as containerd's pkg/netns
and iproute2 do. Creation happens on a dedicated, short-lived thread: the thread unshares
its network namespace (namespaces belong to threads), brings ``lo`` up inside it and
bind-mounts ``/proc/self/task/<tid>/ns/net`` onto the file, then exits; no other thread of
the process ever changes namespace. Removal detaches the mount and unlinks the file;
removing a path that is already gone is not an error (teardown is idempotent).

Unlike ``ip netns add`` the directory is not turned into a shared mount of itself: like
containerd, nothing is mounted but the namespace files, so nothing else is left behind.
mount/umount2 come from :mod:`moorage.syscalls`; unshare(2), which it lacks, is called
through ctypes here.
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

from moorage import syscalls

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]


def _unshare_net() -> None:
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _bind_new_netns(path: str) -> None:
    _unshare_net()
    _loopback_up()
    syscalls.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, "none", syscalls.MS_BIND)


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
    """Whether ``path`` is a mounted namespace (a file of the nsfs filesystem)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def remove(path: str) -> None:
    """Unmount and unlink ``path``; a missing path or a path no longer mounted is fine."""
    try:
        syscalls.umount2(path, syscalls.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
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
