"""Which namespace sees which blob: the ``blobs`` table in SQLite.

One row per (namespace, digest): size, created/updated times (ns since the epoch) and the
labels (msgpack). WAL, ``synchronous=FULL``, one transaction per change, a busy timeout so
replicas on one root wait for each other instead of failing. A file that cannot be opened as
a database raises at start with its path; it is never wiped.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import msgpack

from moorage.database import connect, ensure_schema
from moorage.errdefs import Internal

from .contract import Info

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    namespace  TEXT NOT NULL,
    digest     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    labels     BLOB NOT NULL,
    PRIMARY KEY (namespace, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_digest ON blobs (digest);
"""


_VARIABLES = 500
"""Digests per statement of a batch delete (SQLite caps the variables of one statement)."""


def to_ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )


def _info(row: tuple[str, int, int, int, bytes]) -> Info:
    labels = msgpack.unpackb(row[4]) if row[4] else {}
    return Info(row[0], row[1], from_ns(row[2]), from_ns(row[3]), labels)


class Metadata:
    """Thread-safe: one connection per thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        ensure_schema(self._conn(), _SCHEMA, version=SCHEMA_VERSION, what=f"content metadata {path}")

    def _conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = connect(self.path, synchronous="FULL", busy_timeout=30.0)
            except sqlite3.DatabaseError as e:
                raise Internal(
                    f"content metadata {self.path} cannot be opened ({e}); move it aside "
                    "to start empty (blobs stay on disk, unlabelled and unreferenced)"
                ) from e
            self._local.conn = c
            with self._guard:
                self._all.append(c)
        return c

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        with self._guard:
            for c in self._all:
                c.close()
            self._all.clear()
        self._local = threading.local()

    def get(self, namespace: str, digest: str) -> Info | None:
        row = (
            self._conn()
            .execute(
                "SELECT digest, size, created_at, updated_at, labels FROM blobs"
                " WHERE namespace=? AND digest=?",
                (namespace, digest),
            )
            .fetchone()
        )
        return _info(row) if row else None

    def list(self, namespace: str) -> list[Info]:
        rows = (
            self._conn()
            .execute(
                "SELECT digest, size, created_at, updated_at, labels FROM blobs"
                " WHERE namespace=? ORDER BY digest",
                (namespace,),
            )
            .fetchall()
        )
        return [_info(r) for r in rows]

    def insert(self, namespace: str, info: Info) -> bool:
        """Add a blob to a namespace; False if the namespace already has it."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                (
                    namespace,
                    info.digest,
                    info.size,
                    to_ns(info.created_at),
                    to_ns(info.updated_at),
                    msgpack.packb(dict(info.labels)),
                ),
            )
            return cur.rowcount == 1

    def update(
        self,
        namespace: str,
        digest: str,
        change: Callable[[Info], Mapping[str, str]],
        now: datetime,
    ) -> Info | None:
        """Replace the labels with ``change(current)`` in one transaction; None if absent."""
        with self._tx() as c:
            row = c.execute(
                "SELECT digest, size, created_at, updated_at, labels FROM blobs"
                " WHERE namespace=? AND digest=?",
                (namespace, digest),
            ).fetchone()
            if row is None:
                return None
            cur = _info(row)
            labels = dict(change(cur))
            c.execute(
                "UPDATE blobs SET labels=?, updated_at=? WHERE namespace=? AND digest=?",
                (msgpack.packb(labels), to_ns(now), namespace, digest),
            )
            return Info(cur.digest, cur.size, cur.created_at, now, labels)

    def delete(self, namespace: str, digest: str) -> tuple[bool, bool]:
        """Remove from a namespace: (was there, still referenced by another namespace)."""
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM blobs WHERE namespace=? AND digest=?", (namespace, digest)
            )
            left = c.execute("SELECT 1 FROM blobs WHERE digest=? LIMIT 1", (digest,)).fetchone()
            return cur.rowcount == 1, left is not None

    def delete_many(self, namespace: str, digests: tuple[str, ...]) -> tuple[tuple[str, ...], set[str]]:
        """Remove many blobs from a namespace in one transaction: (the digests that were
        there, those of them no namespace references any more)."""
        gone: list[str] = []
        orphans: set[str] = set()
        with self._tx() as c:
            for at in range(0, len(digests), _VARIABLES):
                chunk = digests[at : at + _VARIABLES]
                marks = ",".join("?" * len(chunk))
                here = [
                    d
                    for (d,) in c.execute(
                        f"SELECT digest FROM blobs WHERE namespace=? AND digest IN ({marks})",
                        (namespace, *chunk),
                    )
                ]
                if not here:
                    continue
                marks = ",".join("?" * len(here))
                c.execute(
                    f"DELETE FROM blobs WHERE namespace=? AND digest IN ({marks})", (namespace, *here)
                )
                left = {
                    d
                    for (d,) in c.execute(
                        f"SELECT DISTINCT digest FROM blobs WHERE digest IN ({marks})", here
                    )
                }
                gone += here
                orphans.update(d for d in here if d not in left)
        return tuple(gone), orphans

    def page(self, namespace: str, after: str, limit: int) -> tuple[tuple[str, int, int, bytes], ...]:
        """(digest, size, created_at ns, packed labels) of up to ``limit`` blobs whose digest
        sorts after ``after``, in digest order: the collector's listing, labels left packed."""
        return tuple(
            self._conn().execute(
                "SELECT digest, size, created_at, labels FROM blobs WHERE namespace=? AND digest>?"
                " ORDER BY digest LIMIT ?",
                (namespace, after, limit),
            )
        )

    def referenced(self, digest: str) -> bool:
        """Whether any namespace still has the blob."""
        row = self._conn().execute("SELECT 1 FROM blobs WHERE digest=? LIMIT 1", (digest,)).fetchone()
        return row is not None
