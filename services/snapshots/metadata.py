"""Snapshot metadata in SQLite: one database per snapshotter root.

A row per snapshot, keyed by (namespace, key); ``id`` is the backend id that names the
directory ``snapshots/<id>``; ``parent`` points at the parent's row (same namespace).
WAL, one transaction per change. All calls are synchronous and must be made under the
owning snapshotter's lock (the connection is shared across worker threads).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from moorage import errdefs
from moorage.database import open_database

from .contract import Info, Kind

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    parent INTEGER REFERENCES snapshots(id),
    kind INTEGER NOT NULL,
    labels TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0,
    UNIQUE (namespace, key)
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


@dataclass(frozen=True)
class Row:
    id: int
    namespace: str
    key: str
    parent: int | None
    kind: Kind
    labels: dict[str, str]
    created: int
    updated: int
    size: int
    inodes: int


class Metadata:
    def __init__(self, path: str) -> None:
        self.db = open_database(
            path, _SCHEMA, version=SCHEMA_VERSION, what=f"snapshot metadata {path}", foreign_keys=True
        )

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @staticmethod
    def _row(r: Any) -> Row:
        return Row(
            id=int(r[0]),
            namespace=str(r[1]),
            key=str(r[2]),
            parent=None if r[3] is None else int(r[3]),
            kind=Kind(r[4]),
            labels=json.loads(str(r[5])),
            created=int(r[6]),
            updated=int(r[7]),
            size=int(r[8]),
            inodes=int(r[9]),
        )

    _COLS = "id, namespace, key, parent, kind, labels, created, updated, size, inodes"

    def get(self, ns: str, key: str) -> Row:
        r = self.db.execute(
            f"SELECT {self._COLS} FROM snapshots WHERE namespace=? AND key=?", (ns, key)
        ).fetchone()
        if r is None:
            raise errdefs.NotFound(f"snapshot {key} does not exist")
        return self._row(r)

    def by_id(self, id_: int) -> Row:
        r = self.db.execute(f"SELECT {self._COLS} FROM snapshots WHERE id=?", (id_,)).fetchone()
        if r is None:
            raise errdefs.NotFound(f"snapshot id {id_} does not exist")
        return self._row(r)

    def exists(self, ns: str, key: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM snapshots WHERE namespace=? AND key=?", (ns, key)
            ).fetchone()
            is not None
        )

    def chain(self, row: Row) -> list[Row]:
        """The parents of ``row``, nearest first."""
        out: list[Row] = []
        parent = row.parent
        while parent is not None:
            p = self.by_id(parent)
            out.append(p)
            parent = p.parent
        return out

    def info(self, row: Row) -> Info:
        parent = "" if row.parent is None else self.by_id(row.parent).key
        return Info(row.key, row.kind, parent, dict(row.labels), row.created, row.updated)

    def insert(
        self, ns: str, key: str, parent: int | None, kind: Kind, labels: Mapping[str, str]
    ) -> int:
        now = time.time_ns()
        cur = self.db.execute(
            "INSERT INTO snapshots (namespace, key, parent, kind, labels, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ns, key, parent, int(kind), json.dumps(dict(labels)), now, now),
        )
        return int(cur.lastrowid or 0)

    def commit(
        self, row: Row, name: str, labels: Mapping[str, str], size: int, inodes: int
    ) -> None:
        now = time.time_ns()
        self.db.execute(
            "UPDATE snapshots SET key=?, kind=?, labels=?, created=?, updated=?, size=?, inodes=?"
            " WHERE id=?",
            (name, int(Kind.COMMITTED), json.dumps(dict(labels)), now, now, size, inodes, row.id),
        )

    def set_labels(self, row: Row, labels: Mapping[str, str]) -> None:
        self.db.execute(
            "UPDATE snapshots SET labels=?, updated=? WHERE id=?",
            (json.dumps(dict(labels)), time.time_ns(), row.id),
        )

    def has_children(self, row: Row) -> bool:
        return (
            self.db.execute("SELECT 1 FROM snapshots WHERE parent=? LIMIT 1", (row.id,)).fetchone()
            is not None
        )

    def delete(self, row: Row) -> None:
        self.db.execute("DELETE FROM snapshots WHERE id=?", (row.id,))

    def rows(self, ns: str) -> list[Row]:
        return [
            self._row(r)
            for r in self.db.execute(
                f"SELECT {self._COLS} FROM snapshots WHERE namespace=? ORDER BY key", (ns,)
            )
        ]

    def ids(self) -> set[int]:
        return {int(r[0]) for r in self.db.execute("SELECT id FROM snapshots")}

    def namespace_keys(self, ns: str) -> list[str]:
        return [str(r[0]) for r in self.db.execute("SELECT key FROM snapshots WHERE namespace=?", (ns,))]
