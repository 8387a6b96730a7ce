"""containerd.services.namespaces.v1 Namespaces, served by the proxy.

Records live in SQLite (``<root>/proxy/namespaces.db``): name and labels. A namespace is also
created implicitly the first time a routed call names it, as containerd creates it on first
write. Delete asks every process (moorage.runner INTERNAL_SERVICE ``NamespaceUsage``) and is
refused with FailedPrecondition while any still holds something there, or with Unavailable
when one cannot be asked. Changes publish /namespaces/{create,update,delete}.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import msgpack

from moorage import errdefs
from moorage.database import open_database
from moorage.api.containerd.events import namespace_pb2 as events_pb
from moorage.api.containerd.services.namespaces.v1 import namespace_pb2 as pb
from moorage.namespaces import validate_namespace
from moorage.registry import RawService
from ttrpc.server import Context

from .handlers import unary

SERVICE = "containerd.services.namespaces.v1.Namespaces"
MAX_LABEL = 4096

Publish = Callable[[str, str, object], Awaitable[None]]
UsageCheck = Callable[[str], Awaitable[list[str]]]


def validate_labels(labels: Mapping[str, str]) -> None:
    for k, v in labels.items():
        if not k:
            raise errdefs.InvalidArgument("label key must not be empty")
        if len(k) + len(v) > MAX_LABEL:
            raise errdefs.InvalidArgument(
                f"label key and value length ({len(k) + len(v)} bytes) greater than maximum size ({MAX_LABEL} bytes), key: {k[:64]}"
            )


class NamespaceStore:
    """Namespaces and their labels in one SQLite file (WAL, one transaction per change)."""

    def __init__(self, path: Path) -> None:
        self.db = open_database(
            path,
            "CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, labels BLOB NOT NULL)",
            version=1,
            what=f"namespace database {path}",
        )

    def close(self) -> None:
        self.db.close()

    def get(self, name: str) -> dict[str, str]:
        row = self.db.execute("SELECT labels FROM namespaces WHERE name=?", (name,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"namespace {name}: not found")
        return dict(msgpack.unpackb(row[0]))

    def all(self) -> list[tuple[str, dict[str, str]]]:
        rows = self.db.execute("SELECT name, labels FROM namespaces ORDER BY name").fetchall()
        return [(n, dict(msgpack.unpackb(b))) for n, b in rows]

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM namespaces")]

    def create(self, name: str, labels: Mapping[str, str]) -> None:
        validate_namespace(name)
        validate_labels(labels)
        try:
            self.db.execute("INSERT INTO namespaces (name, labels) VALUES (?, ?)", (name, msgpack.packb(dict(labels))))
        except sqlite3.IntegrityError as exc:
            raise errdefs.AlreadyExists(f"namespace {name}: already exists") from exc

    def ensure(self, name: str) -> bool:
        """Create ``name`` without labels unless it exists; True when it was created."""
        cur = self.db.execute("INSERT OR IGNORE INTO namespaces (name, labels) VALUES (?, ?)", (name, msgpack.packb({})))
        return cur.rowcount > 0

    def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        validate_labels(labels)
        cur = self.db.execute("UPDATE namespaces SET labels=? WHERE name=?", (msgpack.packb(dict(labels)), name))
        if cur.rowcount == 0:
            raise errdefs.NotFound(f"namespace {name}: not found")

    def delete(self, name: str) -> None:
        cur = self.db.execute("DELETE FROM namespaces WHERE name=?", (name,))
        if cur.rowcount == 0:
            raise errdefs.NotFound(f"namespace {name}: not found")


class NamespacesService:
    """The API adapter: decode, call the store, encode, publish."""

    def __init__(self, store: NamespaceStore, publish: Publish, usage: UsageCheck) -> None:
        self.store = store
        self.publish = publish
        self.usage = usage
        self._lock = asyncio.Lock()

    def raw(self) -> RawService:
        return RawService(
            SERVICE,
            {
                "Get": unary(pb.GetNamespaceRequest, self.get),
                "List": unary(pb.ListNamespacesRequest, self.list),
                "Create": unary(pb.CreateNamespaceRequest, self.create),
                "Update": unary(pb.UpdateNamespaceRequest, self.update),
                "Delete": unary(pb.DeleteNamespaceRequest, self.delete),
            },
        )

    async def seen(self, name: str) -> None:
        """A routed call named ``name``: create it implicitly, as containerd does."""
        if self.store.ensure(name):
            await self.publish(name, "/namespaces/create", events_pb.NamespaceCreate(name=name))

    async def get(self, req: pb.GetNamespaceRequest, ctx: Context) -> pb.GetNamespaceResponse:
        validate_namespace(req.name)
        return pb.GetNamespaceResponse(namespace=pb.Namespace(name=req.name, labels=self.store.get(req.name)))

    async def list(self, req: pb.ListNamespacesRequest, ctx: Context) -> pb.ListNamespacesResponse:
        return pb.ListNamespacesResponse(
            namespaces=[pb.Namespace(name=n, labels=labels) for n, labels in self.store.all()]
        )

    async def create(self, req: pb.CreateNamespaceRequest, ctx: Context) -> pb.CreateNamespaceResponse:
        ns = req.namespace
        self.store.create(ns.name, ns.labels)
        await self.publish(ns.name, "/namespaces/create", events_pb.NamespaceCreate(name=ns.name, labels=ns.labels))
        return pb.CreateNamespaceResponse(namespace=ns)

    async def update(self, req: pb.UpdateNamespaceRequest, ctx: Context) -> pb.UpdateNamespaceResponse:
        ns = req.namespace
        validate_namespace(ns.name)
        async with self._lock:
            labels = self.store.get(ns.name)
            paths: Sequence[str] = list(req.update_mask.paths) if req.HasField("update_mask") else []
            if not paths:
                labels = dict(ns.labels)
            for path in paths:
                if path == "labels":
                    labels = dict(ns.labels)
                elif path.startswith("labels."):
                    key = path[len("labels.") :]
                    if key in ns.labels and ns.labels[key]:
                        labels[key] = ns.labels[key]
                    else:
                        labels.pop(key, None)
                else:
                    raise errdefs.InvalidArgument(f"cannot update {path!r} field on namespace {ns.name!r}")
            self.store.set_labels(ns.name, labels)
        await self.publish(ns.name, "/namespaces/update", events_pb.NamespaceUpdate(name=ns.name, labels=labels))
        return pb.UpdateNamespaceResponse(namespace=pb.Namespace(name=ns.name, labels=labels))

    async def delete(self, req: pb.DeleteNamespaceRequest, ctx: Context) -> object:
        from google.protobuf import empty_pb2

        validate_namespace(req.name)
        async with self._lock:
            self.store.get(req.name)
            held = await self.usage(req.name)
            if held:
                raise errdefs.FailedPrecondition(
                    f"namespace {req.name!r} must be empty, but it still has {', '.join(held)}"
                )
            self.store.delete(req.name)
        await self.publish(req.name, "/namespaces/delete", events_pb.NamespaceDelete(name=req.name))
        return empty_pb2.Empty()
