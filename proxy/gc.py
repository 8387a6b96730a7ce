"""The garbage collector (issue 12), run by the proxy: mark across the services, then sweep.

Like containerd's (core/metadata/gc.go), per namespace:

- roots: every image (its target digest and its ``containerd.io/gc.ref.*`` labels), container
  (its snapshotter + snapshot key and labels), sandbox (labels), unexpired lease (each
  resource it holds), and any blob or snapshot labelled ``containerd.io/gc.root``;
- edges: ``containerd.io/gc.ref.content*`` labels (value a digest) and
  ``containerd.io/gc.ref.snapshot.<snapshotter>[/...]`` labels (value a key) on images,
  containers, sandboxes, blobs and snapshots; a snapshot's parent. Manifests and indexes reach
  their children through the ``gc.ref.content.{config,l.N,m.N}`` labels the transfer service
  sets when it pulls or imports, as containerd's pull does; the unpacked chain hangs off the
  config blob's ``gc.ref.snapshot.<snapshotter>`` label;
- a lease labelled ``containerd.io/gc.flat`` holds only what it names (no edge is followed
  from its resources); a lease past ``containerd.io/gc.expire`` is dropped first.

It reads everything through the services' APIs (a ttrpc client to the proxy's own socket),
then deletes what was not reached: blobs (Content.Delete) and snapshots (Snapshots.Remove,
children before parents), and aborts ingests no lease holds that saw no write for 24 h. Nothing created after the collection began is swept: such objects
count as roots. The root lists are read twice (before and after walking blobs and snapshots)
and joined, so an image or container created meanwhile keeps what it names. A service that
holds roots (images, containers, sandboxes) but cannot answer stops the collection before
anything is deleted; a service that is not configured holds nothing.

Scheduling: image, container and sandbox delete events seen by the exchange, and lease
deletes, arm one collection ``delay`` seconds later (a burst of ``rm`` gives one collection);
``moorage.internal.v1.GC/Collect`` (msgpack in and out) runs one now and says what it freed.
A lease Delete with ``sync`` runs one before answering, as containerd.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import msgpack

from moorage import errdefs
from moorage.namespaces import current_namespace
from moorage.registry import RawService
from ttrpc.server import Context, RawCall

from .leases import FLAT_LABEL, LeaseStore

log = logging.getLogger("moorage.proxy.gc")

SERVICE = "moorage.internal.v1.GC"
IMAGES = "containerd.services.images.v1.Images"
CONTAINERS = "containerd.services.containers.v1.Containers"
SANDBOXES = "containerd.services.sandbox.v1.Store"
CONTENT = "containerd.services.content.v1.Content"
SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"

ROOT_LABEL = "containerd.io/gc.root"
CONTENT_REF = "containerd.io/gc.ref.content"
SNAPSHOT_REF = "containerd.io/gc.ref.snapshot."
INGEST_EXPIRY = 24 * 3600.0
"""Seconds an ingest not held by a lease may sit unwritten before it is aborted (containerd's)."""
SWEEP_CONCURRENCY = 32
"""Deletions in flight at once during a sweep."""
DELETE_TOPICS = ("/images/delete", "/containers/delete", "/sandboxes/delete")

Node = tuple[str, str, str]
"""("content", "", digest) or ("snapshot", snapshotter, key)."""


def label_refs(labels: Mapping[str, str]) -> list[Node]:
    """The nodes a set of labels points at (containerd's gc.ref.* conventions)."""
    out: list[Node] = []
    for key, value in labels.items():
        if not value:
            continue
        if key.startswith(CONTENT_REF):
            out.append(("content", "", value))
        elif key.startswith(SNAPSHOT_REF):
            snapshotter = key[len(SNAPSHOT_REF):].split("/", 1)[0]
            if snapshotter:
                out.append(("snapshot", snapshotter, value))
    return out


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
class View:
    """What one namespace holds, as read from the services."""

    roots: list[tuple[Node, bool]] = field(default_factory=list)
    """(node, flat): flat roots are marked without following their edges."""
    blobs: dict[str, Blob] | None = None
    """None: the content service could not be read (nothing is swept there)."""
    snapshots: dict[str, dict[str, Snap]] = field(default_factory=dict)
    """snapshotter -> key -> snapshot; a snapshotter that could not be read is absent."""


def plan(view: View) -> tuple[list[Blob], list[Snap]]:
    """Mark from the roots; what is left unreached, snapshots ordered children first."""
    blobs = view.blobs or {}
    seen: set[Node] = set()
    """Marked (live)."""
    expanded: set[Node] = set()
    """Marked with its label references followed (flat roots are marked only)."""
    stack: list[tuple[Node, bool]] = []

    def reach(node: Node, labels: bool = True) -> None:
        if node in expanded or (node in seen and not labels):
            return
        seen.add(node)
        if labels:
            expanded.add(node)
        stack.append((node, labels))

    for node, flat in view.roots:
        reach(node, not flat)
    for blob in blobs.values():
        if blob.new or ROOT_LABEL in blob.labels:
            reach(("content", "", blob.digest))
    for sn, snaps in view.snapshots.items():
        for snap in snaps.values():
            if snap.new or ROOT_LABEL in snap.labels:
                reach(("snapshot", sn, snap.key))
    while stack:
        (kind, sn, ident), labels = stack.pop()
        if kind == "content":
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
    return dead_blobs, dead_snaps


@dataclass
class Freed:
    """What one collection removed, per namespace."""

    content: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    snapshots: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    ingests: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        names = sorted(set(self.content) | set(self.snapshots) | set(self.ingests))
        return {
            "namespaces": {
                ns: {
                    "content": [{"digest": d, "size": s} for d, s in self.content.get(ns, [])],
                    "snapshots": [{"snapshotter": sn, "key": k} for sn, k in self.snapshots.get(ns, [])],
                    "ingests": list(self.ingests.get(ns, [])),
                }
                for ns in names
            },
            "errors": self.errors,
            "seconds": self.seconds,
        }


class Services(Protocol):
    """What the collector reads and deletes through; the namespace is the contextvar's."""

    async def images(self) -> list[tuple[str, Mapping[str, str]]]: ...
    """(target digest, labels) of every image."""

    async def containers(self) -> list[tuple[str, str, Mapping[str, str]]]: ...
    """(snapshotter, snapshot key, labels) of every container."""

    async def sandboxes(self) -> list[Mapping[str, str]]: ...

    async def blobs(self) -> list[tuple[str, int, datetime, Mapping[str, str]]]: ...

    def snapshotters(self) -> Sequence[str]: ...

    async def snapshots(self, snapshotter: str) -> list[tuple[str, str, int, Mapping[str, str]]]: ...
    """(key, parent, created_at ns, labels)."""

    async def delete_blob(self, digest: str) -> None: ...

    async def remove_snapshot(self, snapshotter: str, key: str) -> None: ...

    async def ingests(self) -> list[tuple[str, datetime]]: ...
    """(ref, updated_at) of every ingest in progress."""

    async def abort_ingest(self, ref: str) -> None: ...


class RemoteServices:
    """:class:`Services` over the services' own clients, through the proxy's socket."""

    def __init__(self, client: Any) -> None:
        from moorage.services.content.client import ContentClient
        from moorage.services.runtime.client import ContainersClient
        from moorage.services.sandbox.client import StoreClient
        from moorage.services.snapshots.client import RemoteSnapshotters
        from moorage.services.transfer.client import ImagesClient

        self.content = ContentClient(client)
        self.images_client = ImagesClient(client)
        self.containers_client = ContainersClient(client)
        self.sandbox_client = StoreClient(client)
        self.snapshotters_client = RemoteSnapshotters(client)

    async def images(self) -> list[tuple[str, Mapping[str, str]]]:
        return [(i.target.digest, i.labels) for i in await self.images_client.list()]

    async def containers(self) -> list[tuple[str, str, Mapping[str, str]]]:
        return [(c.snapshotter, c.snapshot_key, c.labels) for c in await self.containers_client.list()]

    async def sandboxes(self) -> list[Mapping[str, str]]:
        return [s.labels for s in await self.sandbox_client.list()]

    async def blobs(self) -> list[tuple[str, int, datetime, Mapping[str, str]]]:
        return [(i.digest, i.size, i.created_at, i.labels) async for i in self.content.walk()]

    def snapshotters(self) -> Sequence[str]:
        return self.snapshotters_client.names()

    async def snapshots(self, snapshotter: str) -> list[tuple[str, str, int, Mapping[str, str]]]:
        sn = self.snapshotters_client.get(snapshotter)
        return [(i.name, i.parent, i.created_at, i.labels) async for i in sn.walk()]

    async def delete_blob(self, digest: str) -> None:
        await self.content.delete(digest)

    async def remove_snapshot(self, snapshotter: str, key: str) -> None:
        await self.snapshotters_client.get(snapshotter).remove(key)

    async def ingests(self) -> list[tuple[str, datetime]]:
        return [(st.ref, st.updated_at) for st in await self.content.list_statuses()]

    async def abort_ingest(self, ref: str) -> None:
        await self.content.abort(ref)


_ABSENT = (errdefs.NotImplemented, errdefs.NotFound)


class Collector:
    """One collection at a time; scheduled after deletions, or run on demand."""

    def __init__(
        self,
        connect: Callable[[], Any],
        leases: LeaseStore,
        namespaces: Callable[[], Iterable[str]],
        routed: Collection[str],
        delay: float = 1.0,
        ingest_expiry: float = INGEST_EXPIRY,
    ) -> None:
        self.connect = connect
        """async () -> (Services, close coroutine function)."""
        self.leases = leases
        self.namespaces = namespaces
        self.routed = frozenset(routed)
        self.delay = delay
        self.ingest_expiry = ingest_expiry
        self.lock = asyncio.Lock()
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.collections = 0

    # -- scheduling -------------------------------------------------------------------------

    def trigger(self) -> None:
        """A deletion happened: collect once, ``delay`` seconds from the first of a burst."""
        if self.timer is not None:
            return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.delay, self._fire)

    def _fire(self) -> None:
        self.timer = None
        task = asyncio.get_running_loop().create_task(self._scheduled())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _scheduled(self) -> None:
        try:
            freed = await self.collect()
            log.info("scheduled collection freed %d blobs, %d snapshots in %.3fs",
                     sum(len(v) for v in freed.content.values()),
                     sum(len(v) for v in freed.snapshots.values()), freed.seconds)
        except errdefs.Error as exc:
            log.warning("scheduled collection did not run: %s", exc)
        except Exception:
            log.exception("scheduled collection failed")

    async def watch(self, exchange: Any) -> None:
        """Trigger on delete events (re-subscribing if the exchange ever drops us)."""
        flt = [f'topic=="{t}"' for t in DELETE_TOPICS]
        while True:
            sub = exchange.subscribe(flt)
            try:
                while (env := await sub.queue.get()) is not None:
                    self.trigger()
            finally:
                exchange.unsubscribe(sub)
            if not sub.overflowed:
                return
            self.trigger()

    def start(self, exchange: Any) -> None:
        task = asyncio.get_running_loop().create_task(self.watch(exchange))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled or already reported
                pass

    # -- one collection ---------------------------------------------------------------------

    async def collect(self) -> Freed:
        async with self.lock:
            services, close = await self.connect()
            try:
                return await self._collect(services)
            finally:
                await close()

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
                view.roots += await self._roots(services, ns, held_ingests)
                await self._read(services, view, start_ns, start_dt, freed, ns)
                view.roots += await self._roots(services, ns, held_ingests)
                dead_blobs, dead_snaps = plan(view)
                await self._sweep(services, ns, dead_blobs, dead_snaps, freed)
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

    async def _roots(self, services: Services, ns: str, ingests: set[str]) -> list[tuple[Node, bool]]:
        roots: list[tuple[Node, bool]] = []
        for target, labels in await self._listed(IMAGES, "images", services.images):
            roots.append((("content", "", target), False))
            roots += [(n, False) for n in label_refs(labels)]
        for snapshotter, key, labels in await self._listed(CONTAINERS, "containers", services.containers):
            if snapshotter and key:
                roots.append((("snapshot", snapshotter, key), False))
            roots += [(n, False) for n in label_refs(labels)]
        for labels in await self._listed(SANDBOXES, "sandboxes", services.sandboxes):
            roots += [(n, False) for n in label_refs(labels)]
        for lease in self.leases.leases(ns):
            flat = FLAT_LABEL in lease.labels
            try:
                held = self.leases.resources(ns, lease.id)
            except errdefs.NotFound:
                continue
            for rtype, rid in held:
                if rtype == "content":
                    roots.append((("content", "", rid), flat))
                elif rtype.startswith("snapshots/"):
                    roots.append((("snapshot", rtype.split("/", 1)[1], rid), flat))
                elif rtype == "ingests":
                    ingests.add(rid)
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
        sem = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def delete_blob(blob: Blob) -> None:
            async with sem:
                try:
                    await services.delete_blob(blob.digest)
                except errdefs.NotFound:
                    return
                except errdefs.Error as exc:
                    freed.errors.append(f"{ns}: content {blob.digest}: {exc}")
                    return
            freed.content.setdefault(ns, []).append((blob.digest, blob.size))

        await asyncio.gather(*(delete_blob(b) for b in blobs))
        freed.content.get(ns, []).sort()
        # snapshots come children first: remove one depth level at a time, a level at once
        failed: set[tuple[str, str]] = set()

        async def remove(snap: Snap) -> None:
            async with sem:
                try:
                    await services.remove_snapshot(snap.snapshotter, snap.key)
                except errdefs.NotFound:
                    return
                except errdefs.Error as exc:
                    freed.errors.append(f"{ns}: snapshot {snap.snapshotter}/{snap.key}: {exc}")
                    if snap.parent:
                        failed.add((snap.snapshotter, snap.parent))
                    return
            freed.snapshots.setdefault(ns, []).append((snap.snapshotter, snap.key))

        level: list[Snap] = []
        for snap in snaps:
            if level and snap.depth != level[0].depth:
                await asyncio.gather(*(remove(s) for s in level))
                level = []
            if (snap.snapshotter, snap.key) in failed:
                # a child stayed: its parent must stay too
                if snap.parent:
                    failed.add((snap.snapshotter, snap.parent))
                continue
            level.append(snap)
        await asyncio.gather(*(remove(s) for s in level))


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


def wrap_lease_delete(service: RawService, collector: Collector, auto: bool = True) -> RawService:
    """The Leases service with Delete collecting now when ``sync`` is set, else scheduling a
    collection (when ``auto``)."""
    from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb

    inner = service.methods["Delete"]

    async def delete_sync(ctx: Context, call: RawCall) -> None:
        sync = False
        try:
            sync = pb.DeleteRequest.FromString(call.payload).sync
        except Exception:  # noqa: BLE001 - the inner handler reports a bad payload
            pass
        if sync:
            # run the delete, then collect, then answer: hold the reply until the sweep is done
            held = _HeldCall(call)
            await inner(ctx, held)  # type: ignore[arg-type]
            if held.ok:
                try:
                    await collector.collect()
                except errdefs.Error as exc:
                    log.warning("collection after a sync lease delete did not run: %s", exc)
            await held.release()
            return
        await inner(ctx, call)
        if auto:
            collector.trigger()

    methods = dict(service.methods)
    methods["Delete"] = delete_sync
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
