"""The synchronous snapshotter core shared by overlayfs and native.

``Backend`` owns one root (``<root>/metadata.db`` and ``<root>/snapshots/<id>``), keeps the
metadata and the directories in step, and leaves layout and mounts to its subclasses
(``overlay.OverlayBackend``, ``native.NativeBackend``). A new snapshot's directory is built
as ``snapshots/new-*`` outside the lock (native copies its parent there), then renamed to
``snapshots/<id>`` in the metadata transaction; a removed one is renamed ``rm-<id>`` in the
transaction and deleted after it, so a crash leaves at worst an orphan that ``cleanup``
(or the next start) removes. Every method takes the namespace explicitly and may block:
callers run them on worker threads (``store.LocalSnapshotter``).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Mapping, Sequence

from moorage import errdefs
from moorage.labels import validate as validate_labels

from .contract import Info, Kind, Mount, Usage
from .metadata import Metadata, Row


def disk_usage(path: str) -> Usage:
    """Bytes (allocated blocks) and distinct inodes under ``path``, as containerd's fs.DiskUsage."""
    seen: set[int] = set()
    size = 0
    stack = [path]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Usage()
    seen.add(st.st_ino)
    size += st.st_blocks * 512
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
                size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return Usage(size=size, inodes=len(seen))


class Backend:
    """One snapshotter on disk. Subclasses define the layout and the mounts."""

    name = ""

    def __init__(self, root: str) -> None:
        self.root = root
        self.snapshots = os.path.join(root, "snapshots")
        os.makedirs(self.snapshots, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        self.meta = Metadata(os.path.join(root, "metadata.db"))
        self.lock = threading.Lock()
        self.cleanup()

    def close(self) -> None:
        self.meta.close()

    # layout (subclasses) --------------------------------------------------------------
    def dir(self, id_: int) -> str:
        return os.path.join(self.snapshots, str(id_))

    def fs(self, id_: int) -> str:
        """The directory holding the snapshot's files."""
        raise NotImplementedError

    def build(self, tmp: str, kind: Kind, parents: Sequence[Row]) -> None:
        """Populate the new snapshot dir ``tmp`` (created empty, 0700)."""
        raise NotImplementedError

    def mounts_for(self, row: Row, parents: Sequence[Row]) -> list[Mount]:
        raise NotImplementedError

    # operations -----------------------------------------------------------------------
    def stat(self, ns: str, key: str) -> Info:
        with self.lock:
            return self.meta.info(self.meta.get(ns, key))

    def row(self, ns: str, key: str) -> tuple[Row, list[Row]]:
        with self.lock:
            row = self.meta.get(ns, key)
            return row, self.meta.chain(row)

    def create(
        self, ns: str, key: str, parent: str, labels: Mapping[str, str] | None, kind: Kind
    ) -> list[Mount]:
        if not key:
            raise errdefs.InvalidArgument("key must not be empty")
        labels = validate_labels(labels or {})
        with self.lock:
            prow, chain = self._check_new(ns, key, parent)
        tmp = tempfile.mkdtemp(prefix="new-", dir=self.snapshots)
        try:
            self.build(tmp, kind, chain)
            with self.lock:
                prow2, chain = self._check_new(ns, key, parent)
                if (prow2 and prow2.id) != (prow and prow.id):
                    raise errdefs.FailedPrecondition(f"parent {parent} changed")
                with self.meta.transaction():
                    id_ = self.meta.insert(ns, key, prow.id if prow else None, kind, labels)
                    os.rename(tmp, self.dir(id_))
                row = self.meta.by_id(id_)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.mounts_for(row, chain)

    def _check_new(self, ns: str, key: str, parent: str) -> tuple[Row | None, list[Row]]:
        if self.meta.exists(ns, key):
            raise errdefs.AlreadyExists(f"snapshot {key}: already exists")
        if not parent:
            return None, []
        try:
            prow = self.meta.get(ns, parent)
        except errdefs.NotFound:
            raise errdefs.NotFound(f"parent snapshot {parent} does not exist") from None
        if prow.kind != Kind.COMMITTED:
            raise errdefs.InvalidArgument(f"parent {parent} is not committed snapshot")
        return prow, [prow, *self.meta.chain(prow)]

    def mounts(self, ns: str, key: str) -> list[Mount]:
        row, chain = self.row(ns, key)
        return self.mounts_for(row, chain)

    def commit(self, ns: str, name: str, key: str, labels: Mapping[str, str] | None) -> None:
        if not name:
            raise errdefs.InvalidArgument("name must not be empty")
        labels = validate_labels(labels or {})
        row, _ = self.row(ns, key)
        if row.kind != Kind.ACTIVE:
            raise errdefs.FailedPrecondition(
                f"snapshot {key} is not active: failed precondition"
            )
        usage = disk_usage(self.fs(row.id))
        with self.lock:
            row = self.meta.get(ns, key)
            if row.kind != Kind.ACTIVE:
                raise errdefs.FailedPrecondition(f"snapshot {key} is not active")
            if self.meta.exists(ns, name):
                raise errdefs.AlreadyExists(f"snapshot {name}: already exists")
            with self.meta.transaction():
                self.meta.commit(row, name, labels, usage.size, usage.inodes)

    def remove(self, ns: str, key: str) -> None:
        with self.lock:
            row = self.meta.get(ns, key)
            if self.meta.has_children(row):
                raise errdefs.FailedPrecondition(f"cannot remove snapshot with child: {key}")
            gone = os.path.join(self.snapshots, f"rm-{row.id}")
            with self.meta.transaction():
                self.meta.delete(row)
                try:
                    os.rename(self.dir(row.id), gone)
                except FileNotFoundError:
                    gone = ""
        if gone:
            shutil.rmtree(gone, ignore_errors=True)

    def remove_many(self, ns: str, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Remove ``keys`` in order (children before their parents) in one transaction, then
        their directories: (removed, {key: why not}); a missing key is in neither, one that
        still has a child is refused (FailedPrecondition's message) and the rest go on."""
        removed: list[str] = []
        refused: dict[str, str] = {}
        gone: list[str] = []
        with self.lock, self.meta.transaction():
            for key in keys:
                try:
                    row = self.meta.get(ns, key)
                except errdefs.NotFound:
                    continue
                if self.meta.has_children(row):
                    refused[key] = f"cannot remove snapshot with child: {key}"
                    continue
                self.meta.delete(row)
                path = os.path.join(self.snapshots, f"rm-{row.id}")
                try:
                    os.rename(self.dir(row.id), path)
                    gone.append(path)
                except FileNotFoundError:
                    pass
                removed.append(key)
        for path in gone:
            shutil.rmtree(path, ignore_errors=True)
        return removed, refused

    def update(self, ns: str, info: Info, fieldpaths: Sequence[str]) -> Info:
        with self.lock:
            row = self.meta.get(ns, info.name)
            labels = dict(row.labels)
            if not fieldpaths:
                labels = dict(info.labels)
            for path in fieldpaths:
                if path == "labels":
                    labels = dict(info.labels)
                elif path.startswith("labels."):
                    k = path[len("labels.") :]
                    v = info.labels.get(k, "")
                    if v:
                        labels[k] = v
                    else:
                        labels.pop(k, None)
                else:
                    raise errdefs.InvalidArgument(
                        f'cannot update "{path}" field on snapshot "{info.name}"'
                    )
            labels = validate_labels(labels)
            with self.meta.transaction():
                self.meta.set_labels(row, labels)
            return self.meta.info(self.meta.get(ns, info.name))

    def usage(self, ns: str, key: str) -> Usage:
        row, _ = self.row(ns, key)
        if row.kind == Kind.COMMITTED:
            return Usage(row.size, row.inodes)
        return disk_usage(self.fs(row.id))

    def infos(self, ns: str) -> list[Info]:
        with self.lock:
            rows = self.meta.rows(ns)
            names = {r.id: r.key for r in rows}
            return [
                Info(
                    r.key,
                    r.kind,
                    "" if r.parent is None else names.get(r.parent, ""),
                    r.labels,
                    r.created,
                    r.updated,
                )
                for r in rows
            ]

    def keys(self, ns: str) -> list[str]:
        with self.lock:
            return self.meta.namespace_keys(ns)

    def cleanup(self) -> None:
        """Remove snapshot directories no metadata row names (interrupted creates/removes)."""
        with self.lock:
            live = {str(i) for i in self.meta.ids()}
            orphans = [
                os.path.join(self.snapshots, n)
                for n in os.listdir(self.snapshots)
                if n not in live
            ]
        for path in orphans:
            shutil.rmtree(path, ignore_errors=True)
