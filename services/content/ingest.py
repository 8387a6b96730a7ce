"""One ingest on disk and the synchronous writer over it.

An ingest lives in ``<root>/ingest/<sha256(backend ref)>/`` (a hashed ref, so a ref can never
name a path) with ``data`` and the small files ``ref``, ``startedat``, ``updatedat``,
``total`` and ``expected``. The backend ref is ``<namespace>/<ref>``. A new ingest is built in
``.tmp-<hash>`` and renamed into place, so a half-made one is never seen. The ref's lock
(``locks/ref-<hash>``) is held by the writer from open to commit or close.

Resume re-hashes what is on disk: after a crash the offset is the bytes in ``data``.
While data streams in, an fdatasync runs in the background every ``FLUSH_EVERY`` bytes, so
the disk works during the transfer and commit's fsync only waits for the tail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from moorage.errdefs import FailedPrecondition, InvalidArgument, NotFound

from . import digests
from .contract import Status
from .locks import FileLock
from .metadata import from_ns

_HASH_CHUNK = 4 << 20
FLUSH_EVERY = 32 << 20
"""Start writing an ingest back to disk every this many bytes, so commit's fsync is short."""
_flusher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="content-flush")


@dataclass(frozen=True)
class Layout:
    """The paths of one content root."""

    root: str

    @property
    def blobs(self) -> str:
        return os.path.join(self.root, "blobs")

    @property
    def ingests(self) -> str:
        return os.path.join(self.root, "ingest")

    @property
    def locks(self) -> str:
        return os.path.join(self.root, "locks")

    def blob(self, alg: str, hexdigest: str) -> str:
        return os.path.join(self.blobs, alg, hexdigest)

    @staticmethod
    def key(bref: str) -> str:
        return hashlib.sha256(bref.encode("utf-8", "surrogatepass")).hexdigest()

    def ingest(self, bref: str) -> str:
        return os.path.join(self.ingests, self.key(bref))

    def ref_lock(self, bref: str) -> str:
        return os.path.join(self.locks, "ref-" + self.key(bref))

    def blob_lock(self, alg: str, hexdigest: str) -> str:
        return os.path.join(self.locks, f"blob-{alg}-{hexdigest}")

    def make(self) -> None:
        for d in (self.root, self.blobs, self.ingests, self.locks):
            os.makedirs(d, mode=0o700, exist_ok=True)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    os.replace(tmp, path)


def _int(path: str) -> int:
    try:
        return int(_read(path) or 0)
    except (FileNotFoundError, ValueError):
        return 0


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_status(path: str, ref: str = "") -> Status:
    """Status of the ingest dir ``path`` (offset = size of ``data``, no re-hash)."""
    try:
        st = os.stat(os.path.join(path, "data"))
        bref = _read(os.path.join(path, "ref"))
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"ingest {ref or path}: not found") from None
    started = _int(os.path.join(path, "startedat"))
    updated = max(_int(os.path.join(path, "updatedat")), st.st_mtime_ns)
    return Status(
        ref=ref or bref,
        offset=st.st_size,
        total=_int(os.path.join(path, "total")),
        started_at=from_ns(started),
        updated_at=from_ns(updated),
        expected=_read_opt(os.path.join(path, "expected")),
    )


def _read_opt(path: str) -> str:
    try:
        return _read(path)
    except FileNotFoundError:
        return ""


def list_brefs(layout: Layout) -> list[tuple[str, str]]:
    """(backend ref, ingest dir) of every ingest under the root."""
    out = []
    try:
        names = os.listdir(layout.ingests)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith("."):
            continue
        p = os.path.join(layout.ingests, name)
        try:
            out.append((_read(os.path.join(p, "ref")), p))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out


