"""The garbage collector (issue 12), run by the proxy: mark across the services, then sweep.

Like containerd's (core/metadata/gc.go), per namespace:

- roots: every image not past its own ``containerd.io/gc.expire`` (it reaches its target
  digest and follows its labels), container (its snapshotter + snapshot key and labels),
  sandbox (labels), unexpired lease (each resource it holds: ``content``,
  ``snapshots/<snapshotter>``, ``images``), and any blob or snapshot labelled
  ``containerd.io/gc.root``;
- an image past its ``containerd.io/gc.expire`` is no root: it lives while a live object
  names it (a ``containerd.io/gc.ref.image`` label, a lease's ``images`` resource) or while
  what its own ``containerd.io/gc.bref.*`` labels name lives; unreached, it is deleted
  before the sweep and what only it held goes in the same collection, as containerd 2 does;
- edges: ``containerd.io/gc.ref.content[.|/<name>]`` labels (value a digest),
  ``containerd.io/gc.ref.snapshot.<snapshotter>[/...]`` labels (value a key) and
  ``containerd.io/gc.ref.image[.|/<name>]`` labels (value an image name) on images,
  containers, sandboxes, blobs and snapshots; a snapshot's parent. Manifests and indexes reach
  their children through the ``gc.ref.content.{config,l.N,m.N}`` labels the transfer service
  sets when it pulls or imports, as containerd's pull does; the unpacked chain hangs off the
  config blob's ``gc.ref.snapshot.<snapshotter>`` label;
- back references: a blob, snapshot or expired image labelled ``containerd.io/gc.bref.<kind>``
  lives while the content, snapshot, image or container it names does;
- conditional references (containerd 2.3): a blob or image labelled
  ``containerd.io/gc.cond.snapshot.<snapshotter>`` = ``usedat<D|<key>`` (or ``>D``, several
  conditions comma-separated, any one enough) keeps that snapshot while the snapshot's
  ``containerd.io/gc.cond.value-usedat`` (RFC 3339) is less (more) than D ago;
- a lease labelled ``containerd.io/gc.flat`` holds only what it names (no edge is followed
  from its resources, back and conditional references included; an image it holds keeps its
  target blob alone); a lease past ``containerd.io/gc.expire`` is dropped first.

It reads everything through the services' APIs (a ttrpc client to the proxy's own socket),
then deletes what was not reached in batches through the services' own sweep methods
(``moorage.internal.v1.ContentSweep/Delete``, ``moorage.internal.v1.SnapshotsSweep/Remove``:
one metadata transaction per batch, snapshots children before parents; a service without
them gets Content.Delete / Snapshots.Remove one by one), and aborts ingests no lease holds
that saw no write for 24 h. A service that holds roots (images, containers, sandboxes) but
cannot answer stops the collection before anything is deleted; a service that is not
configured holds nothing.

Work in progress is never swept, as containerd's single-transaction collector promises:

- anything created after the collection began is a root;
- the root lists are read twice (before and after walking blobs and snapshots) and joined,
  so an image or container created meanwhile keeps what it names;
- whatever a lease held at any moment of the collection is kept: a lease deleted while it
  runs leaves its resources to this collection as roots (a pull that ends by creating its
  image and dropping its lease), and just before a namespace is swept the leases are read
  again (in process: the lease store is the proxy's) with the doomed set published; an
  AddResource naming a doomed object waits until the sweep is over (then the object is gone
  and its creator makes it anew), any other AddResource goes through at once.

Scheduling (proxy/gcschedule.py, containerd's thresholds): mutations and deletions seen on
the event exchange, and lease deletes, feed the scheduler;
``moorage.internal.v1.GC/Collect`` (msgpack in and out) runs one now and says what it freed.
A lease Delete with ``sync`` runs one before answering, as containerd.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import msgpack

from moorage import errdefs
from moorage.leasing import GC_SERVICE
from moorage.leasing import current_lease
from moorage.namespaces import NAMESPACE_KEY, current_namespace, namespace
from moorage.registry import RawService
from ttrpc.server import Context, RawCall

from .gcschedule import Scheduler, Thresholds
from .leases import FLAT_LABEL, LeaseStore, expiry, rfc3339

log = logging.getLogger("moorage.proxy.gc")

SERVICE = GC_SERVICE
IMAGES = "containerd.services.images.v1.Images"
CONTAINERS = "containerd.services.containers.v1.Containers"
SANDBOXES = "containerd.services.sandbox.v1.Store"
CONTENT = "containerd.services.content.v1.Content"
SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"

ROOT_LABEL = "containerd.io/gc.root"
CONTENT_REF = "containerd.io/gc.ref.content"
SNAPSHOT_REF = "containerd.io/gc.ref.snapshot."
IMAGE_REF = "containerd.io/gc.ref.image"
COND_SNAPSHOT = "containerd.io/gc.cond.snapshot"
USED_AT = "containerd.io/gc.cond.value-usedat"
INGEST_EXPIRY = 24 * 3600.0
"""Seconds an ingest not held by a lease may sit unwritten before it is aborted (containerd's)."""
CONTENT_SWEEP = "moorage.internal.v1.ContentSweep"
SNAPSHOTS_SWEEP = "moorage.internal.v1.SnapshotsSweep"
SWEEP_BATCH = 1000
LIST_PAGE = 1000
"""Blobs per ContentSweep/List call."""
"""Objects per sweep call: one metadata transaction each, short enough that a concurrent
writer of the same store never waits long for the database."""
SWEEP_CONCURRENCY = 32
"""Deletions in flight at once when a service has no sweep method (one call per object)."""
DIRTY_TOPICS = frozenset({"/images/delete", "/containers/delete", "/sandboxes/delete"})
"""Events after which what the deleted record named may have become garbage."""
MUTATION_FILTER = 'topic~="^/(images|containers|sandboxes)/"'
"""The events the scheduler counts. Unlike containerd, direct content and snapshot changes do
not count: work done without a lease and not yet named by a record would otherwise be swept
by a collection that unrelated writes schedule (containerd's clients always hold a lease; a
moorage user's ``moor content ingest`` then ``moor images create`` does not)."""

BREF = "containerd.io/gc.bref."
BREF_SNAPSHOT = BREF + "snapshot."
Node = tuple[str, str, str]
"""("content", "", digest), ("snapshot", snapshotter, key), ("image", "", name) or
("container", "", id) (the last only as a root and as a back-reference target)."""


def _named(key: str, prefix: str) -> bool:
    """``key`` is ``prefix`` or ``prefix`` then ``.`` or ``/`` and a name, as containerd
    matches (``containerd.io/gc.ref.contentx`` is no reference)."""
    return key == prefix or (key.startswith(prefix) and key[len(prefix)] in "./")


def _snapshotter(key: str, prefix: str) -> str:
    """The snapshotter of a ``<prefix><snapshotter>[/<name>]`` label ("" if not one)."""
    return key[len(prefix):].split("/", 1)[0] if key.startswith(prefix) else ""


def label_refs(labels: Mapping[str, str]) -> list[Node]:
    """The nodes a set of labels points at (containerd's gc.ref.content, gc.ref.image and
    gc.ref.snapshot.<snapshotter> conventions)."""
    out: list[Node] = []
    for key, value in labels.items():
        if not value:
            continue
        if _named(key, CONTENT_REF):
            out.append(("content", "", value))
        elif _named(key, IMAGE_REF):
            out.append(("image", "", value))
        elif snapshotter := _snapshotter(key, SNAPSHOT_REF):
            out.append(("snapshot", snapshotter, value))
    return out


def back_refs(labels: Mapping[str, str]) -> list[Node]:
    """What a set of ``containerd.io/gc.bref.*`` labels says its owner lives with: ``content``,
    ``image``, ``container`` (each may end ``.<name>`` or ``/<name>``) and
    ``snapshot.<snapshotter>[/<name>]``."""
    out: list[Node] = []
    for key, value in labels.items():
        if not value or not key.startswith(BREF):
            continue
        kind = next((k for k in ("content", "image", "container") if _named(key, BREF + k)), "")
        if kind:
            out.append((kind, "", value))
        elif snapshotter := _snapshotter(key, BREF_SNAPSHOT):
            out.append(("snapshot", snapshotter, value))
    return out


def conditions(labels: Mapping[str, str]) -> list[tuple[Node, str, float]]:
    """The conditional references of a blob's or image's labels (containerd 2.3's
    ``containerd.io/gc.cond.snapshot[.|/]<snapshotter>[/<name>]`` =
    ``<condition>[,<condition>...]|<key>``, conditions OR'ed): (snapshot, "<" or ">", seconds):
    the snapshot is kept if it was last used less (more) than that long ago. The one condition
    is ``usedat<D`` or ``usedat>D``, D a Go duration; any other (``<=``, ``>=``, ``=``, ``==``,
    ``!=``, another name, a D Go rejects) is ignored, as containerd does.

    The snapshotter is read as containerd's core/metadata/gc.go reads it: the rest of the key
    with its leading ``.`` and ``/`` trimmed, up to the next ``/`` (so ``...snapshotx`` names
    ``x``, as there); a key that leaves none names no snapshot."""
    out: list[tuple[Node, str, float]] = []
    for key, value in labels.items():
        if not key.startswith(COND_SNAPSHOT):
            continue
        snapshotter = key[len(COND_SNAPSHOT):].lstrip("./").split("/", 1)[0]
        conds, bar, name = value.partition("|")
        if not bar or not snapshotter:
            continue
        for cond in conds.split(","):
            at = next((i for i, ch in enumerate(cond) if ch in "!<>="), -1)
            if at < 0 or cond[:at] != "usedat" or cond[at] not in "<>" or cond[at + 1:at + 2] == "=":
                continue
            limit = go_duration(cond[at + 1:])
            if limit is None:
                continue
            out.append((("snapshot", snapshotter, name), cond[at], limit))
    return out


def used_at(labels: Mapping[str, str]) -> list[float]:
    """A snapshot's ``containerd.io/gc.cond.value-usedat*`` values (RFC 3339) as epoch
    seconds; unparsable ones are ignored."""
    return [when for key, value in labels.items()
            if key.startswith(USED_AT) and (when := rfc3339(value)) is not None]


_DURATION_UNITS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
"""Nanoseconds per unit, Go's ``unitMap``."""
_NS_LIMIT = 1 << 63
"""Go's overflow bound: a time.Duration is an int64 of nanoseconds (2^63-1, ~292 years)."""


def go_duration(text: str) -> float | None:
    """Seconds in a Go ``time.ParseDuration`` string ("2h", "1h30m", "-1.5s", "0"); None where
    ParseDuration returns an error, a value past time.Duration's range included."""
    ns = go_duration_ns(text)
    return None if ns is None else ns / 1e9


def go_duration_ns(text: str) -> int | None:
    """Go's ``time.ParseDuration`` (time/format.go) step for step: integer nanoseconds, each
    fraction truncated through float64 as Go does; None for its "invalid duration", "missing
    unit" and "unknown unit" errors. Magnitudes above 2^63-1 ns are errors, except -2^63."""
    s = text
    neg = False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            return None
        value, i = 0, 0
        while i < len(s) and "0" <= s[i] <= "9":  # Go's leadingInt
            if value > _NS_LIMIT // 10:
                return None
            value = value * 10 + ord(s[i]) - 48
            if value > _NS_LIMIT:
                return None
            i += 1
        pre, s = i > 0, s[i:]
        fraction, scale, post = 0, 1.0, False
        if s[:1] == ".":  # Go's leadingFraction: digits past int64 precision are dropped
            s, i, overflow = s[1:], 0, False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    longer = fraction * 10 + ord(s[i]) - 48
                    if fraction > (_NS_LIMIT - 1) // 10 or longer > _NS_LIMIT:
                        overflow = True
                    else:
                        fraction, scale = longer, scale * 10
                i += 1
            post, s = i > 0, s[i:]
        if not (pre or post):
            return None
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        unit = _DURATION_UNITS.get(s[:i])
        if unit is None:
            return None
        s = s[i:]
        if value > _NS_LIMIT // unit:
            return None
        value *= unit
        if fraction > 0:
            value += int(float(fraction) * (float(unit) / scale))
            if value > _NS_LIMIT:
                return None
        total = (total + value) % (1 << 64)  # a uint64 in Go
        if total > _NS_LIMIT:
            return None
    if neg:
        return -total
    return None if total > _NS_LIMIT - 1 else total


@dataclass
class Blob:
    digest: str
    size: int
    labels: Mapping[str, str]
    new: bool
    """Created after the collection began: a root, never swept."""


@dataclass
class Snap:
    snapshotter: str
    key: str
    parent: str
    labels: Mapping[str, str]
    new: bool
    depth: int = 0
    """Set by :func:`plan` on dead snapshots: 1 + the depth of a dead parent (children deeper)."""


@dataclass
class Image:
    """An image record as one read of the images list saw it."""

    name: str
    target: str
    labels: Mapping[str, str]
    expired: bool
    """Past its ``containerd.io/gc.expire``: no root, it lives only while something live names it."""
    updated_at: datetime | None = None
    """As read: the image is deleted only if a read just before the delete finds it unchanged."""


@dataclass
class View:
    """What one namespace holds, as read from the services."""

    roots: list[tuple[Node, bool]] = field(default_factory=list)
    """(node, flat): flat roots are marked without following their edges."""
    images: dict[str, list[Image]] = field(default_factory=dict)
    """name -> every version of the image the collection read (the list is read twice): a
    root unless every version is expired; a reached image follows the edges of each."""
    blobs: dict[str, Blob] | None = None
    """None: the content service could not be read (nothing is swept there)."""
    snapshots: dict[str, dict[str, Snap]] = field(default_factory=dict)
    """snapshotter -> key -> snapshot; a snapshotter that could not be read is absent."""


def plan(view: View, now: float | None = None) -> tuple[list[Image], list[Blob], list[Snap]]:
    """Mark from the roots; what is left unreached: expired images (the last version read),
    blobs, snapshots ordered children first. ``now`` (epoch s) is the time conditions are
    judged at."""
    blobs = view.blobs or {}
    seen: set[Node] = set()
    """Marked (live)."""
    expanded: set[Node] = set()
    """Marked with its label references followed (flat roots are marked only)."""
    stack: list[tuple[Node, bool]] = []

    # containerd's backRefs: what else a node keeps once its references are followed (a node
    # held flat keeps none). An object labelled gc.bref.<kind>=<x> lives while x does; a blob
    # or image labelled gc.cond.snapshot.<snapshotter> keeps the snapshot its condition holds for
    dependents: dict[Node, list[Node]] = {}
    for blob in blobs.values():
        for target in back_refs(blob.labels):
            dependents.setdefault(target, []).append(("content", "", blob.digest))
    for sn, snaps in view.snapshots.items():
        for snap in snaps.values():
            for target in back_refs(snap.labels):
                dependents.setdefault(target, []).append(("snapshot", sn, snap.key))
    for name, versions in view.images.items():
        for image in versions:
            if image.expired:  # an unexpired image is a root: its back references add nothing
                for target in back_refs(image.labels):
                    dependents.setdefault(target, []).append(("image", "", name))
    for referrer, target in _conditional(view, time.time() if now is None else now):
        dependents.setdefault(referrer, []).append(target)

    def reach(node: Node, labels: bool = True) -> None:
        if node in expanded or (node in seen and not labels):
            return
        seen.add(node)
        if labels:
            expanded.add(node)
        stack.append((node, labels))

    for node, flat in view.roots:
        reach(node, not flat)
    for name, versions in view.images.items():
        if not all(image.expired for image in versions):
            reach(("image", "", name))
    for blob in blobs.values():
        if blob.new or ROOT_LABEL in blob.labels:
            reach(("content", "", blob.digest))
    for sn, snaps in view.snapshots.items():
        for snap in snaps.values():
            if snap.new or ROOT_LABEL in snap.labels:
                reach(("snapshot", sn, snap.key))
    while stack:
        node, labels = stack.pop()
        if labels:
            for dependent in dependents.get(node, ()):
                reach(dependent)
        kind, sn, ident = node
        if kind == "container":
            continue
        if kind == "image":
            for image in view.images.get(ident, ()):
                if image.target:
                    reach(("content", "", image.target), labels)
                if labels:
                    for ref in label_refs(image.labels):
                        reach(ref)
        elif kind == "content":
            found = blobs.get(ident)
            if found is not None and labels:
                for ref in label_refs(found.labels):
                    reach(ref)
        else:
            snap_found = view.snapshots.get(sn, {}).get(ident)
            if snap_found is not None:
                # a parent always stays with its child, flat or not
                if snap_found.parent:
                    reach(("snapshot", sn, snap_found.parent), labels)
                if labels:
                    for ref in label_refs(snap_found.labels):
                        reach(ref)
    dead_blobs = [b for b in blobs.values() if ("content", "", b.digest) not in seen]
    dead_snaps: list[Snap] = []
    for sn, snaps in view.snapshots.items():
        dead = {k: s for k, s in snaps.items() if ("snapshot", sn, k) not in seen}
        # children first: a dead snapshot's children are dead too (a live child marks its parent)
        depth: dict[str, int] = {}
        for start in dead:
            chain: list[str] = []
            key = start
            while key in dead and key not in depth:
                chain.append(key)
                key = dead[key].parent
            base = depth.get(key, 0)
            for k in reversed(chain):
                base += 1
                depth[k] = base
        for snap in dead.values():
            snap.depth = depth[snap.key]
        dead_snaps += sorted(dead.values(), key=lambda s: -s.depth)
    dead_images = [versions[-1] for name, versions in view.images.items() if ("image", "", name) not in seen]
    return dead_images, dead_blobs, dead_snaps


def _conditional(view: View, now: float) -> list[tuple[Node, Node]]:
    """(blob or image, snapshot) for each ``gc.cond.snapshot`` reference whose condition holds."""
    used = {("snapshot", sn, snap.key): when for sn, snaps in view.snapshots.items()
            for snap in snaps.values() if (when := used_at(snap.labels))}
    if not used:
        return []  # no snapshot says when it was used: no condition holds
    referrers = [(("content", "", b.digest), b.labels) for b in (view.blobs or {}).values()]
    referrers += [(("image", "", i.name), i.labels) for versions in view.images.values() for i in versions]
    out: list[tuple[Node, Node]] = []
    for referrer, labels in referrers:
        for target, op, limit in conditions(labels):
            ages = [now - when for when in used.get(target, ())]
            if any(age < limit if op == "<" else age > limit for age in ages):
                out.append((referrer, target))
    return out


@dataclass
class Freed:
    """What one collection removed, per namespace."""

    content: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    snapshots: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    ingests: dict[str, list[str]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)
    """Images deleted because their ``containerd.io/gc.expire`` had passed and nothing live
    named them."""
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent reading (roots, blobs, snapshots), planning and sweeping."""

    def timed(self, phase: str, since: float) -> float:
        now = time.monotonic()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - since
        return now

    def to_wire(self) -> dict[str, Any]:
        names = sorted(set(self.content) | set(self.snapshots) | set(self.ingests) | set(self.images))
        return {
            "namespaces": {
                ns: {
                    "content": [{"digest": d, "size": s} for d, s in self.content.get(ns, [])],
                    "snapshots": [{"snapshotter": sn, "key": k} for sn, k in self.snapshots.get(ns, [])],
                    "ingests": list(self.ingests.get(ns, [])),
                    "images": list(self.images.get(ns, [])),
                }
                for ns in names
            },
            "errors": self.errors,
            "seconds": self.seconds,
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
        }


class Services(Protocol):
    """What the collector reads and deletes through; the namespace is the contextvar's."""

    async def images(self) -> list[tuple[str, str, Mapping[str, str], datetime | None]]: ...
    """(name, target digest, labels, updated_at) of every image."""

    async def image(self, name: str) -> tuple[str, Mapping[str, str], datetime | None]: ...
    """(target digest, labels, updated_at) of one image (NotFound if there is none)."""

    async def containers(self) -> list[tuple[str, str, str, Mapping[str, str]]]: ...
    """(id, snapshotter, snapshot key, labels) of every container."""

    async def sandboxes(self) -> list[Mapping[str, str]]: ...

    async def blobs(self) -> list[tuple[str, int, datetime, Mapping[str, str]]]: ...

    def snapshotters(self) -> Sequence[str]: ...

    async def snapshots(self, snapshotter: str) -> list[tuple[str, str, int, Mapping[str, str]]]: ...
    """(key, parent, created_at ns, labels)."""

    async def delete_blobs(self, digests: Sequence[str]) -> tuple[list[str], dict[str, str]]: ...
    """Delete blobs: (deleted, {digest: why not}); one already gone is in neither."""

    async def remove_snapshots(self, snapshotter: str, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]: ...
    """Remove snapshots in the order given (children first): (removed, {key: why not})."""

    async def ingests(self) -> list[tuple[str, datetime]]: ...
    """(ref, updated_at) of every ingest in progress."""

    async def abort_ingest(self, ref: str) -> None: ...

    async def delete_image(self, name: str, target: str) -> None: ...
    """Delete the image if it still points at ``target`` (NotFound/FailedPrecondition else):
    Images.Delete's one condition."""


class RemoteServices:
    """:class:`Services` over the services' own clients, through the proxy's socket."""

    def __init__(self, client: Any) -> None:
        from moorage.services.content.client import ContentClient
        from moorage.services.runtime.client import ContainersClient
        from moorage.services.sandbox.client import StoreClient
        from moorage.services.snapshots.client import RemoteSnapshotters
        from moorage.services.transfer.client import ImagesClient

        self.client = client
        self.content = ContentClient(client)
        self.images_client = ImagesClient(client)
        self.containers_client = ContainersClient(client)
        self.sandbox_client = StoreClient(client)
        self.snapshotters_client = RemoteSnapshotters(client)

    async def images(self) -> list[tuple[str, str, Mapping[str, str], datetime | None]]:
        return [(i.name, i.target.digest, i.labels, i.updated_at) for i in await self.images_client.list()]

    async def image(self, name: str) -> tuple[str, Mapping[str, str], datetime | None]:
        i = await self.images_client.get(name)
        return i.target.digest, i.labels, i.updated_at

    async def containers(self) -> list[tuple[str, str, str, Mapping[str, str]]]:
        return [(c.id, c.snapshotter, c.snapshot_key, c.labels) for c in await self.containers_client.list()]

    async def sandboxes(self) -> list[Mapping[str, str]]:
        return [s.labels for s in await self.sandbox_client.list()]

    async def blobs(self) -> list[tuple[str, int, datetime, Mapping[str, str]]]:
        out: list[tuple[str, int, datetime, Mapping[str, str]]] = []
        after = ""
        while True:
            reply = await self._sweep(CONTENT_SWEEP, "List", {"after": after, "limit": LIST_PAGE})
            if reply is None:  # a content service without the sweep methods
                return [(i.digest, i.size, i.created_at, i.labels) async for i in self.content.walk()]
            rows = reply["blobs"]
            out += [(d, size, _from_ns(created), msgpack.unpackb(labels) if labels else {})
                    for d, size, created, labels in rows]
            if len(rows) < LIST_PAGE:
                return out
            after = rows[-1][0]

    def snapshotters(self) -> Sequence[str]:
        return self.snapshotters_client.names()

    async def snapshots(self, snapshotter: str) -> list[tuple[str, str, int, Mapping[str, str]]]:
        sn = self.snapshotters_client.get(snapshotter)
        return [(i.name, i.parent, i.created_at, i.labels) async for i in sn.walk()]

    async def _sweep(self, service: str, method: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """A sweep call's reply; None when the service has no such method."""
        try:
            reply = await self.client.unary_raw(service, method, msgpack.packb(request),
                                                metadata={NAMESPACE_KEY: namespace()})
        except errdefs.NotImplemented:
            return None
        out: dict[str, Any] = msgpack.unpackb(reply)
        return out

    async def delete_blobs(self, digests: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        reply = await self._sweep(CONTENT_SWEEP, "Delete", {"digests": list(digests)})
        if reply is not None:
            return list(reply["deleted"]), dict(reply["errors"])
        return await _one_by_one(digests, self.content.delete)

    async def remove_snapshots(self, snapshotter: str, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        reply = await self._sweep(SNAPSHOTS_SWEEP, "Remove", {"snapshotter": snapshotter, "keys": list(keys)})
        if reply is not None:
            return list(reply["removed"]), dict(reply["errors"])
        removed: list[str] = []
        errors: dict[str, str] = {}
        sn = self.snapshotters_client.get(snapshotter)
        for key in keys:  # in order: a child before its parent
            got, failed = await _one_by_one([key], sn.remove)
            removed += got
            errors.update(failed)
        return removed, errors

    async def ingests(self) -> list[tuple[str, datetime]]:
        return [(st.ref, st.updated_at) for st in await self.content.list_statuses()]

    async def abort_ingest(self, ref: str) -> None:
        await self.content.abort(ref)

    async def delete_image(self, name: str, target: str) -> None:
        await self.images_client.delete(name, target)


async def _one_by_one(ids: Sequence[str], delete: Callable[[str], Awaitable[None]]) -> tuple[list[str], dict[str, str]]:
    """Delete each id with its own call, up to SWEEP_CONCURRENCY at once."""
    sem = asyncio.Semaphore(SWEEP_CONCURRENCY)
    done: list[str] = []
    errors: dict[str, str] = {}

    async def one(ident: str) -> None:
        async with sem:
            try:
                await delete(ident)
            except errdefs.NotFound:
                return
            except errdefs.Error as exc:
                errors[ident] = str(exc)
                return
        done.append(ident)

    await asyncio.gather(*(one(i) for i in ids))
    return done, errors


_ABSENT = (errdefs.NotImplemented, errdefs.NotFound)


class Collector:
    """One collection at a time; scheduled (see gcschedule), or run on demand."""

    def __init__(
        self,
        connect: Callable[[], Any],
        leases: LeaseStore,
        namespaces: Callable[[], Iterable[str]],
        routed: Collection[str],
        thresholds: Thresholds | None = None,
        ingest_expiry: float = INGEST_EXPIRY,
        sweep_batch: int = SWEEP_BATCH,
    ) -> None:
        self.connect = connect
        """async () -> (Services, close coroutine function)."""
        self.leases = leases
        self.namespaces = namespaces
        self.routed = frozenset(routed)
        self.ingest_expiry = ingest_expiry
        self.sweep_batch = sweep_batch
        self.lock = asyncio.Lock()
        self.scheduler = Scheduler(self._scheduled, thresholds)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.collections = 0
        self.running = False
        """A collection is between its start and its last sweep."""
        self.released: dict[str, list[tuple[str, str]]] = {}
        """namespace -> (type, id) held by leases deleted while a collection runs: its roots."""
        self.doomed: dict[str, set[Node]] = {}
        """namespace -> what the sweep in progress deletes (AddResource on these waits)."""
        self.swept = asyncio.Event()
        self.swept.set()

    # -- scheduling -------------------------------------------------------------------------

    def trigger(self) -> None:
        """Collect at the scheduler's next opportunity."""
        self.scheduler.trigger()

    def mutated(self, dirty: bool, stamp: float | None = None) -> None:
        """Something was created, changed or (``dirty``) deleted at ``stamp`` (epoch s)."""
        self.scheduler.mutated(dirty, stamp)

    async def _scheduled(self) -> None:
        freed = await self.collect()
        log.info("scheduled collection freed %d blobs, %d snapshots in %.3fs",
                 sum(len(v) for v in freed.content.values()),
                 sum(len(v) for v in freed.snapshots.values()), freed.seconds)

    async def watch(self, exchange: Any) -> None:
        """Feed the scheduler from the exchange (re-subscribing if it ever drops us)."""
        while True:
            sub = exchange.subscribe([MUTATION_FILTER])
            try:
                while (env := await sub.queue.get()) is not None:
                    stamp = env.timestamp.ToNanoseconds() / 1e9 if env.HasField("timestamp") else None
                    self.mutated(env.topic in DIRTY_TOPICS, stamp)
            finally:
                exchange.unsubscribe(sub)
            if not sub.overflowed:
                return
            self.mutated(True)

    def start(self, exchange: Any) -> None:
        task = asyncio.get_running_loop().create_task(self.watch(exchange))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.close()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled or already reported
                pass

    # -- leases while a collection runs ------------------------------------------------------

    def lease_deleted(self, ns: str, resources: Sequence[tuple[str, str]]) -> None:
        """A lease holding ``resources`` is being deleted: the running collection keeps them."""
        if self.running:
            self.released.setdefault(ns, []).extend(resources)

    async def adding(self, ns: str, rtype: str, rid: str) -> None:
        """Wait, if the object an AddResource names is being swept, until the sweep ends."""
        doomed = self.doomed.get(ns)
        if doomed and _node(rtype, rid) in doomed:
            await self.swept.wait()

    # -- one collection ---------------------------------------------------------------------

    async def collect(self) -> Freed:
        async with self.lock:
            token = current_lease.set("")  # the collector's own calls hold nothing
            began = time.time()
            self.running = True
            try:
                services, close = await self.connect()
                try:
                    freed = await self._collect(services)
                finally:
                    await close()
            finally:
                self.running = False
                self.released.clear()
                current_lease.reset(token)
            self.scheduler.ran(began, freed.seconds)
            return freed

    async def _collect(self, services: Services) -> Freed:
        began = time.monotonic()
        start_ns = time.time_ns()
        start_dt = datetime.fromtimestamp(start_ns / 1e9, timezone.utc).replace(
            microsecond=(start_ns // 1000) % 1_000_000)
        self.collections += 1
        self.leases.expire()
        freed = Freed()
        for ns in sorted(set(self.namespaces())):
            token = current_namespace.set(ns)
            try:
                view = View()
                held_ingests: set[str] = set()
                # the roots as they were at the start (read alongside the walk) and after it
                t = time.monotonic()
                first, _ = await asyncio.gather(self._roots(services, ns, held_ingests, view.images),
                                                self._read(services, view, start_ns, start_dt, freed, ns))
                view.roots += first
                view.roots += await self._roots(services, ns, held_ingests, view.images)
                t = freed.timed("read", t)
                dead_images, dead_blobs, dead_snaps = plan(view)
                t = freed.timed("plan", t)
                if dead_images or dead_blobs or dead_snaps:
                    # publish the doomed set, then read the leases once more: from here an
                    # AddResource naming a doomed object waits for the sweep
                    self.doomed[ns] = {("content", "", b.digest) for b in dead_blobs} | {
                        ("snapshot", sn.snapshotter, sn.key) for sn in dead_snaps} | {
                        ("image", "", i.name) for i in dead_images}
                    self.swept.clear()
                    try:
                        late = self._lease_roots(ns, held_ingests)
                        late += [(_node(t, i), False) for t, i in self.released.get(ns, []) if t != "ingests"]
                        if any(node in self.doomed[ns] for node, _ in late):
                            view.roots += late
                            dead_images, dead_blobs, dead_snaps = plan(view)
                        kept = await self._delete_images(services, ns, dead_images, freed)
                        if kept:  # still there (moved, or not deleted): they keep what they name
                            view.roots += [(("image", "", i.name), False) for i in kept]
                            _, dead_blobs, dead_snaps = plan(view)
                        await self._sweep(services, ns, dead_blobs, dead_snaps, freed)
                    finally:
                        self.doomed.pop(ns, None)
                        self.swept.set()
                        freed.timed("sweep", t)
                await self._stale_ingests(services, ns, held_ingests, start_ns, freed)
            finally:
                current_namespace.reset(token)
        freed.seconds = time.monotonic() - began
        return freed

    async def _listed(self, service: str, what: str, call: Callable[[], Any]) -> Any:
        """The result of listing roots; [] if the service is absent; stops the collection if
        a configured one cannot answer."""
        if service not in self.routed:
            return []
        try:
            return await call()
        except _ABSENT:
            return []
        except errdefs.Error as exc:
            raise errdefs.Unavailable(f"garbage collection stopped: cannot list {what}: {exc}") from exc

    async def _delete_images(self, services: Services, ns: str, images: Sequence[Image],
                             freed: Freed) -> list[Image]:
        """Delete the expired images nothing live named, each only if it is as the collection
        read it; those still there afterwards (changed, or an error).

        containerd deletes them in the transaction that read them. Here Images.Delete can be
        made conditional on the target alone, so the image is read again first and kept if
        its target, labels or updated_at differ (its ``gc.expire`` removed or moved, say);
        the delete then names the target. An update landing between that read and the delete
        (one round trip) still goes unseen."""
        kept: list[Image] = []
        for image in images:
            try:
                target, labels, updated = await services.image(image.name)
                if (target, dict(labels), updated) != (image.target, dict(image.labels), image.updated_at):
                    kept.append(image)
                    continue
                await services.delete_image(image.name, image.target)
            except errdefs.NotFound:
                continue
            except errdefs.FailedPrecondition:
                kept.append(image)
                continue
            except errdefs.Error as exc:
                freed.errors.append(f"{ns}: expired image {image.name}: {exc}")
                kept.append(image)
                continue
            freed.images.setdefault(ns, []).append(image.name)
        return kept

    def _lease_roots(self, ns: str, ingests: set[str]) -> list[tuple[Node, bool]]:
        roots: list[tuple[Node, bool]] = []
        for lease in self.leases.leases(ns):
            flat = FLAT_LABEL in lease.labels
            try:
                held = self.leases.resources(ns, lease.id)
            except errdefs.NotFound:
                continue
            for rtype, rid in held:
                if rtype == "ingests":
                    ingests.add(rid)
                elif rtype in ("content", "images") or rtype.startswith("snapshots/"):
                    roots.append((_node(rtype, rid), flat))
        return roots

    async def _roots(self, services: Services, ns: str, ingests: set[str],
                     images: dict[str, list[Image]]) -> list[tuple[Node, bool]]:
        """The roots of the namespace; the images read go to ``images`` (:func:`plan` takes the
        unexpired ones as roots)."""
        roots: list[tuple[Node, bool]] = []
        now = time.time()
        for name, target, labels, updated in await self._listed(IMAGES, "images", services.images):
            when = expiry(labels)
            images.setdefault(name, []).append(
                Image(name, target, labels, when is not None and when <= now, updated))
        for cid, snapshotter, key, labels in await self._listed(CONTAINERS, "containers", services.containers):
            roots.append((("container", "", cid), False))
            if snapshotter and key:
                roots.append((("snapshot", snapshotter, key), False))
            roots += [(n, False) for n in label_refs(labels)]
        for labels in await self._listed(SANDBOXES, "sandboxes", services.sandboxes):
            roots += [(n, False) for n in label_refs(labels)]
        roots += self._lease_roots(ns, ingests)
        roots += [(_node(t, i), False) for t, i in self.released.get(ns, []) if t != "ingests"]
        return roots

    async def _stale_ingests(self, services: Services, ns: str, held: set[str], start_ns: int,
                             freed: Freed) -> None:
        """Abort ingests no lease holds that saw no write for ``ingest_expiry`` seconds."""
        if CONTENT not in self.routed:
            return
        cutoff = datetime.fromtimestamp(start_ns / 1e9 - self.ingest_expiry, timezone.utc)
        try:
            statuses = await services.ingests()
        except errdefs.Error as exc:
            freed.errors.append(f"{ns}: ingests not collected: {exc}")
            return
        for ref, updated in statuses:
            if ref in held or _aware(updated) >= cutoff:
                continue
            try:
                await services.abort_ingest(ref)
            except (errdefs.NotFound, errdefs.Unavailable):
                continue  # gone, or a writer holds it right now
            except errdefs.Error as exc:
                freed.errors.append(f"{ns}: ingest {ref}: {exc}")
                continue
            freed.ingests.setdefault(ns, []).append(ref)

    async def _read(self, services: Services, view: View, start_ns: int, start_dt: datetime,
                    freed: Freed, ns: str) -> None:
        if CONTENT in self.routed:
            try:
                view.blobs = {
                    d: Blob(d, size, labels, _aware(created) >= start_dt)
                    for d, size, created, labels in await services.blobs()
                }
            except errdefs.Error as exc:
                freed.errors.append(f"{ns}: content not collected: {exc}")
        if SNAPSHOTS in self.routed:
            for sn in services.snapshotters():
                try:
                    view.snapshots[sn] = {
                        key: Snap(sn, key, parent, labels, created >= start_ns)
                        for key, parent, created, labels in await services.snapshots(sn)
                    }
                except _ABSENT:
                    continue
                except errdefs.Error as exc:
                    freed.errors.append(f"{ns}: snapshotter {sn} not collected: {exc}")

    async def _sweep(self, services: Services, ns: str, blobs: list[Blob], snaps: list[Snap],
                     freed: Freed) -> None:
        """Delete in batches: blobs, then each snapshotter's snapshots children first."""
        sizes = {b.digest: b.size for b in blobs}
        digests = sorted(sizes)
        for at in range(0, len(digests), self.sweep_batch):
            batch = digests[at:at + self.sweep_batch]
            try:
                deleted, errors = await services.delete_blobs(batch)
            except errdefs.Error as exc:
                freed.errors.append(f"{ns}: content not swept: {exc}")
                break
            freed.content.setdefault(ns, []).extend((d, sizes[d]) for d in deleted)
            freed.errors += [f"{ns}: content {d}: {why}" for d, why in sorted(errors.items())]
        if ns in freed.content:
            freed.content[ns].sort()
        by_snapshotter: dict[str, list[str]] = {}
        for snap in snaps:  # already children first
            by_snapshotter.setdefault(snap.snapshotter, []).append(snap.key)
        for sn, keys in by_snapshotter.items():
            for at in range(0, len(keys), self.sweep_batch):
                try:
                    removed, errors = await services.remove_snapshots(sn, keys[at:at + self.sweep_batch])
                except errdefs.Error as exc:
                    freed.errors.append(f"{ns}: snapshotter {sn} not swept: {exc}")
                    break
                freed.snapshots.setdefault(ns, []).extend((sn, k) for k in removed)
                freed.errors += [f"{ns}: snapshot {sn}/{k}: {why}" for k, why in errors.items()]


def _node(rtype: str, rid: str) -> Node:
    """The node of a lease resource (``content``, ``images`` or ``snapshots/<name>``)."""
    if rtype.startswith("snapshots/"):
        return ("snapshot", rtype.split("/", 1)[1], rid)
    if rtype == "images":
        return ("image", "", rid)
    return ("content", "", rid)


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).replace(microsecond=(ns % 1_000_000_000) // 1000)


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def remote(address: str) -> Callable[[], Any]:
    """A ``connect`` for :class:`Collector`: one connection to ``address`` per collection."""

    async def connect() -> tuple[Services, Callable[[], Any]]:
        from moorage.rpc import connect as dial

        client = await dial(address)
        return RemoteServices(client), client.close

    return connect


def raw(collector: Collector) -> RawService:
    """``moorage.internal.v1.GC/Collect``: request ignored (msgpack map), reply the freed map."""

    async def collect(ctx: Context, call: RawCall) -> None:
        freed = await collector.collect()
        await call.respond(msgpack.packb(freed.to_wire()))

    return RawService(SERVICE, {"Collect": collect})


def wrap_leases(service: RawService, collector: Collector, auto: bool = True) -> RawService:
    """The Leases service as the collector needs it: Delete hands the lease's resources to a
    running collection, then collects now when ``sync`` is set, else tells the scheduler (when
    ``auto``); AddResource waits while the object it names is being swept; DeleteResource
    tells the scheduler (a deletion: what it held may be garbage now)."""
    from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb

    inner_delete = service.methods["Delete"]
    inner_add = service.methods["AddResource"]
    inner_drop = service.methods["DeleteResource"]

    async def delete(ctx: Context, call: RawCall) -> None:
        try:
            req = pb.DeleteRequest.FromString(call.payload)
        except Exception:  # noqa: BLE001 - the inner handler reports a bad payload
            req = pb.DeleteRequest()
        if collector.running and req.id:
            try:
                ns = namespace()
                collector.lease_deleted(ns, collector.leases.resources(ns, req.id))
            except errdefs.Error:
                pass  # no namespace or no such lease: the inner handler says so
        if req.sync:
            # run the delete, then collect, then answer: hold the reply until the sweep is done
            held = _HeldCall(call)
            await inner_delete(ctx, held)  # type: ignore[arg-type]
            if held.ok:
                try:
                    await collector.collect()
                except errdefs.Error as exc:
                    log.warning("collection after a sync lease delete did not run: %s", exc)
            await held.release()
            return
        await inner_delete(ctx, call)
        if auto:
            collector.mutated(True)

    async def add(ctx: Context, call: RawCall) -> None:
        if collector.doomed:
            try:
                req = pb.AddResourceRequest.FromString(call.payload)
                await collector.adding(namespace(), req.resource.type, req.resource.id)
            except Exception:  # noqa: BLE001 - the inner handler reports what is wrong
                pass
        await inner_add(ctx, call)  # not a mutation for the scheduler: nothing became garbage

    async def drop(ctx: Context, call: RawCall) -> None:
        await inner_drop(ctx, call)
        if auto:
            collector.mutated(True)

    methods = dict(service.methods)
    methods.update({"Delete": delete, "AddResource": add, "DeleteResource": drop})
    return RawService(service.service, methods)


class _HeldCall:
    """A RawCall whose unary response is held until :meth:`release`."""

    def __init__(self, call: RawCall) -> None:
        self.call = call
        self.payload = call.payload
        self.metadata = call.metadata
        self.reply: bytes | None = None
        self.failure: tuple[int, str] | None = None
        self.ok = False

    async def respond(self, payload: bytes) -> None:
        self.reply = payload
        self.ok = True

    async def fail(self, code: int, message: str) -> None:
        self.failure = (code, message)

    async def release(self) -> None:
        if self.reply is not None:
            await self.call.respond(self.reply)
        elif self.failure is not None:
            await self.call.fail(*self.failure)
