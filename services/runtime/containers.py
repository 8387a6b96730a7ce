"""The container store: containers.v1 records in SQLite, one row per (namespace, id).

Columns for what filters and lookups use; msgpack blobs for the rich parts (labels,
runtime options, spec, extensions). One transaction per change. The namespace comes from
the request context (`moorage.namespaces.namespace()`).
"""

from __future__ import annotations

import builtins

import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from moorage.database import open_database
from moorage.labels import validate as validate_labels
from moorage.errdefs import AlreadyExists, InvalidArgument, NotFound
from moorage.namespaces import namespace

from .contract import AnyValue, Container, RuntimeInfo

_ID = re.compile(r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$")
MAX_ID_LEN = 76

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    image TEXT NOT NULL,
    runtime TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    snapshot_key TEXT NOT NULL,
    sandbox TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (namespace, id)
);
"""


def validate_id(id: str, what: str = "container id") -> None:
    if not id or len(id) > MAX_ID_LEN or not _ID.match(id):
        raise InvalidArgument(f"{what} {id!r}: invalid identifier")


def _any_out(v: AnyValue | None) -> list[Any] | None:
    return None if v is None else [v.type_url, v.value]


def _any_in(v: Any) -> AnyValue | None:
    return None if v is None else AnyValue(str(v[0]), bytes(v[1]))


def _blob(c: Container) -> bytes:
    out: bytes = msgpack.packb(
        {
            "labels": c.labels,
            "options": _any_out(c.runtime.options),
            "spec": _any_out(c.spec),
            "extensions": {k: _any_out(v) for k, v in c.extensions.items()},
        }
    )
    return out


def _row(row: sqlite3.Row) -> Container:
    blob = msgpack.unpackb(row["blob"])
    return Container(
        id=row["id"],
        runtime=RuntimeInfo(row["runtime"], _any_in(blob.get("options"))),
        spec=_any_in(blob.get("spec")),
        image=row["image"],
        labels=dict(blob.get("labels") or {}),
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        extensions={k: v for k, v in ((k, _any_in(x)) for k, x in
                                      (blob.get("extensions") or {}).items()) if v is not None},
        sandbox=row["sandbox"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _validate(c: Container) -> None:
    validate_id(c.id)
    if not c.runtime.name:
        raise InvalidArgument("must specify a runtime name")
    if c.spec is None:
        raise InvalidArgument("must specify a spec")
    validate_labels(c.labels)


def _adaptor(c: Container) -> Any:
    def adapt(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        head = path[0]
        if head == "id":
            return c.id, bool(c.id)
        if head == "image":
            return c.image, bool(c.image)
        if head == "runtime" and len(path) > 1 and path[1] == "name":
            return c.runtime.name, bool(c.runtime.name)
        if head == "snapshotter":
            return c.snapshotter, bool(c.snapshotter)
        if head == "labels":
            key = ".".join(path[1:])
            return c.labels.get(key, ""), key in c.labels
        return "", False

    return adapt


class SqliteContainerStore:
    """ContainerStore on one SQLite database (WAL)."""

    def __init__(self, path: Path, more_schema: str = "") -> None:
        """``more_schema``: the other tables of the runtime's database (the shim records)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = open_database(
            path, _SCHEMA + more_schema, version=SCHEMA_VERSION, what=f"runtime database {path}"
        )
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def _get(self, ns: str, id: str) -> Container:
        row = self._db.execute(
            "SELECT * FROM containers WHERE namespace=? AND id=?", (ns, id)
        ).fetchone()
        if row is None:
            raise NotFound(f"container \"{id}\" in namespace \"{ns}\": not found")
        return _row(row)

    async def get(self, id: str) -> Container:
        return self._get(namespace(), id)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Container]:
        ns = namespace()
        rows = self._db.execute(
            "SELECT * FROM containers WHERE namespace=? ORDER BY created_at, id", (ns,)
        ).fetchall()
        out = [_row(r) for r in rows]
        if filters and any(filters):
            from moorage.filters import parse

            flt = parse([f for f in filters if f])
            out = [c for c in out if flt.match(_adaptor(c))]
        return out

    async def create(self, container: Container) -> Container:
        ns = namespace()
        _validate(container)
        now = time.time_ns()
        container.created_at = container.updated_at = now
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO containers VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (ns, container.id, container.image, container.runtime.name,
                     container.snapshotter, container.snapshot_key, container.sandbox,
                     now, now, _blob(container)),
                )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"container \"{container.id}\": already exists") from None
        return container

    async def update(self, container: Container, fieldpaths: Sequence[str] = ()) -> Container:
        ns = namespace()
        if not container.id:
            raise InvalidArgument("must specify a container id")
        current = self._get(ns, container.id)
        paths = list(fieldpaths)
        if not paths:
            paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
            if container.snapshotter != current.snapshotter:
                raise InvalidArgument("container.Snapshotter field is immutable")
            if container.runtime.name != current.runtime.name:
                raise InvalidArgument("container.Runtime.Name field is immutable")
        for p in paths:
            if p.startswith("labels."):
                key = p[len("labels."):]
                if key in container.labels and container.labels[key]:
                    current.labels[key] = container.labels[key]
                else:
                    current.labels.pop(key, None)
            elif p.startswith("extensions."):
                key = p[len("extensions."):]
                if key in container.extensions:
                    current.extensions[key] = container.extensions[key]
                else:
                    current.extensions.pop(key, None)
            elif p == "labels":
                current.labels = dict(container.labels)
            elif p == "spec":
                current.spec = container.spec
            elif p == "extensions":
                current.extensions = dict(container.extensions)
            elif p == "image":
                current.image = container.image
            elif p == "snapshotkey":
                current.snapshot_key = container.snapshot_key
            else:
                raise InvalidArgument(f"cannot update {p!r} field on {container.id!r}")
        _validate(current)
        current.updated_at = time.time_ns()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE containers SET image=?, snapshot_key=?, updated_at=?, blob=? "
                "WHERE namespace=? AND id=?",
                (current.image, current.snapshot_key, current.updated_at, _blob(current),
                 ns, current.id),
            )
        return current

    async def delete(self, id: str) -> None:
        ns = namespace()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("DELETE FROM containers WHERE namespace=? AND id=?", (ns, id))
        if cur.rowcount == 0:
            raise NotFound(f"container \"{id}\" in namespace \"{ns}\": not found")
