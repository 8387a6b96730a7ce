"""Computing a layer between two directory trees (containerd's ``fs.Changes`` + ``WriteDiff``).

A double walk of ``lower`` and ``upper`` in name order: an entry only in ``upper``, or
different from its ``lower`` counterpart (type, mode, owner, size and mtime for files,
target for symlinks, device numbers), is written; an entry only in ``lower`` becomes an OCI
whiteout ``.wh.<name>`` (its subtree is not visited). Directories are compared by mode and
owner and written before any changed child, as containerd's ``includeParents``. Files with
several links are written once, later names as hard links. Both trees are trusted (our own
snapshots); tarfile is used only to *write*.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
import zlib
from typing import BinaryIO


class _Sink:
    """What tarfile writes to: hashes the tar (the diff id), optionally gzips it."""

    def __init__(self, out: BinaryIO, gzip: bool) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.z = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        self.offset = 0

    def tell(self) -> int:
        return self.offset

    def write(self, data: bytes) -> int:
        self.offset += len(data)
        self.hash.update(data)
        self.out.write(self.z.compress(data) if self.z else data)
        return len(data)

    def close(self) -> None:
        if self.z is not None:
            self.out.write(self.z.flush())


def _same(a: os.stat_result, b: os.stat_result, apath: str, bpath: str) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
        return False
    if a.st_mode != b.st_mode or a.st_uid != b.st_uid or a.st_gid != b.st_gid:
        return False
    if stat.S_ISDIR(b.st_mode):
        return True
    if stat.S_ISLNK(b.st_mode):
        return os.readlink(apath) == os.readlink(bpath)
    if stat.S_ISCHR(b.st_mode) or stat.S_ISBLK(b.st_mode):
        return a.st_rdev == b.st_rdev
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def _scan(path: str | None) -> dict[str, os.stat_result]:
    if path is None:
        return {}
    out: dict[str, os.stat_result] = {}
    with os.scandir(path) as it:
        for e in it:
            out[e.name] = e.stat(follow_symlinks=False)
    return out


class _Writer:
    def __init__(self, tf: tarfile.TarFile, upper: str) -> None:
        self.tf = tf
        self.upper = upper
        self.emitted: set[str] = {""}
        self.links: dict[tuple[int, int], str] = {}
        self.now = time.time()

    def _parents(self, rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.emitted:
                self._emit(p, os.lstat(os.path.join(self.upper, p)))

    def _emit(self, rel: str, st: os.stat_result) -> None:
        self._parents(rel)
        path = os.path.join(self.upper, rel)
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = st.st_mtime
        data = None
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            self.emitted.add(rel)
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                info.type = tarfile.LNKTYPE
                info.linkname = self.links[key]
            else:
                if st.st_nlink > 1:
                    self.links[key] = rel
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                data = path
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            return  # sockets are not archived
        try:
            cap = os.getxattr(path, "security.capability", follow_symlinks=False)
        except OSError:
            cap = b""
        if cap:
            info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
        if data is None:
            self.tf.addfile(info)
        else:
            with open(data, "rb") as f:
                self.tf.addfile(info, f)

    def _whiteout(self, rel: str) -> None:
        self._parents(rel)
        head, _, name = rel.rpartition("/")
        info = tarfile.TarInfo(f"{head}/.wh.{name}" if head else f".wh.{name}")
        info.mtime = self.now
        self.tf.addfile(info)

    def walk(self, rel: str, lower: str | None, upper: str) -> None:
        a = _scan(lower)
        b = _scan(upper)
        for name in sorted(a.keys() | b.keys()):
            child = f"{rel}/{name}" if rel else name
            bst = b.get(name)
            if bst is None:
                self._whiteout(child)
                continue
            ast = a.get(name)
            apath = os.path.join(lower, name) if lower is not None else ""
            bpath = os.path.join(upper, name)
            if ast is None or not _same(ast, bst, apath, bpath):
                self._emit(child, bst)
            if stat.S_ISDIR(bst.st_mode):
                sub = apath if ast is not None and stat.S_ISDIR(ast.st_mode) else None
                self.walk(child, sub, bpath)


def write_diff(lower: str, upper: str, out: BinaryIO, gzip: bool = True) -> str:
    """Write the layer turning ``lower`` into ``upper``; returns its uncompressed digest."""
    sink = _Sink(out, gzip)
    tf = tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
    _Writer(tf, upper).walk("", lower, upper)
    tf.close()
    sink.close()
    return "sha256:" + sink.hash.hexdigest()
