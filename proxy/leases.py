"""containerd.services.leases.v1 Leases, served by the proxy.

A lease is a named hold, per namespace, on resources being created (content, ingests,
snapshots) so that a garbage collector leaves them alone until the lease goes. Records live
in SQLite (``<root>/proxy/leases.db``, WAL, one transaction per change): the lease (id,
creation time, labels) and the resources it holds (type and id), keyed by namespace.

Rules, as containerd's metadata store:

- ids are any non-empty string (none given: a random one, as containerd), unique per namespace (AlreadyExists ``lease "x"``);
  labels at most 4096 bytes key+value;
- resource types: ``content`` (id a digest), ``ingests`` (id a ref), ``snapshots/<name>``
  (id a key), ``images`` (id a name, containerd 2's); anything else is InvalidArgument ``unsupported resource type``; adding a
  resource twice or deleting one the lease does not hold is not an error; calls on a lease
  that does not exist are NotFound;
- List filters (containerd syntax) over ``id`` and ``labels.<key>``;
- ``containerd.io/gc.expire`` (RFC 3339 as Go's ``time.Parse`` reads it, see ``rfc3339``;
  unparsable: no expiry): a lease past its expiry is dropped, with its resources, before every
  List and at start (containerd drops it at its next collection).

The collector (gc.py) treats every resource of a live lease as a root; ``sync`` on Delete
collects before answering. The lease a call runs under travels in metadata
``containerd-lease`` (gRPC and ttrpc alike); the services record what they create under it
through AddResource (moorage.leasing.Recorder).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import msgpack
from google.protobuf import empty_pb2

from moorage import errdefs, filters
from moorage.database import open_database
from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb
from moorage.namespaces import namespace
from moorage.registry import RawService
from ttrpc.server import Context

from .handlers import unary
from .namespaces import validate_labels

SERVICE = "containerd.services.leases.v1.Leases"
EXPIRE_LABEL = "containerd.io/gc.expire"
FLAT_LABEL = "containerd.io/gc.flat"
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class Lease:
    id: str
    created_at: int
    """Nanoseconds since the epoch."""
    labels: dict[str, str] = field(default_factory=dict)


def validate_id(lease_id: str) -> None:
    """Any non-empty id, as containerd (its clients' random ids hold ``-`` and ``_`` runs)."""
    if not lease_id:
        raise errdefs.InvalidArgument("lease id must be provided")


def validate_resource(rtype: str, rid: str) -> None:
    """containerd's parseLeaseResource: the types a lease can hold."""
    if rtype == "content":
        alg, _, hexpart = rid.partition(":")
        if not _DIGEST.fullmatch(rid) or (alg in _HEX_LENGTH and len(hexpart) != _HEX_LENGTH[alg]):
            raise errdefs.InvalidArgument(f"invalid content resource {rid!r}: invalid digest")
        return
    if rtype in ("ingests", "images"):
        if not rid:
            raise errdefs.InvalidArgument(f"invalid {rtype} resource: empty id")
        return
    kind, _, snapshotter = rtype.partition("/")
    if kind == "snapshots" and snapshotter and "/" not in snapshotter:
        if not rid:
            raise errdefs.InvalidArgument(f"invalid {rtype} resource: empty key")
        return
    raise errdefs.InvalidArgument(f"{rtype}: unsupported resource type: invalid argument")


def random_id() -> str:
    """An id for a lease created without one, shaped as containerd's WithRandomID."""
    return f"{time.time_ns() % 1_000_000_000}-{secrets.token_hex(3)}"


def expiry(labels: Mapping[str, str]) -> float | None:
    """The lease's ``containerd.io/gc.expire`` as epoch seconds (None: none or unparsable,
    which containerd's collector also ignores)."""
    value = labels.get(EXPIRE_LABEL)
    return rfc3339(value) if value else None


_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})"
                      r"(?:[.,]([0-9]+))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))")
