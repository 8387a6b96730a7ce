"""Confined application of an OCI layer (a tar changeset) onto a directory.

Semantics follow containerd 1.6 ``archive.Apply``: names are cleaned lexically (``..``
above the root clamps to the root), the parent path of every entry is resolved *inside*
the root (symlinks included, as ``fs.RootPath``), the final component is never followed,
an existing object is replaced unless both are directories (then merged), an entry that
resolves to the root itself is ignored, directory times are set last. Whiteouts: OCI
``.wh.<name>`` removes ``<name>`` (a symlink is removed, never its target) and
``.wh..wh..opq`` empties the directory of what earlier layers put there; in ``overlay``
mode (applying straight to an overlay upper dir) they become overlay whiteouts (a 0:0
character device) and ``trusted.overlay.opaque=y``. Malformed whiteouts (``.wh.``,
``.wh..``, ``.wh...``) are an invalid archive. ``trusted.overlay.*``/``user.overlay.*``
xattrs in the layer are dropped so a layer cannot forge overlay markers.

Confinement: every filesystem call is relative to a directory fd obtained by
``openat2(root_fd, parent, RESOLVE_IN_ROOT)`` (kernel-enforced; a per-component
``O_NOFOLLOW`` walk resolving symlinks in user space when the kernel lacks openat2), and
uses ``O_NOFOLLOW``/``AT_SYMLINK_NOFOLLOW`` or fd-based calls (fchown, fchmod, futimens,
fsetxattr) on what it just created. tarfile is not used; see ``tarreader``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from moorage import errdefs, syscalls

from .layerstream import LayerStream, Limits
from .tarreader import BLK, CHR, CONT, DIR, FIFO, LINK, REG, SYMLINK, Entry, TarReader

WHITEOUT = ".wh."
WHITEOUT_META = ".wh..wh."
OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_STRIPPED_XATTRS = ("trusted.overlay.", "user.overlay.")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CACHE_MAX = 256
WORKERS = 0  # sequential by default: on the hosts measured, threads did not pay (see README)
_ASYNC_MAX = 1 << 20  # files up to this size may be written by the worker threads
_PENDING_TASKS = 64
_PENDING_BYTES = 16 << 20
_EUID = os.geteuid()
_EGID = os.getegid()
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass(frozen=True)
class Applied:
    """Result of an apply: the uncompressed digest (diff id) and size, and entry count."""

    digest: str
    size: int
    entries: int
    compression: str


def _nothing() -> None:
    pass


def clean(name: str) -> list[str]:
    """Lexical clean of an archive name into components; ``..`` at the top is dropped."""
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def _invalid(msg: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"invalid archive: {msg}")


def _os_error(exc: OSError, name: str) -> errdefs.Error:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errdefs.ResourceExhausted(f"apply {name!r}: {exc.strerror}")
    return _invalid(f"{name!r}: {exc.strerror}")


class Root:
    """Directory fds inside one root, resolved confined; a small cache of parent dirs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
        self._cache: dict[str, int] = {}
        self._openat2 = syscalls.has_openat2()
        self._idents: dict[int, tuple[int, int]] = {}
        self.before_close: Callable[[], None] = _nothing
        """Called before any cached fd is closed (the applier drains its writers)."""

    def close(self) -> None:
        self.before_close()
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.fd)

    def forget(self, rel: str) -> None:
        """Drop cached fds for ``rel`` and everything below it (it was removed/replaced)."""
        if not self._cache:
            return
        prefix = rel + "/"
        keys = [k for k in self._cache if k == rel or k.startswith(prefix)]
        if keys:
            self.before_close()
        for key in keys:
            fd = self._cache.pop(key)
            self._idents.pop(fd, None)
            os.close(fd)

    def remember(self, rel: str, fd: int) -> None:
        if len(self._cache) >= _CACHE_MAX:
            self.before_close()
            for old in self._cache.values():
                os.close(old)
            self._cache.clear()
            self._idents.clear()
        if rel in self._cache:
            self.before_close()
            old_fd = self._cache.pop(rel)
            self._idents.pop(old_fd, None)
            os.close(old_fd)
        self._cache[rel] = fd

    def open_in_root(self, rel: str, flags: int = _DIR_FLAGS) -> int:
        """Open ``rel`` resolved inside the root (symlinks followed, clamped at the root)."""
        if not rel:
            return os.dup(self.fd)
        if self._openat2:
            return syscalls.openat2(
                self.fd, rel, flags, 0, syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
            )
        return self._walk(rel, flags)

    def _walk(self, rel: str, flags: int, create: bool = False) -> int:
        """User-space RESOLVE_IN_ROOT: one O_NOFOLLOW component at a time; ``create``
        makes missing directories (0755) on the way, through symlinks as containerd."""
        todo = rel.split("/")
        stack: list[int] = []
        cur = self.fd
        hops = 0
        try:
            while todo:
                part = todo.pop(0)
                if part in ("", "."):
                    continue
                if part == "..":
                    if stack:
                        os.close(cur)
                        cur = stack.pop()
                    continue
                last = not todo
                try:
                    nfd = os.open(part, (flags if last else _DIR_FLAGS) | os.O_NOFOLLOW, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=cur)
                    except FileExistsError:
                        pass
                    todo.insert(0, part)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or (
                        last and flags & os.O_NOFOLLOW
                    ):
                        raise
                    try:
                        target = os.readlink(part, dir_fd=cur)
                    except OSError:
                        raise exc from None
                    hops += 1
                    if hops > 40:
                        raise OSError(errno.ELOOP, "too many symlinks", rel) from None
                    if target.startswith("/"):
                        while stack:
                            os.close(cur)
                            cur = stack.pop()
                    todo[:0] = target.split("/")
                    continue
                stack.append(cur)
                cur = nfd
            if cur == self.fd:
                return os.dup(cur)
            result, cur = cur, self.fd
            return result
        finally:
            if cur != self.fd:
                os.close(cur)
            for fd in stack:
                if fd != self.fd:
                    os.close(fd)

    def parent(self, comps: Sequence[str], create: bool) -> int:
        """A (cached, not to be closed) fd of the directory ``comps`` inside the root."""
        if not comps:
            return self.fd
        rel = "/".join(comps)
        fd = self._cache.get(rel)
        if fd is not None:
            return fd
        try:
            fd = self.open_in_root(rel)
        except OSError:
            # in-flight writes may be what is missing or in the way: settle, then decide
            self.before_close()
            try:
                fd = self.open_in_root(rel)
            except FileNotFoundError:
                if not create:
                    raise
                fd = self._walk(rel, _DIR_FLAGS, create=True)
        self.remember(rel, fd)
        return fd

    def ident(self, fd: int) -> tuple[int, int]:
        """(st_dev, st_ino) of a cached directory fd (or the root's)."""
        found = self._idents.get(fd)
        if found is None:
            st = os.fstat(fd)
            found = self._idents[fd] = (st.st_dev, st.st_ino)
        return found


