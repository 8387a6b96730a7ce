"""The metadata Store on SQLite (see contract.Store)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from moorage import errdefs
from moorage import filters as filtering
from moorage.namespaces import namespace

from .contract import AnyValue, Runtime, Sandbox
from .db import Database, pack, unpack

_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
MAX_ID = 76


def validate_id(sandbox_id: str) -> str:
    """containerd's identifier rules; InvalidArgument otherwise."""
    if not sandbox_id:
        raise errdefs.InvalidArgument("sandbox id must not be empty")
    if len(sandbox_id) > MAX_ID or not _IDENTIFIER.fullmatch(sandbox_id):
        raise errdefs.InvalidArgument(f"sandbox id {sandbox_id[:MAX_ID]!r}: must match {_IDENTIFIER.pattern}, at most {MAX_ID} characters")
    return sandbox_id


def _any(v: AnyValue | None) -> list[Any] | None:
    return None if v is None else [v.type_url, v.value]


def _from_any(v: Any) -> AnyValue | None:
    return None if v is None else AnyValue(str(v[0]), bytes(v[1]))


def _rich(sb: Sandbox) -> bytes:
    return pack(
        {
            "runtime_options": _any(sb.runtime.options),
            "spec": _any(sb.spec),
            "labels": dict(sb.labels),
            "extensions": {k: _any(v) for k, v in sb.extensions.items()},
        }
    )


def _row(row: tuple[Any, ...]) -> Sandbox:
    sid, sandboxer, runtime_name, created_at, updated_at, rich = row
    doc = unpack(rich)
    return Sandbox(
        id=sid,
        runtime=Runtime(runtime_name, _from_any(doc.get("runtime_options"))),
        sandboxer=sandboxer,
        spec=_from_any(doc.get("spec")),
        labels=dict(doc.get("labels") or {}),
        extensions={k: v for k, raw in (doc.get("extensions") or {}).items() if (v := _from_any(raw)) is not None},
        created_at=created_at,
        updated_at=updated_at,
    )


_COLUMNS = "id, sandboxer, runtime_name, created_at, updated_at, rich"


class SqliteStore:
    """Sandbox metadata records in the service database, per namespace."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, sandbox: Sandbox) -> Sandbox:
        ns = namespace()
        validate_id(sandbox.id)
        if not sandbox.runtime.name:
            raise errdefs.InvalidArgument(f"sandbox {sandbox.id}: runtime name must not be empty")
        now = time.time_ns()
        record = replace(sandbox, created_at=now, updated_at=now)
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox.id)).fetchone():
                raise errdefs.AlreadyExists(f"sandbox {sandbox.id!r}: already exists")
            conn.execute(
                f"INSERT INTO sandboxes (namespace, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ns, record.id, record.sandboxer, record.runtime.name, now, now, _rich(record)),
            )
        return record

    async def get(self, sandbox_id: str) -> Sandbox:
        ns = namespace()
        rows = self.db.query(f"SELECT {_COLUMNS} FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox_id))
        if not rows:
            raise errdefs.NotFound(f"sandbox {sandbox_id!r}: not found")
        return _row(rows[0])

    async def list(self, filters: Sequence[str] = ()) -> list[Sandbox]:
        ns = namespace()
        records = [_row(r) for r in self.db.query(f"SELECT {_COLUMNS} FROM sandboxes WHERE namespace = ? ORDER BY id", (ns,))]
        if not any(filters):
            return records
        flt = filtering.parse([f for f in filters if f])
        return [r for r in records if flt.match(_adaptor(r))]

    async def update(self, sandbox: Sandbox, fieldpaths: Sequence[str] = ()) -> Sandbox:
        ns = namespace()
        with self.db.tx() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox.id)).fetchone()
            if row is None:
                raise errdefs.NotFound(f"sandbox {sandbox.id!r}: not found")
            current = _row(row)
            updated = _apply(current, sandbox, fieldpaths)
            if not updated.runtime.name:
                raise errdefs.InvalidArgument(f"sandbox {sandbox.id}: runtime name must not be empty")
            updated = replace(updated, id=current.id, created_at=current.created_at, updated_at=time.time_ns())
            conn.execute(
                "UPDATE sandboxes SET sandboxer = ?, runtime_name = ?, updated_at = ?, rich = ? WHERE namespace = ? AND id = ?",
                (updated.sandboxer, updated.runtime.name, updated.updated_at, _rich(updated), ns, updated.id),
            )
        return updated

    async def delete(self, sandbox_id: str) -> None:
        """FailedPrecondition while a controller instance of the sandbox exists."""
        ns = namespace()
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM instances WHERE namespace = ? AND id = ?", (ns, sandbox_id)).fetchone():
                raise errdefs.FailedPrecondition(f"sandbox {sandbox_id!r} still has an instance: shut it down first")
            if conn.execute("DELETE FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox_id)).rowcount == 0:
                raise errdefs.NotFound(f"sandbox {sandbox_id!r}: not found")

    def update_extension(self, ns: str, sandbox_id: str, key: str, value: AnyValue | None) -> None:
        """Set (or drop) one extension of a record if the record exists (controller use)."""
        with self.db.tx() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox_id)).fetchone()
            if row is None:
                return
            current = _row(row)
            extensions = dict(current.extensions)
            if value is None:
                extensions.pop(key, None)
            else:
                extensions[key] = value
            updated = replace(current, extensions=extensions, updated_at=time.time_ns())
            conn.execute(
                "UPDATE sandboxes SET updated_at = ?, rich = ? WHERE namespace = ? AND id = ?",
                (updated.updated_at, _rich(updated), ns, sandbox_id),
            )


def _apply(current: Sandbox, new: Sandbox, fieldpaths: Sequence[str]) -> Sandbox:
    if not fieldpaths:
        return replace(new, created_at=current.created_at)
    labels = dict(current.labels)
    extensions = dict(current.extensions)
    updated = current
    for path in fieldpaths:
        if path.startswith("labels."):
            key = path[len("labels.") :]
            if key in new.labels:
                labels[key] = new.labels[key]
            else:
                labels.pop(key, None)
        elif path.startswith("extensions."):
            key = path[len("extensions.") :]
            if key in new.extensions:
                extensions[key] = new.extensions[key]
            else:
                extensions.pop(key, None)
        elif path == "labels":
            labels = dict(new.labels)
        elif path == "extensions":
            extensions = dict(new.extensions)
        elif path == "runtime":
            updated = replace(updated, runtime=new.runtime)
        elif path == "spec":
            updated = replace(updated, spec=new.spec)
        elif path == "sandboxer":
            updated = replace(updated, sandboxer=new.sandboxer)
        else:
            raise errdefs.InvalidArgument(f"cannot update {path!r} field on sandbox {current.id!r}")
    return replace(updated, labels=labels, extensions=extensions)


def _adaptor(sb: Sandbox) -> Any:
    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        head = path[0]
        if head == "id":
            return sb.id, True
        if head == "sandboxer":
            return sb.sandboxer, bool(sb.sandboxer)
        if head == "runtime" and len(path) > 1 and path[1] == "name":
            return sb.runtime.name, True
        if head == "labels":
            key = ".".join(path[1:])
            return sb.labels.get(key, ""), key in sb.labels
        return "", False

    return field
