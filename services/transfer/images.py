"""The image store: image records in SQLite, one database file per namespace
(`<root>/images/<namespace>.db`, WAL, one transaction per change), events after commit.

Implements `contract.ImageStore`; see there for semantics."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from moorage import errdefs
from moorage.database import open_database
from moorage.labels import validate as validate_labels
from moorage.namespaces import namespace, validate_namespace

from . import oci
from .contract import Image
from .oci import Descriptor

EventSink = Callable[[str, str, Mapping[str, str]], Awaitable[None]]
"""(topic, image name, labels) -> published; given the namespace from the running call."""


SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
  name TEXT PRIMARY KEY,
  media_type TEXT NOT NULL,
  digest TEXT NOT NULL,
  size INTEGER NOT NULL,
  annotations TEXT NOT NULL,
  labels TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def validate_image(image: Image) -> None:
    if not image.name:
        raise errdefs.InvalidArgument("image name must not be empty")
    if len(image.name) > 4096 or "\x00" in image.name:
        raise errdefs.InvalidArgument("invalid image name")
    if not image.target.media_type:
        raise errdefs.InvalidArgument(f"image {image.name}: target mediatype must not be empty")
    oci.validate_digest(image.target.digest)
    if image.target.size < 0:
        raise errdefs.InvalidArgument("target size must be non-negative")
    validate_labels(image.labels)


class ImageDB:
    """The SQLite image store. Thread-safe; calls are short and run inline."""

    def __init__(self, root: Path, events: EventSink | None = None) -> None:
        self.root = root / "images"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._events = events
        self._conns: dict[str, sqlite3.Connection] = {}
        self._lock = threading.Lock()

    def _db(self, ns: str) -> sqlite3.Connection:
        validate_namespace(ns)
        with self._lock:
            c = self._conns.get(ns)
            if c is None:
                path = self.root / f"{ns}.db"
                c = open_database(path, _SCHEMA, version=SCHEMA_VERSION, what=f"image database {path}")
                self._conns[ns] = c
            return c

    def close(self) -> None:
        with self._lock:
            for c in self._conns.values():
                c.close()
            self._conns.clear()

    def namespaces_in_use(self, ns: str) -> list[str]:
        path = self.root / f"{validate_namespace(ns)}.db"
        if not path.exists():
            return []
        return [f"image {r[0]}" for r in self._db(ns).execute("SELECT name FROM images ORDER BY name")]

    @staticmethod
    def _row(r: Sequence[object]) -> Image:
        name, mt, dg, size, ann, labels, ca, ua = r
        return Image(str(name), Descriptor(str(mt), str(dg), int(size), json.loads(str(ann))),  # type: ignore[call-overload]
                     json.loads(str(labels)), datetime.fromisoformat(str(ca)), datetime.fromisoformat(str(ua)))

    async def _emit(self, topic: str, name: str, labels: Mapping[str, str]) -> None:
        if self._events is not None:
            await self._events(topic, name, labels)

    async def get(self, name: str) -> Image:
        r = self._db(namespace()).execute("SELECT * FROM images WHERE name=?", (name,)).fetchone()
        if r is None:
            raise errdefs.NotFound(f"image {name!r}: not found")
        return self._row(r)

    async def list(self, filters: Sequence[str] = ()) -> list[Image]:
        rows = [self._row(r) for r in self._db(namespace()).execute("SELECT * FROM images ORDER BY name")]
        if not filters:
            return rows
        from moorage import filters as _filters  # type: ignore[attr-defined, unused-ignore]

        flt = _filters.parse(list(filters))
        return [i for i in rows if flt.match(_adaptor(i))]

    async def create(self, image: Image) -> Image:
        validate_image(image)
        now = _now()
        created = Image(image.name, image.target, dict(image.labels), now, now)
        db = self._db(namespace())
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?)", _values(created))
        except sqlite3.IntegrityError:
            raise errdefs.AlreadyExists(f"image {image.name!r}: already exists") from None
        await self._emit("/images/create", created.name, created.labels)
        return created

    async def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        if not image.name:
            raise errdefs.InvalidArgument("image name must not be empty")
        db = self._db(namespace())
        with db:
            db.execute("BEGIN IMMEDIATE")
            r = db.execute("SELECT * FROM images WHERE name=?", (image.name,)).fetchone()
            if r is None:
                raise errdefs.NotFound(f"image {image.name!r}: not found")
            cur = self._row(r)
            labels = dict(cur.labels)
            target = cur.target
            if not fieldpaths:
                labels, target = dict(image.labels), image.target
            for p in fieldpaths:
                if p == "labels":
                    labels = dict(image.labels)
                elif p.startswith("labels."):
                    k = p[len("labels."):]
                    if image.labels.get(k):
                        labels[k] = image.labels[k]
                    else:
                        labels.pop(k, None)
                elif p == "target":
                    target = image.target
                elif p == "annotations" or p.startswith("annotations."):
                    raise errdefs.InvalidArgument(f"cannot update {p!r} field on image {image.name!r}")
                else:
                    raise errdefs.InvalidArgument(f"cannot update {p!r} field on image {image.name!r}")
            new = Image(cur.name, target, labels, cur.created_at, _now())
            validate_image(new)
            db.execute("DELETE FROM images WHERE name=?", (new.name,))
            db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?)", _values(new))
        await self._emit("/images/update", new.name, new.labels)
        return new

    async def delete(self, name: str, target: str = "") -> None:
        db = self._db(namespace())
        with db:
            db.execute("BEGIN IMMEDIATE")
            r = db.execute("SELECT digest FROM images WHERE name=?", (name,)).fetchone()
            if r is None:
                raise errdefs.NotFound(f"image {name!r}: not found")
            if target and r[0] != target:
                raise errdefs.FailedPrecondition(f"image {name!r} target {r[0]} does not match {target}")
            db.execute("DELETE FROM images WHERE name=?", (name,))
        await self._emit("/images/delete", name, {})


def _values(i: Image) -> tuple[object, ...]:
    assert i.created_at and i.updated_at
    return (i.name, i.target.media_type, i.target.digest, i.target.size,
            json.dumps(dict(i.target.annotations)), json.dumps(dict(i.labels)),
            i.created_at.isoformat(), i.updated_at.isoformat())


def _adaptor(i: Image) -> Callable[[Sequence[str]], tuple[str, bool]]:
    def get(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        head = path[0]
        if head == "name":
            return i.name, True
        if head == "target" and len(path) >= 2:
            if path[1] == "digest":
                return i.target.digest, True
            if path[1] == "mediatype":
                return i.target.media_type, True
            return "", False
        if head == "labels" and len(path) >= 2:
            k = ".".join(path[1:])
            return i.labels.get(k, ""), k in i.labels
        return "", False
    return get
