"""The local content store: blobs and ingests on disk, namespaces and labels in SQLite.

Implements ``contract.Store`` for the namespace of the calling context. Blocking work (files,
hashing, fsync, SQLite) runs on a private thread pool; the asyncio loop only dispatches.
Blobs are shared between namespaces on disk and visible per namespace through the metadata;
a blob leaves the disk when the last namespace deletes it.

Commit, under the ref lock: fsync ``data`` -> check size (given, else the declared total) ->
check digest (given, else the declared one; re-hash for another algorithm) -> take the
digest's lock -> AlreadyExists if the namespace has it -> rename into
``blobs/<alg>/<hex>`` unless another namespace already put the bytes there -> fsync the
folder -> record the blob in the namespace -> drop the ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from moorage.errdefs import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from moorage import labels as labels_rule
from moorage.namespaces import namespace

from . import digests
from .contract import READ_CHUNK, Info, Status
from .ingest import IngestWriter, Layout, fsync_dir, list_brefs, read_status
from .locks import FileLock
from .metadata import Metadata

T = TypeVar("T")
log = logging.getLogger("moorage.services.content")
UNLINK_BATCH = 2
"""Blob files a sweep unlinks per hold of the sweep lock (commits wait at most that long)."""

def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """containerd's label rule; an empty value means "no such label" (dropped)."""
    return {k: v for k, v in labels_rule.validate(labels).items() if v}


def _now() -> datetime:
    return datetime.now(UTC)


def _matcher(filters: Sequence[str]) -> Callable[[Callable[[Sequence[str]], tuple[str, bool]]], bool]:
    if not filters:
        return lambda _adaptor: True
    from moorage import filters as _filters  # type: ignore[attr-defined, unused-ignore]

    match: Callable[[Callable[[Sequence[str]], tuple[str, bool]]], bool]
    match = _filters.parse(list(filters)).match
    return match


def info_adaptor(info: Info) -> Callable[[Sequence[str]], tuple[str, bool]]:
    """containerd's content.AdaptInfo: ``digest`` and ``labels.<key>``."""

    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] == "digest":
            return info.digest, True
        if path[0] == "labels" and len(path) > 1:
            key = ".".join(path[1:])
            if key in info.labels:
                return info.labels[key], True
        return "", False

    return field


def status_adaptor(st: Status) -> Callable[[Sequence[str]], tuple[str, bool]]:
    def field(path: Sequence[str]) -> tuple[str, bool]:
        if path and path[0] == "ref":
            return st.ref, True
        return "", False

    return field