class Applier:
    """Applies one layer stream; ``overlay=True`` writes overlay whiteouts/opaque markers
    (the target is an overlay upper dir; ``lowers`` are its lower dirs, topmost first)."""

    def __init__(
        self,
        root: str,
        *,
        overlay: bool = False,
        lowers: Sequence[str] = (),
        limits: Limits | None = None,
        workers: int | None = None,
    ) -> None:
        self.root = Root(root)
        self.overlay = overlay
        self.lowers = list(lowers)
        self.limits = limits or Limits()
        self._dirs: list[tuple[str, int, int]] = []
        self._unpacked: set[str] | None = None if overlay else set()
        # new small files are written by worker threads; the parsing thread keeps archive
        # order by settling (waiting for) in-flight writes before any entry that touches
        # their paths, their parent dirs, or closes a directory fd they use
        workers = WORKERS if workers is None else workers
        self._pool = ThreadPoolExecutor(workers, "layer-write") if workers > 0 else None
        self._inflight: dict[tuple[int, int, str], int] = {}
        self._queue: deque[tuple[Future[bool], int, str, str, Entry, bytes]] = deque()
        self._queued_bytes = 0
        self._draining = False
        self.root.before_close = self._drain

    def close(self) -> None:
        try:
            self._drain(errors=False)
        finally:
            self.root.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def apply(self, stream: LayerStream) -> Applied:
        reader = TarReader(stream, self.limits)
        try:
            while True:
                entry = reader.next()
                if entry is None:
                    break
                self._entry(entry, reader)
            self._drain()
            self._finish_dirs()
            digest, size = stream.finish()
        except BaseException:
            self._drain(errors=False)
            stream.close()
            raise
        return Applied(digest, size, reader.entries, stream.compression)

    # in-flight writes -----------------------------------------------------------------
    def _settle(self, pfd: int, base: str) -> None:
        """Wait for the writers if ``base`` in ``pfd`` is being written (by any alias)."""
        if self._inflight and (*self.root.ident(pfd), base) in self._inflight:
            self._drain()

    def _drain(self, errors: bool = True) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            first: BaseException | None = None
            while self._queue:
                try:
                    self._collect()
                except BaseException as exc:
                    if first is None:
                        first = exc
            if first is not None and errors:
                raise first
        finally:
            self._draining = False

    def _collect(self) -> None:
        fut, pfd, base, rel, e, data = self._queue.popleft()
        self._queued_bytes -= len(data)
        self._track(pfd, base, -1)
        try:
            created = fut.result()
            if not created:
                # something was there: replace it here, once no writer uses any dir fd
                for item in self._queue:
                    item[0].exception()
                self._file(pfd, base, rel, e, None, data)
        except OSError as exc:
            raise _os_error(exc, e.name) from None

    def _track(self, pfd: int, base: str, delta: int) -> None:
        key = (*self.root.ident(pfd), base)
        n = self._inflight.get(key, 0) + delta
        if n:
            self._inflight[key] = n
        else:
            del self._inflight[key]

    def _submit(self, pfd: int, base: str, rel: str, e: Entry, data: bytes) -> None:
        assert self._pool is not None
        fut = self._pool.submit(self._write_new, pfd, base, e, data)
        self._queue.append((fut, pfd, base, rel, e, data))
        self._queued_bytes += len(data)
        self._track(pfd, base, 1)
        while len(self._queue) > _PENDING_TASKS or self._queued_bytes > _PENDING_BYTES:
            self._collect()

    def _write_new(self, pfd: int, base: str, e: Entry, data: bytes) -> bool:
        """Worker: create ``base`` (must not exist) with ``data`` and ``e``'s metadata."""
        owned = e.uid == _EUID and e.gid == _EGID
        final = owned and not e.mode & _UMASK
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(base, flags, e.mode if final else 0o600, dir_fd=pfd)
        except FileExistsError:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._meta_fd(fd, e, chmod=not final)
        finally:
            os.close(fd)
        return True

    # entries --------------------------------------------------------------------------
    def _entry(self, e: Entry, reader: TarReader) -> None:
        comps = clean(e.name)
        if not comps:
            return  # resolves to the root: ignored, as containerd
        base = comps[-1]
        rel = "/".join(comps)
        if e.type not in (REG, CONT, LINK, SYMLINK, CHR, BLK, DIR, FIFO):
            raise _invalid(f"unsupported entry type {e.type!r} for {e.name!r}")
        if base.startswith(WHITEOUT):
            self._whiteout(comps, e)
            return
        if e.type == LINK:
            self._drain()
        try:
            pfd = self.root.parent(comps[:-1], create=True)
            self._settle(pfd, base)
            if e.type in (REG, CONT):
                if self._pool is not None and e.size <= _ASYNC_MAX:
                    data = reader.read_data()
                    self._submit(pfd, base, rel, e, data)
                else:
                    self._file(pfd, base, rel, e, reader)
            elif e.type == DIR:
                self._dir(pfd, base, rel, e)
            elif e.type == SYMLINK:
                self._replace(pfd, base, rel, False)
                os.symlink(e.linkname, base, dir_fd=pfd)
                self._meta_nofollow(pfd, base, e)
            elif e.type == LINK:
                self._hardlink(pfd, base, rel, e)
            else:
                self._replace(pfd, base, rel, False)
                kind = {CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, FIFO: stat.S_IFIFO}[e.type]
                os.mknod(base, kind | 0o600, os.makedev(e.devmajor, e.devminor), dir_fd=pfd)
                self._meta_path(pfd, base, e)
        except OSError as exc:
            raise _os_error(exc, e.name) from None
        if self._unpacked is not None:
            self._unpacked.add(rel)

    def _replace(self, pfd: int, base: str, rel: str, is_dir: bool) -> bool:
        """Remove whatever is at ``base`` unless both are dirs; True if a dir is kept."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode) and is_dir:
            return True
        self._drain()  # no writer may be working below what goes away
        self.root.forget(rel)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        return False

    def _file(
        self, pfd: int, base: str, rel: str, e: Entry, reader: TarReader | None, data: bytes = b""
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        # created with its final mode when nothing (umask, a later chown) would change it
        owned = e.uid == _EUID and e.gid == _EGID
        final = owned and not e.mode & _UMASK
        mode = e.mode if final else 0o600
        try:
            fd = os.open(base, flags, mode, dir_fd=pfd)
        except FileExistsError:
            self._replace(pfd, base, rel, False)
            fd = os.open(base, flags, mode, dir_fd=pfd)
        try:
            if reader is not None:
                if e.size:
                    reader.data_to(fd)
            else:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            self._meta_fd(fd, e, chmod=not final)
        finally:
            os.close(fd)

    def _dir(self, pfd: int, base: str, rel: str, e: Entry) -> None:
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not self._replace(pfd, base, rel, True):
                os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=pfd)
        try:
            self._meta_fd(fd, e, times=False)
        except BaseException:
            os.close(fd)
            raise
        self.root.remember(rel, fd)
        self._dirs.append((rel, e.atime_ns if e.atime_ns is not None else e.mtime_ns, e.mtime_ns))

    def _hardlink(self, pfd: int, base: str, rel: str, e: Entry) -> None:
        tcomps = clean(e.linkname)
        if not tcomps:
            raise _invalid(f"hard link {e.name!r} to the root")
        trel = "/".join(tcomps)
        if trel == rel:
            return
        try:
            tpfd = self.root.parent(tcomps[:-1], create=False)
            os.stat(tcomps[-1], dir_fd=tpfd, follow_symlinks=False)
        except FileNotFoundError:
            if not (self.overlay and self._copy_up(tcomps)):
                raise _invalid(f"hard link {e.name!r} to missing {e.linkname!r}") from None
            tpfd = self.root.parent(tcomps[:-1], create=False)
        self._replace(pfd, base, rel, False)
        os.link(tcomps[-1], base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _copy_up(self, comps: list[str]) -> bool:
        """Overlay: a hard link to a file of a lower layer copies it into the upper dir."""
        rel = "/".join(comps)
        for lower in self.lowers:
            lroot = Root(lower)
            try:
                try:
                    sfd = lroot.open_in_root(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    st = os.fstat(sfd)
                    if not stat.S_ISREG(st.st_mode):
                        return False
                    self._copy_parents(lroot, comps[:-1])
                    pfd = self.root.parent(comps[:-1], create=True)
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    dfd = os.open(comps[-1], flags, 0o600, dir_fd=pfd)
                    try:
                        while os.copy_file_range(sfd, dfd, 1 << 30):
                            pass
                        os.fchown(dfd, st.st_uid, st.st_gid)
                        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(dfd)
                    return True
                finally:
                    os.close(sfd)
            finally:
                lroot.close()
        return False

    def _copy_parents(self, lroot: Root, comps: list[str]) -> None:
        for i in range(1, len(comps) + 1):
            pfd = self.root.parent(comps[: i - 1], create=True)
            try:
                os.stat(comps[i - 1], dir_fd=pfd, follow_symlinks=False)
                continue
            except FileNotFoundError:
                pass
            lfd = lroot.open_in_root("/".join(comps[:i]))
            try:
                st = os.fstat(lfd)
            finally:
                os.close(lfd)
            os.mkdir(comps[i - 1], 0o700, dir_fd=pfd)
            fd = os.open(comps[i - 1], _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=pfd)
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            finally:
                os.close(fd)

    # whiteouts ------------------------------------------------------------------------
    def _whiteout(self, comps: list[str], e: Entry) -> None:
        base = comps[-1]
        parent = comps[:-1]
        if base == OPAQUE:
            self._opaque(parent, e)
            return
        if base.startswith(WHITEOUT_META):
            return  # AUFS metadata (.wh..wh.plnk etc.): not part of the changeset
        target = base[len(WHITEOUT) :]
        if target in ("", ".", "..") or "/" in target:
            raise _invalid(f"invalid whiteout name {e.name!r}")
        rel = "/".join(parent + [target])
        try:
            pfd = self.root.parent(parent, create=self.overlay)
            self._settle(pfd, target)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing to remove
        except OSError as exc:
            raise _os_error(exc, e.name) from None
        try:
            self._replace(pfd, target, rel, False)
            if self.overlay:
                os.mknod(target, stat.S_IFCHR | 0o600, 0, dir_fd=pfd)
                os.chown(target, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise _os_error(exc, e.name) from None
        if self._unpacked is not None:
            self._unpacked.discard(rel)

    def _opaque(self, parent: list[str], e: Entry) -> None:
        rel = "/".join(parent)
        if not self.overlay:
            self._drain()  # removes what earlier entries wrote
        try:
            pfd = self.root.parent(parent, create=self.overlay)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _os_error(exc, e.name) from None
        try:
            if self.overlay:
                os.setxattr(f"/proc/self/fd/{pfd}", OVERLAY_OPAQUE_XATTR, b"y")
            else:
                self._clear(pfd, rel)
        except OSError as exc:
            raise _os_error(exc, e.name) from None

    def _clear(self, dfd: int, rel: str) -> None:
        """OCI opaque: remove what this layer did not write under ``rel``."""
        unpacked = self._unpacked or set()
        for name in os.listdir(dfd):
            child = f"{rel}/{name}" if rel else name
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if child in unpacked:
                if stat.S_ISDIR(st.st_mode):
                    cfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dfd)
                    try:
                        self._clear(cfd, child)
                    finally:
                        os.close(cfd)
                continue
            self.root.forget(child)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)

    # metadata -------------------------------------------------------------------------
    def _xattrs(self, e: Entry) -> Iterator[tuple[str, bytes]]:
        for name, value in e.xattrs.items():
            if name.startswith(_STRIPPED_XATTRS):
                continue
            yield name, value

    def _meta_fd(self, fd: int, e: Entry, times: bool = True, chmod: bool = True) -> None:
        if e.uid != _EUID or e.gid != _EGID:
            os.fchown(fd, e.uid, e.gid)
        if chmod:
            os.fchmod(fd, e.mode)
        for name, value in self._xattrs(e):
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
        if times:
            atime = e.atime_ns if e.atime_ns is not None else e.mtime_ns
            os.utime(fd, ns=(max(atime, e.mtime_ns), e.mtime_ns))

    def _meta_nofollow(self, pfd: int, base: str, e: Entry) -> None:
        if e.uid != _EUID or e.gid != _EGID:
            os.chown(base, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        for name, value in self._xattrs(e):
            try:
                os.setxattr(f"/proc/self/fd/{pfd}/{base}", name, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
        atime = e.atime_ns if e.atime_ns is not None else e.mtime_ns
        os.utime(base, ns=(max(atime, e.mtime_ns), e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def _meta_path(self, pfd: int, base: str, e: Entry) -> None:
        """Metadata of a node we just created (device, fifo) through an O_PATH fd."""
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            path = f"/proc/self/fd/{fd}"
            os.chown(path, e.uid, e.gid)
            os.chmod(path, e.mode)
            for name, value in self._xattrs(e):
                try:
                    os.setxattr(path, name, value)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                        raise
            atime = e.atime_ns if e.atime_ns is not None else e.mtime_ns
            os.utime(path, ns=(max(atime, e.mtime_ns), e.mtime_ns))
        finally:
            os.close(fd)

    def _finish_dirs(self) -> None:
        for rel, atime, mtime in reversed(self._dirs):
            try:
                fd = self.root.open_in_root(rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue  # removed or replaced later in the layer
            try:
                os.utime(f"/proc/self/fd/{fd}", ns=(max(atime, mtime), mtime))
            finally:
                os.close(fd)


def apply_layer(
    root: str,
    chunks: Iterator[bytes],
    *,
    overlay: bool = False,
    lowers: Sequence[str] = (),
    limits: Limits | None = None,
    workers: int | None = None,
) -> Applied:
    """Apply a (possibly compressed) layer given as compressed chunks onto ``root``."""
    limits = limits or Limits()
    stream = LayerStream(chunks, limits)
    applier = Applier(root, overlay=overlay, lowers=lowers, limits=limits, workers=workers)
    try:
        return applier.apply(stream)
    finally:
        applier.close()
        stream.close()


def file_chunks(path: str, size: int = 1 << 20) -> Iterator[bytes]:
    """Chunks of a local file (tests, benches, local tools)."""
    with open(path, "rb") as f:
        while True:
            data = f.read(size)
            if not data:
                return
            yield data


__all__ = ["Applied", "Applier", "Root", "apply_layer", "clean", "file_chunks"]
