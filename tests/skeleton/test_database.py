"""Schema versions of the suite's SQLite files (moorage.database), and a service refusing an
old file with a message instead of crashing on a missing column later."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.database import ensure_schema, open_database
from moorage.services.runtime.containers import SqliteContainerStore

V1 = "CREATE TABLE IF NOT EXISTS t (a TEXT PRIMARY KEY);"
V2 = V1 + "CREATE TABLE IF NOT EXISTS u (b INTEGER);"


def _version(path: Path) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute("PRAGMA user_version").fetchone()[0])


def test_new_file_is_created_and_stamped(tmp_path: Path) -> None:
    db = open_database(tmp_path / "x.db", V1, version=1, what="x")
    db.execute("INSERT INTO t VALUES ('k')")
    db.close()
    assert _version(tmp_path / "x.db") == 1
    again = open_database(tmp_path / "x.db", V1, version=1, what="x")  # idempotent reopen
    assert again.execute("SELECT a FROM t").fetchall() == [("k",)]


def test_migrations_run_in_order_and_keep_rows(tmp_path: Path) -> None:
    open_database(tmp_path / "x.db", V1, version=1, what="x").execute("INSERT INTO t VALUES ('k')")
    db = open_database(
        tmp_path / "x.db", V2, version=2, what="x", migrations={2: "ALTER TABLE t ADD COLUMN c INTEGER"}
    )
    assert [r[1] for r in db.execute("PRAGMA table_info(t)")] == ["a", "c"]
    assert db.execute("SELECT a FROM t").fetchall() == [("k",)]
    assert _version(tmp_path / "x.db") == 2


def test_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    open_database(tmp_path / "x.db", V2, version=3, what="x", migrations={}).close()
    with pytest.raises(errdefs.FailedPrecondition, match=r"x: schema version 3 is newer than this moorage's \(1\)"):
        open_database(tmp_path / "x.db", V1, version=1, what="x")
    assert _version(tmp_path / "x.db") == 3


def test_missing_migration_is_refused(tmp_path: Path) -> None:
    open_database(tmp_path / "x.db", V1, version=1, what="x").close()
    with pytest.raises(errdefs.FailedPrecondition, match="no migration from schema version 1 to 2"):
        open_database(tmp_path / "x.db", V2, version=2, what="x")
    assert _version(tmp_path / "x.db") == 1  # the failed step was rolled back


def test_unversioned_file_is_adopted_when_it_matches(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "x.db") as c:
        c.execute("CREATE TABLE t (a TEXT PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES ('old')")
    db = open_database(tmp_path / "x.db", V2, version=1, what="x")
    assert db.execute("SELECT a FROM t").fetchall() == [("old",)]
    assert db.execute("SELECT count(*) FROM u").fetchone() == (0,)  # new tables are added
    assert _version(tmp_path / "x.db") == 1


def test_unversioned_file_missing_columns_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "x.db") as c:
        c.execute("CREATE TABLE t (z TEXT)")
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    with pytest.raises(errdefs.FailedPrecondition, match=r"predates schema versions and lacks t\.a"):
        ensure_schema(conn, V1, version=1, what="x")


def test_garbage_file_is_internal_naming_it(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(errdefs.Internal, match="x: .*move it aside"):
        open_database(tmp_path / "x.db", V1, version=1, what="x")


def test_runtime_refuses_an_old_database_by_name(tmp_path: Path) -> None:
    """The crash the last release had: a runtime.db from before a column was added."""
    path = tmp_path / "runtime.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE containers (namespace TEXT, id TEXT, PRIMARY KEY (namespace, id))")
    with pytest.raises(errdefs.FailedPrecondition, match=f"runtime database {path}: .*lacks containers.blob"):
        SqliteContainerStore(path)