class LocalStore:
    """``contract.Store`` over one root. Safe to run beside other instances on the same root."""

    def __init__(self, root: str, *, workers: int = 8) -> None:
        self.layout = Layout(root)
        self.layout.make()
        self.meta = Metadata(os.path.join(root, "meta.db"))
        self._sweep_lock = os.path.join(root, "sweep.lock")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="content")
        self.sweep()

    def sweep(self) -> int:
        """Remove what dead processes left: half-made ingest dirs and unheld lock files.
        Safe beside live replicas (a held lock is skipped). Returns how many went."""
        gone = 0
        for name in os.listdir(self.layout.ingests):
            if name.startswith(".tmp-"):
                lock = os.path.join(self.layout.locks, "ref-" + name[len(".tmp-") :])
                try:
                    with FileLock.acquire(lock, blocking=False):
                        shutil.rmtree(os.path.join(self.layout.ingests, name), ignore_errors=True)
                        gone += 1
                except Unavailable:
                    continue
        gone += self._orphans()
        for name in os.listdir(self.layout.locks):
            try:
                FileLock.acquire(os.path.join(self.layout.locks, name), blocking=False).release()
                gone += 1
            except Unavailable:
                continue
        return gone

    def _orphans(self) -> int:
        """Remove blob files no namespace references: what a process killed between a
        delete's metadata transaction and its unlinks left (metadata goes first, so a crash
        never leaves a record without its file). Each under its blob lock, which a commit
        holds from its rename to its record."""
        gone = 0
        for alg in os.listdir(self.layout.blobs):
            folder = os.path.join(self.layout.blobs, alg)
            if not os.path.isdir(folder):
                continue
            for hexd in os.listdir(folder):
                if not self.meta.referenced(f"{alg}:{hexd}"):
                    gone += self._unlink_unreferenced(alg, hexd)
        return gone

    def _unlink_unreferenced(self, alg: str, hexd: str) -> bool:
        """Remove a blob's file unless a namespace has it (checked under the blob's lock, which
        a commit holds from its rename to its record). Whether a file went."""
        with FileLock.acquire(self.layout.blob_lock(alg, hexd), blocking=True):
            if self.meta.referenced(f"{alg}:{hexd}"):
                return False
            try:
                os.unlink(self.layout.blob(alg, hexd))
            except FileNotFoundError:
                return False
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.meta.close()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args)
        )

    async def usage(self, ns: str) -> tuple[int, int]:
        """(blobs, active ingests) namespace ``ns`` holds."""
        return await self._run(self._usage, ns)

    def _usage(self, ns: str) -> tuple[int, int]:
        return len(self.meta.list(ns)), len(self._list_statuses(ns))

    # -- Manager -------------------------------------------------------------

    async def info(self, digest: str) -> Info:
        return await self._run(self.info_sync, namespace(), digest)

    def info_sync(self, ns: str, digest: str) -> Info:
        digests.validate(digest)
        info = self.meta.get(ns, digest)
        if info is None:
            raise NotFound(f"content digest {digest}: not found")
        return info

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return await self._run(self._update, namespace(), info, tuple(fieldpaths))

    def _update(self, ns: str, info: Info, paths: tuple[str, ...]) -> Info:
        digests.validate(info.digest)

        def change(cur: Info) -> Mapping[str, str]:
            if not paths:
                return validate_labels(info.labels)
            labels = dict(cur.labels)
            for p in paths:
                if p.startswith("labels."):
                    key = p[len("labels.") :]
                    labels[key] = info.labels.get(key, "")
                elif p == "labels":
                    labels = dict(info.labels)
                else:
                    raise InvalidArgument(
                        f"cannot update {p!r} field on content info {info.digest!r}"
                    )
            return validate_labels(labels)

        out = self.meta.update(ns, info.digest, change, _now())
        if out is None:
            raise NotFound(f"content digest {info.digest}: not found")
        return out

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        match = _matcher(filters)
        for info in await self._run(self.meta.list, namespace()):
            if match(info_adaptor(info)):
                yield info

    async def delete(self, digest: str) -> None:
        await self._run(self._delete, namespace(), digest)

    def _delete(self, ns: str, digest: str) -> None:
        alg, hexd = digests.validate(digest)
        with FileLock.acquire(self.layout.blob_lock(alg, hexd), blocking=True):
            was, left = self.meta.delete(ns, digest)
            if not was:
                raise NotFound(f"content digest {digest}: not found")
            if not left:
                try:
                    os.unlink(self.layout.blob(alg, hexd))
                except FileNotFoundError:
                    pass

    async def page(self, after: str, limit: int) -> list[tuple[str, int, int, bytes]]:
        """Up to ``limit`` blobs of the namespace after digest ``after``, raw (see
        ``Metadata.page``): the collector's listing, without building an Info per blob."""
        return list(await self._run(self.meta.page, namespace(), after, limit))

    async def delete_many(self, digests: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Delete many blobs of the namespace at once (the collector's sweep): one metadata
        transaction, after which they are gone for every reader; the files no namespace
        references are unlinked afterwards in the background (as containerd's collector
        removes backend content after its commit; a crash in between leaves orphan files,
        which the next start removes). Returns (deleted, {digest: why not}); a digest the
        namespace does not have is neither (already gone)."""
        gone, refused, files = await self._run(self._delete_rows, namespace(), list(digests))
        if files:
            self._pool.submit(self._unlink_orphans, files)
        return gone, refused

    def _delete_rows(self, ns: str, wanted: list[str]) -> tuple[list[str], dict[str, str], list[tuple[str, str]]]:
        valid: list[tuple[str, tuple[str, str]]] = []
        refused: dict[str, str] = {}
        for d in wanted:
            try:
                parsed = digests.validate(d)
            except InvalidArgument as exc:
                refused[d] = str(exc)
                continue
            valid.append((d, parsed))
        gone, orphans = self.meta.delete_many(ns, tuple(d for d, _ in valid))
        files = [(d, self.layout.blob(*parsed)) for d, parsed in valid if d in orphans]
        return list(gone), refused, files

    def _unlink_orphans(self, files: list[tuple[str, str]]) -> None:
        for at in range(0, len(files), UNLINK_BATCH):
            # no blob lock each (creating a lock file costs more than the unlink): the sweep
            # lock keeps every commit's check-rename-record out while a batch goes
            with self._sweeping(True):
                for d, path in files[at : at + UNLINK_BATCH]:
                    if not self.meta.referenced(d):
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
                        except OSError as exc:  # left for the next start's orphan sweep
                            log.warning("blob file %s not removed: %s", path, exc)

    @contextlib.contextmanager
    def _sweeping(self, exclusive: bool) -> Iterator[None]:
        """The sweep's unlinks (exclusive) against commits placing a blob (shared), across
        every process on the root: flock on ``<root>/sweep.lock``, a file that stays (taken
        before any blob lock)."""
        fd = os.open(self._sweep_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- Provider ------------------------------------------------------------

    async def reader_at(self, digest: str) -> LocalReader:
        fd, size = await self._run(self._open_blob, namespace(), digest)
        return LocalReader(fd, size, self)

    def _open_blob(self, ns: str, digest: str) -> tuple[int, int]:
        alg, hexd = digests.validate(digest)
        info = self.info_sync(ns, digest)
        try:
            fd = os.open(self.layout.blob(alg, hexd), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}: blob missing on disk") from None
        return fd, info.size

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        reader = await self.reader_at(digest)
        try:
            offset = max(offset, 0)
            if offset > reader.size:
                raise OutOfRange(f"read past object length {reader.size} bytes")
            end = reader.size if size <= 0 or offset + size > reader.size else offset + size
            loop = asyncio.get_running_loop()

            def chunk(at: int) -> asyncio.Future[bytes]:
                n = min(READ_CHUNK, end - at)
                return loop.run_in_executor(self._pool, os.pread, reader.fd, n, at)

            nxt = chunk(offset) if offset < end else None
            while nxt is not None:
                data = await nxt
                if not data:
                    raise NotFound(f"content digest {digest}: blob shorter than recorded")
                offset += len(data)
                nxt = chunk(offset) if offset < end else None
                yield data
        finally:
            await reader.close()

    # -- IngestManager -------------------------------------------------------

    async def status(self, ref: str) -> Status:
        return await self._run(self._status, namespace(), ref)

    def _status(self, ns: str, ref: str) -> Status:
        digests.validate_ref(ref)
        return read_status(self.layout.ingest(f"{ns}/{ref}"), ref)

    async def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        match = _matcher(filters)
        found = await self._run(self._list_statuses, namespace())
        return [st for st in found if match(status_adaptor(st))]

    def _list_statuses(self, ns: str) -> list[Status]:
        prefix = ns + "/"
        out = []
        for bref, path in list_brefs(self.layout):
            if bref.startswith(prefix):
                try:
                    out.append(read_status(path, bref[len(prefix) :]))
                except NotFound:
                    continue
        out.sort(key=lambda s: s.ref)
        return out

    async def abort(self, ref: str) -> None:
        await self._run(self._abort, namespace(), ref)

    def _abort(self, ns: str, ref: str) -> None:
        digests.validate_ref(ref)
        bref = f"{ns}/{ref}"
        with FileLock.acquire(self.layout.ref_lock(bref), blocking=False, what=f"ref {ref}"):
            path = self.layout.ingest(bref)
            if not os.path.isdir(path):
                raise NotFound(f"ingest ref {ref!r}: not found")
            shutil.rmtree(path)

    # -- Ingester ------------------------------------------------------------

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> LocalWriter:
        ns = namespace()
        return await self._run(self.open_writer, ns, ref, total, expected)

    def open_writer(self, ns: str, ref: str, total: int, expected: str) -> LocalWriter:
        digests.validate_ref(ref)
        if expected:
            digests.validate(expected)
        if total < 0:
            raise InvalidArgument(f"total {total} must not be negative")
        if expected and self.meta.get(ns, expected) is not None:
            raise AlreadyExists(f"content {expected}: already exists")
        bref = f"{ns}/{ref}"
        lock = FileLock.acquire(self.layout.ref_lock(bref), blocking=False, what=f"ref {ref}")
        try:
            if expected:
                alg, hexd = digests.validate(expected)
                try:
                    have = os.stat(self.layout.blob(alg, hexd)).st_size
                except FileNotFoundError:
                    have = -1
                if have >= 0 and total in (0, have):
                    return LocalWriter(self, ns, ref, bref, lock, None, (expected, have))
            w = IngestWriter(self.layout, bref, ref, lock, total, expected)
        except BaseException:
            lock.release()
            raise
        return LocalWriter(self, ns, ref, bref, lock, w, None)

    def commit_ingest(
        self, ns: str, w: IngestWriter, size: int, expected: str, labels: Mapping[str, str]
    ) -> tuple[str, int]:
        """Verify and publish ``w``'s ingest; ends the session whatever happens."""
        try:
            clean = validate_labels(labels)
            if expected:
                digests.validate(expected)
            size = size or w.total
            expected = expected or w.expected
            w.sync()
            actual = w.offset
            if size > 0 and size != actual:
                raise FailedPrecondition(
                    f"unexpected commit size {actual}, expected {size} (ref {w.ref})"
                )
            dgst = w.verified_digest(expected)
            if expected and expected != dgst:
                raise FailedPrecondition(
                    f"unexpected commit digest {dgst}, expected {expected} (ref {w.ref})"
                )
        except BaseException:
            w.close()
            raise
        alg, hexd = dgst.split(":", 1)
        try:
            with self._sweeping(False), FileLock.acquire(self.layout.blob_lock(alg, hexd), blocking=True):
                if self.meta.get(ns, dgst) is not None:
                    raise AlreadyExists(f"content {dgst}: already exists")
                target = self.layout.blob(alg, hexd)
                if not os.path.exists(target):
                    folder = os.path.dirname(target)
                    os.makedirs(folder, mode=0o700, exist_ok=True)
                    os.chmod(w.data_path, 0o444)
                    os.rename(w.data_path, target)
                    fsync_dir(folder)
                now = _now()
                self.meta.insert(ns, Info(dgst, actual, now, now, clean))
        except AlreadyExists:
            w.remove()
            raise
        except BaseException:
            w.close()
            raise
        w.remove()
        return dgst, actual

    def commit_shared(
        self,
        ns: str,
        bref: str,
        lock: FileLock,
        have: tuple[str, int],
        size: int,
        expected: str,
        labels: Mapping[str, str],
    ) -> tuple[str, int]:
        """Commit bytes another namespace already stored: record them, write nothing."""
        dgst, have_size = have
        try:
            clean = validate_labels(labels)
            if size > 0 and size != have_size:
                raise FailedPrecondition(f"unexpected commit size {have_size}, expected {size}")
            if expected and expected != dgst:
                raise FailedPrecondition(f"unexpected commit digest {dgst}, expected {expected}")
            alg, hexd = dgst.split(":", 1)
            with self._sweeping(False), FileLock.acquire(self.layout.blob_lock(alg, hexd), blocking=True):
                if self.meta.get(ns, dgst) is not None:
                    raise AlreadyExists(f"content {dgst}: already exists")
                if not os.path.exists(self.layout.blob(alg, hexd)):
                    raise Aborted(f"content {dgst} was removed meanwhile: write it")
                now = _now()
                self.meta.insert(ns, Info(dgst, have_size, now, now, clean))
            shutil.rmtree(self.layout.ingest(bref), ignore_errors=True)
            return dgst, have_size
        finally:
            lock.release()

    def materialize(self, bref: str, ref: str, lock: FileLock, have: tuple[str, int]) -> IngestWriter:
        """Turn a shared writer into a real ingest holding a copy of the shared bytes."""
        shutil.rmtree(self.layout.ingest(bref), ignore_errors=True)
        w = IngestWriter(self.layout, bref, ref, lock, 0, "")
        alg, hexd = digests.validate(have[0])
        with open(self.layout.blob(alg, hexd), "rb", buffering=0) as f:
            while chunk := f.read(4 << 20):
                w.write(chunk)
        return w


class LocalReader:
    """``contract.ReaderAt`` over an open blob file."""

    def __init__(self, fd: int, size: int, store: LocalStore) -> None:
        self.fd = fd
        self._size = size
        self._store = store

    @property
    def size(self) -> int:
        return self._size

    async def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise InvalidArgument("negative offset or length")
        n = max(0, min(n, self._size - offset))
        if n == 0:
            return b""
        return await self._store._run(os.pread, self.fd, n, offset)

    async def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _serial(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def locked(self: LocalWriter, *args: object) -> T:
        with self._mu:
            return fn(self, *args)

    return locked


class LocalWriter:
    """``contract.Writer`` of the local store: a real ingest, or a shared blob until written."""

    def __init__(
        self,
        store: LocalStore,
        ns: str,
        ref: str,
        bref: str,
        lock: FileLock,
        w: IngestWriter | None,
        shared: tuple[str, int] | None,
    ) -> None:
        self._store = store
        self._ns = ns
        self.ref = ref
        self._bref = bref
        self._lock = lock
        self._w = w
        self._shared = shared
        self._started = _now()
        self._done = False
        # one call at a time, and close waits for a write still running in the pool
        self._mu = threading.Lock()

    def _ingest(self) -> IngestWriter:
        if self._done:
            raise FailedPrecondition(f"ref {self.ref}: writer is closed")
        if self._w is None:
            assert self._shared is not None
            self._w = self._store.materialize(self._bref, self.ref, self._lock, self._shared)
            self._shared = None
        return self._w

    @_serial
    def status_sync(self) -> Status:
        if self._w is not None:
            return self._w.status()
        assert self._shared is not None
        dgst, size = self._shared
        return Status(self.ref, size, size, self._started, self._started, dgst)

    @_serial
    def digest_sync(self) -> str:
        if self._w is not None:
            return self._w.digest()
        assert self._shared is not None
        return self._shared[0]

    @_serial
    def write_sync(self, data: bytes | memoryview) -> int:
        if len(data) == 0 and self._w is None and self._shared is not None:
            return self._shared[1]
        return self._ingest().write(data)

    @_serial
    def truncate_sync(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument("truncate: only size 0 is supported")
        w = self._ingest()
        w.truncate(0)

    @_serial
    def commit_sync(self, size: int, expected: str, labels: Mapping[str, str]) -> tuple[str, int]:
        if self._done:
            raise FailedPrecondition(f"ref {self.ref}: writer is closed")
        self._done = True
        if self._w is None:
            assert self._shared is not None
            return self._store.commit_shared(
                self._ns, self._bref, self._lock, self._shared, size, expected, labels
            )
        return self._store.commit_ingest(self._ns, self._w, size, expected, labels)

    @_serial
    def close_sync(self) -> None:
        self._done = True
        if self._w is not None:
            self._w.close()
        else:
            self._lock.release()

    async def status(self) -> Status:
        return await self._store._run(self.status_sync)

    async def digest(self) -> str:
        return self.digest_sync()

    async def write(self, data: bytes | memoryview) -> int:
        return await self._store._run(self.write_sync, data)

    async def truncate(self, size: int) -> None:
        await self._store._run(self.truncate_sync, size)

    async def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        dgst, _ = await self._store._run(self.commit_sync, size, expected, dict(labels or {}))
        return dgst

    async def close(self) -> None:
        await self._store._run(self.close_sync)