"""Go's ``time.Parse(time.RFC3339, v)``: its layout path (tried when the strict fast path fails)
takes a one-digit hour, a ``,`` before the fraction and any number of fraction digits."""
_EPOCH = date(1970, 1, 1)
_DAYS_IN_400_YEARS = 146097
"""The Gregorian calendar repeats every 400 years (Go's has a year 0, datetime has none)."""


def rfc3339(value: str) -> float | None:
    """A time as containerd reads its ``gc.expire`` and ``gc.cond.value-usedat`` labels, Go's
    ``time.Parse(time.RFC3339, v)`` (Go 1.23+), as epoch seconds; None where Go errs, so the
    label is ignored as containerd ignores it. Go's rules: ``YYYY-MM-DDTh[h]:mm:ss``, ASCII
    digits, a capital ``T``; year 0000-9999 (proleptic Gregorian), the day within its month,
    hour 0-23, minute and second 0-59 (no leap second); an optional ``.`` or ``,`` with one or
    more digits (past nine ignored); then ``Z`` (capital) or ``+hh:mm``/``-hh:mm`` with hh at
    most 24 and mm at most 60, and nothing after. No date alone, no zone-less time, no space
    for ``T``, no compact form."""
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        same_day = date(2000 + year % 400, month, day)
    except ValueError:
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    offset = 0
    if m[8]:
        zone_hour, zone_minute = int(m[9]), int(m[10])
        if zone_hour > 24 or zone_minute > 60:
            return None
        offset = (zone_hour * 60 + zone_minute) * 60 * (1 if m[8] == "+" else -1)
    nanos = int(m[7][:9].ljust(9, "0")) if m[7] else 0
    days = (same_day - _EPOCH).days + (year // 400 - 5) * _DAYS_IN_400_YEARS
    return days * 86400 + hour * 3600 + minute * 60 + second - offset + nanos / 1e9



SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    namespace TEXT NOT NULL, id TEXT NOT NULL, created_at INTEGER NOT NULL, labels BLOB NOT NULL,
    PRIMARY KEY (namespace, id)
);
CREATE TABLE IF NOT EXISTS resources (
    namespace TEXT NOT NULL, lease TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, type, id),
    FOREIGN KEY (namespace, lease) REFERENCES leases (namespace, id) ON DELETE CASCADE
);
"""


class LeaseStore:
    """Leases and their resources per namespace in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.db = open_database(
            path, _SCHEMA, version=SCHEMA_VERSION, what=f"lease database {path}", foreign_keys=True
        )
        self.expire()

    def close(self) -> None:
        self.db.close()

    def create(self, ns: str, lease_id: str, labels: Mapping[str, str]) -> Lease:
        validate_id(lease_id)
        validate_labels(labels)
        lease = Lease(lease_id, time.time_ns(), dict(labels))
        try:
            self.db.execute(
                "INSERT INTO leases (namespace, id, created_at, labels) VALUES (?, ?, ?, ?)",
                (ns, lease_id, lease.created_at, msgpack.packb(lease.labels)),
            )
        except sqlite3.IntegrityError as exc:
            raise errdefs.AlreadyExists(f'lease "{lease_id}": already exists') from exc
        return lease

    def delete(self, ns: str, lease_id: str) -> None:
        cur = self.db.execute("DELETE FROM leases WHERE namespace=? AND id=?", (ns, lease_id))
        if cur.rowcount == 0:
            raise errdefs.NotFound(f'lease "{lease_id}": not found')

    def leases(self, ns: str) -> list[Lease]:
        self.expire()
        rows = self.db.execute(
            "SELECT id, created_at, labels FROM leases WHERE namespace=? ORDER BY created_at, id", (ns,)
        ).fetchall()
        return [Lease(i, c, dict(msgpack.unpackb(b))) for i, c, b in rows]

    def _check(self, ns: str, lease_id: str) -> None:
        if self.db.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?", (ns, lease_id)).fetchone() is None:
            raise errdefs.NotFound(f'lease "{lease_id}": not found')

    def add_resource(self, ns: str, lease_id: str, rtype: str, rid: str) -> None:
        validate_resource(rtype, rid)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self._check(ns, lease_id)
            self.db.execute(
                "INSERT OR IGNORE INTO resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)",
                (ns, lease_id, rtype, rid),
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def delete_resource(self, ns: str, lease_id: str, rtype: str, rid: str) -> None:
        validate_resource(rtype, rid)
        self._check(ns, lease_id)
        self.db.execute(
            "DELETE FROM resources WHERE namespace=? AND lease=? AND type=? AND id=?", (ns, lease_id, rtype, rid)
        )

    def resources(self, ns: str, lease_id: str) -> list[tuple[str, str]]:
        """(type, id) of what the lease holds."""
        self._check(ns, lease_id)
        rows = self.db.execute(
            "SELECT type, id FROM resources WHERE namespace=? AND lease=? ORDER BY type, id", (ns, lease_id)
        ).fetchall()
        return [(t, i) for t, i in rows]

    def expire(self, now: float | None = None) -> list[tuple[str, str]]:
        """Drop the leases past their ``containerd.io/gc.expire``; (namespace, id) of each."""
        now = time.time() if now is None else now
        gone = []
        for ns, lease_id, blob in self.db.execute("SELECT namespace, id, labels FROM leases").fetchall():
            when = expiry(msgpack.unpackb(blob))
            if when is not None and when <= now:
                gone.append((ns, lease_id))
        for ns, lease_id in gone:
            self.db.execute("DELETE FROM leases WHERE namespace=? AND id=?", (ns, lease_id))
        return gone


def _lease_pb(lease: Lease) -> pb.Lease:
    out = pb.Lease(id=lease.id, labels=lease.labels)
    out.created_at.FromNanoseconds(lease.created_at)
    return out


class LeasesService:
    """The API adapter: decode, call the store, encode."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store

    def raw(self) -> RawService:
        return RawService(
            SERVICE,
            {
                "Create": unary(pb.CreateRequest, self.create),
                "Delete": unary(pb.DeleteRequest, self.delete),
                "List": unary(pb.ListRequest, self.list),
                "AddResource": unary(pb.AddResourceRequest, self.add_resource),
                "DeleteResource": unary(pb.DeleteResourceRequest, self.delete_resource),
                "ListResources": unary(pb.ListResourcesRequest, self.list_resources),
            },
        )

    async def create(self, req: pb.CreateRequest, ctx: Context) -> pb.CreateResponse:
        lease_id = req.id or random_id()
        return pb.CreateResponse(lease=_lease_pb(self.store.create(namespace(), lease_id, req.labels)))

    async def delete(self, req: pb.DeleteRequest, ctx: Context) -> empty_pb2.Empty:
        self.store.delete(namespace(), req.id)
        return empty_pb2.Empty()

    async def list(self, req: pb.ListRequest, ctx: Context) -> pb.ListResponse:
        leases = self.store.leases(namespace())
        if req.filters:
            f = filters.parse(list(req.filters))
            leases = [lease for lease in leases if f.match(filters.adaptor({"id": lease.id}, lease.labels))]
        return pb.ListResponse(leases=[_lease_pb(lease) for lease in leases])

    async def add_resource(self, req: pb.AddResourceRequest, ctx: Context) -> empty_pb2.Empty:
        self.store.add_resource(namespace(), req.id, req.resource.type, req.resource.id)
        return empty_pb2.Empty()

    async def delete_resource(self, req: pb.DeleteResourceRequest, ctx: Context) -> empty_pb2.Empty:
        self.store.delete_resource(namespace(), req.id, req.resource.type, req.resource.id)
        return empty_pb2.Empty()

    async def list_resources(self, req: pb.ListResourcesRequest, ctx: Context) -> pb.ListResourcesResponse:
        return pb.ListResourcesResponse(
            resources=[pb.Resource(type=t, id=i) for t, i in self.store.resources(namespace(), req.id)]
        )
