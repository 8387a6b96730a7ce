"""The sandbox service's one SQLite database: metadata records and controller instances.

Two tables, both keyed by (namespace, id): ``sandboxes`` (the Store's records; columns for
what is filtered or sorted, msgpack for the rest) and ``instances`` (each sandboxer's
durable instance state as a msgpack document). WAL, one transaction per change.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from moorage.database import open_database

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    sandboxer TEXT NOT NULL,
    runtime_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    rich BLOB NOT NULL,
    PRIMARY KEY (namespace, id)
);
CREATE TABLE IF NOT EXISTS instances (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    sandboxer TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (namespace, id, sandboxer)
);
"""


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


class Database:
    """A connection shared by the process; ``tx()`` is one IMMEDIATE transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._conn = open_database(self.path, SCHEMA, version=SCHEMA_VERSION, what=f"sandbox database {self.path}")
        self._lock = threading.RLock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, args))

    # instances ---------------------------------------------------------------------------

    def put_instance(self, namespace: str, sandbox_id: str, sandboxer: str, data: dict[str, Any]) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO instances (namespace, id, sandboxer, data) VALUES (?, ?, ?, ?)",
                (namespace, sandbox_id, sandboxer, pack(data)),
            )

    def get_instance(self, namespace: str, sandbox_id: str, sandboxer: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT data FROM instances WHERE namespace = ? AND id = ? AND sandboxer = ?", (namespace, sandbox_id, sandboxer)
        )
        return dict(unpack(rows[0][0])) if rows else None

    def delete_instance(self, namespace: str, sandbox_id: str, sandboxer: str) -> None:
        with self.tx() as conn:
            conn.execute("DELETE FROM instances WHERE namespace = ? AND id = ? AND sandboxer = ?", (namespace, sandbox_id, sandboxer))

    def instances(self, sandboxer: str | None = None) -> list[tuple[str, str, str, dict[str, Any]]]:
        """Every instance (namespace, id, sandboxer, data), all namespaces."""
        sql = "SELECT namespace, id, sandboxer, data FROM instances"
        args: tuple[Any, ...] = ()
        if sandboxer is not None:
            sql += " WHERE sandboxer = ?"
            args = (sandboxer,)
        return [(ns, sid, sb, dict(unpack(data))) for ns, sid, sb, data in self.query(sql + " ORDER BY namespace, id", args)]

    def has_instance(self, namespace: str, sandbox_id: str) -> bool:
        return bool(self.query("SELECT 1 FROM instances WHERE namespace = ? AND id = ?", (namespace, sandbox_id)))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
