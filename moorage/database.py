"""SQLite databases of the suite: one way to open them, one rule for their schema versions.

Every durable store keeps its metadata in a SQLite file (WAL, short transactions). Its schema
is a script of ``CREATE ... IF NOT EXISTS`` statements plus a version number kept in the
file's ``PRAGMA user_version``. :func:`ensure_schema` decides, once per open:

- a new file: the schema is created and stamped with the version;
- the same version: the script runs again (idempotent; adds indexes a release added);
- an older version: each migration step ``N -> N+1`` runs in its own transaction;
- a file from before versions were kept (``user_version`` 0 with tables): adopted when
  every column the schema names is there, else refused;
- a newer version, or a gap with no migration: refused with FailedPrecondition naming the
  file and both versions, never a crash on a missing column later.

Statements are split on ``;``: schemas hold no triggers or string literals with one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from moorage import errdefs

__all__ = ["connect", "ensure_schema", "open_database"]


def connect(
    path: str | Path,
    *,
    synchronous: str = "NORMAL",
    busy_timeout: float = 5.0,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """A connection in autocommit mode (callers ``BEGIN IMMEDIATE`` themselves), WAL."""
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if foreign_keys:
        conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _columns(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {
        t: {r[1] for r in conn.execute(f"PRAGMA table_info(\"{t}\")")}
        for t in tables
        if not t.startswith("sqlite_")
    }


def _missing(conn: sqlite3.Connection, schema: str) -> list[str]:
    """Columns the schema names that the file lacks, as ``table.column``."""
    model = sqlite3.connect(":memory:")
    try:
        for stmt in _statements(schema):
            model.execute(stmt)
        want = _columns(model)
    finally:
        model.close()
    have = _columns(conn)
    return sorted(
        f"{t}.{c}" for t, cols in want.items() if t in have for c in cols - have[t]
    )


def ensure_schema(
    conn: sqlite3.Connection,
    schema: str,
    *,
    version: int,
    what: str,
    migrations: Mapping[int, str] | None = None,
) -> None:
    """Bring the database behind ``conn`` to ``schema`` at ``version`` (see the module).

    ``migrations[n]`` is the script taking version ``n - 1`` to ``n``. ``what`` names the
    database in errors (e.g. ``"content metadata /var/lib/moorage/content/meta.db"``).
    Safe against another process opening the same file at once (replicas): every step runs
    in an IMMEDIATE transaction that re-reads the version.
    """
    steps = dict(migrations or {})
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > version:
            raise errdefs.FailedPrecondition(
                f"{what}: schema version {current} is newer than this moorage's ({version});"
                " run the newer moorage, or move the database aside to start empty"
            )
        if current == 0:
            missing = _missing(conn, schema) if _columns(conn) else []
            if missing:
                raise errdefs.FailedPrecondition(
                    f"{what}: the database predates schema versions and lacks"
                    f" {', '.join(missing)}; move it aside to start empty"
                )
            current = version
        for step in range(current + 1, version + 1):
            if step not in steps:
                raise errdefs.FailedPrecondition(
                    f"{what}: no migration from schema version {step - 1} to {step}"
                )
            for stmt in _statements(steps[step]):
                conn.execute(stmt)
        for stmt in _statements(schema):
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version={version}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_database(
    path: str | Path,
    schema: str,
    *,
    version: int,
    what: str,
    migrations: Mapping[int, str] | None = None,
    synchronous: str = "NORMAL",
    busy_timeout: float = 5.0,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """:func:`connect` then :func:`ensure_schema`; the connection is closed on refusal.

    A file SQLite cannot read at all becomes Internal naming it (move it aside)."""
    try:
        conn = connect(path, synchronous=synchronous, busy_timeout=busy_timeout, foreign_keys=foreign_keys)
    except sqlite3.DatabaseError as e:
        raise errdefs.Internal(f"{what}: cannot be opened ({e}); move it aside to start empty") from e
    try:
        ensure_schema(conn, schema, version=version, what=what, migrations=migrations)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise errdefs.Internal(f"{what}: cannot be read ({e}); move it aside to start empty") from e
    except BaseException:
        conn.close()
        raise
    return conn