class IngestWriter:
    """A writer over one ingest; owns the ref lock until ``commit_to``/``close``.

    Not thread-safe: one call at a time (the store serialises a session's calls).
    """

    def __init__(
        self,
        layout: Layout,
        bref: str,
        ref: str,
        lock: FileLock,
        total: int,
        expected: str,
    ) -> None:
        self.layout = layout
        self.bref = bref
        self.ref = ref
        self.path = layout.ingest(bref)
        self.data_path = os.path.join(self.path, "data")
        self._lock = lock
        self.expected = expected
        alg = digests.validate(expected)[0] if expected else digests.CANONICAL
        self._alg = alg
        self._hasher = digests.hasher(alg)
        self._fd = -1
        self.updated_at = 0
        self._unflushed = 0
        self._flush: Future[None] | None = None
        try:
            self._open(total)
        except BaseException:
            self.close()
            raise

    def _open(self, total: int) -> None:
        if os.path.isdir(self.path) and self._resume(total):
            return
        tmp = os.path.join(self.layout.ingests, ".tmp-" + self.layout.key(self.bref))
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        now = time.time_ns()
        _write(os.path.join(tmp, "ref"), self.bref)
        _write(os.path.join(tmp, "startedat"), str(now))
        _write(os.path.join(tmp, "updatedat"), str(now))
        if total > 0:
            _write(os.path.join(tmp, "total"), str(total))
        if self.expected:
            _write(os.path.join(tmp, "expected"), self.expected)
        os.close(os.open(os.path.join(tmp, "data"), os.O_WRONLY | os.O_CREAT, 0o600))
        shutil.rmtree(self.path, ignore_errors=True)
        os.rename(tmp, self.path)
        self.total = total
        self.offset = 0
        self.started_at = self.updated_at = now
        self._fd = os.open(self.data_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def _resume(self, total: int) -> bool:
        """Reopen an existing ingest; False when it is unusable (then it is recreated)."""
        try:
            if _read(os.path.join(self.path, "ref")) != self.bref:
                return False
            fd = os.open(self.data_path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        self._fd = fd
        have = _int(os.path.join(self.path, "total"))
        if total > 0 and have > 0 and total != have:
            raise FailedPrecondition(
                f"ref {self.ref}: ingest has total {have}, not {total}; abort it to restart"
            )
        if total > 0 and have == 0:
            _write(os.path.join(self.path, "total"), str(total))
            have = total
        self.total = have
        if self.expected:
            _write(os.path.join(self.path, "expected"), self.expected)
        else:
            self.expected = _read_opt(os.path.join(self.path, "expected"))
        self.offset = self._rehash()
        self.started_at = _int(os.path.join(self.path, "startedat")) or time.time_ns()
        self.updated_at = max(
            _int(os.path.join(self.path, "updatedat")), os.fstat(fd).st_mtime_ns
        )
        return True

    def _rehash(self) -> int:
        n = 0
        with open(self.data_path, "rb", buffering=0) as f:
            buf = bytearray(_HASH_CHUNK)
            mv = memoryview(buf)
            while k := f.readinto(buf):
                self._hasher.update(mv[:k])
                n += k
        return n

    # -- the session ---------------------------------------------------------

    def status(self) -> Status:
        return Status(
            ref=self.ref,
            offset=self.offset,
            total=self.total,
            started_at=from_ns(self.started_at),
            updated_at=from_ns(self.updated_at),
            expected=self.expected,
        )

    def digest(self) -> str:
        return f"{self._alg}:{self._hasher.hexdigest()}"

    def write(self, data: bytes | memoryview) -> int:
        if self._fd < 0:
            raise FailedPrecondition(f"ref {self.ref}: writer is closed")
        mv = memoryview(data)
        size = len(mv)
        done = 0
        while done < size:
            done += os.write(self._fd, mv[done:])
        self._hasher.update(mv)
        self.offset += size
        self.updated_at = time.time_ns()
        self._unflushed += size
        if self._unflushed >= FLUSH_EVERY and (self._flush is None or self._flush.done()):
            self._unflushed = 0
            self._flush = _flusher.submit(os.fdatasync, self._fd)
        return self.offset

    def _settle(self) -> None:
        """Wait for a background flush: it must not outlive the fd or cross a truncate."""
        if self._flush is not None:
            try:
                self._flush.result()
            except OSError:
                pass  # the final fsync reports what matters
            self._flush = None

    def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument("truncate: only size 0 is supported")
        if self._fd < 0:
            raise FailedPrecondition(f"ref {self.ref}: writer is closed")
        self._settle()
        os.ftruncate(self._fd, 0)
        self._hasher = digests.hasher(self._alg)
        self.offset = 0
        self.updated_at = time.time_ns()

    def sync(self) -> None:
        self._settle()
        os.fsync(self._fd)

    def verified_digest(self, expected: str) -> str:
        """The digest to check against ``expected`` (re-hashing for another algorithm)."""
        if expected:
            alg = digests.validate(expected)[0]
            if alg != self._alg:
                h = digests.hasher(alg)
                with open(self.data_path, "rb", buffering=0) as f:
                    while chunk := f.read(_HASH_CHUNK):
                        h.update(chunk)
                return f"{alg}:{h.hexdigest()}"
        return self.digest()

    def close(self) -> None:
        """End the session; the ingest stays on disk (resumable). Idempotent."""
        self._settle()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self.updated_at:
                try:
                    _write(os.path.join(self.path, "updatedat"), str(self.updated_at))
                except FileNotFoundError:
                    pass
        self._lock.release()

    def remove(self) -> None:
        """Delete the ingest dir (caller holds the lock), then end the session."""
        self._settle()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()

    @property
    def closed(self) -> bool:
        return not self._lock.held
