"""Pull: registry -> content store -> image store, unpacking per platform as layers arrive.

Order of work (containerd's transfer pull, with its labels):
1. resolve the reference (root document verified, ≤ 4 MiB);
2. walk index -> manifests (platform-filtered) -> config + layers; every document is
   verified before it is parsed; blobs stream into the content store, whose commit
   verifies size and digest (an ingest that fails verification is aborted, so a later pull
   refetches);
3. layers download concurrently (`concurrency`, 3 by default) while each unpack target
   applies them strictly in order as they complete: Prepare(`extract-<nanos>-<rand> <chainID>`,
   parent chainID, `containerd.io/snapshot.ref`) -> diff Apply -> diff id checked against the
   config's `rootfs.diff_ids` -> Commit(chainID) -> `containerd.io/uncompressed` on the layer;
   finally `containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID>` on the config blob;
4. parents are written after their children with `containerd.io/gc.ref.content.*` labels
   (`m.<i>` for index children, `config`, `l.<i>` for layers); the image record last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from moorage import errdefs
from moorage.leasing import lease

from . import oci
from .blobs import (
    GC_REF,
    SNAPSHOT_REF,
    SOURCE_LABEL,
    UNCOMPRESSED,
    Progress,
    add_source,
    add_labels,
    has_blob,
    open_writer,
    ref_key,
    store_image,
    write_bytes,
)
from .contract import (
    BlobWriter,
    ContentStore,
    Image,
    ImageStore,
    ProgressFn,
    Snapshotter,
    UnpackTarget,
)
from .oci import Descriptor, Platform
from .reference import Reference
from .registry.resolver import Resolver

DEFAULT_CONCURRENCY = 3


@dataclass
class PullOptions:
    name: str = ""  # image name to store (default: the reference)
    labels: Mapping[str, str] = field(default_factory=dict)
    platforms: Sequence[Platform] | None = None  # None: all
    unpacks: Sequence[UnpackTarget] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    all_metadata: bool = False  # manifests and configs of every platform, layers of the chosen ones
    manifest_limit: int = 0  # at most this many manifests per index (0: no limit)


async def fetch_blob(resolver: Resolver, content: ContentStore, desc: Descriptor, progress: Progress,
                     labels: Mapping[str, str] | None = None) -> bool:
    """Download `desc` into the content store (resuming a partial ingest). Returns False if it
    was already there. Under a lease the check is the writer's open itself, which holds an
    existing blob in the lease (containerd's rule), so a collection meanwhile keeps it.

    A writer that found the bytes in another namespace fails its commit with Aborted when a
    collection removed them meanwhile: the blob is then fetched again, once."""
    try:
        return await _fetch_blob(resolver, content, desc, progress, labels)
    except errdefs.Aborted:
        return await _fetch_blob(resolver, content, desc, progress, labels)


async def _fetch_blob(resolver: Resolver, content: ContentStore, desc: Descriptor, progress: Progress,
                      labels: Mapping[str, str] | None) -> bool:
    if lease() is None and await has_blob(content, desc.digest):
        await progress.emit("already exists", desc.digest, desc.size, desc.size, desc)
        return False
    ref = ref_key(desc)
    try:
        w = await open_writer(content, ref, desc)
    except errdefs.AlreadyExists:
        await progress.emit("already exists", desc.digest, desc.size, desc.size, desc)
        return False
    committed = False
    try:
        st = await w.status()
        offset = st.offset if 0 <= st.offset <= desc.size else 0
        if offset != st.offset:
            await w.truncate(0)
        await progress.emit("downloading", desc.digest, offset, desc.size, desc)
        if offset < desc.size:
            async with resolver.open_blob(desc, offset) as chunks:
                await _pump(chunks, w, offset, desc, progress)
        try:
            await w.commit(desc.size, desc.digest, labels or {})
        except errdefs.AlreadyExists:
            pass
        committed = True
    except (errdefs.DataLoss, errdefs.FailedPrecondition, errdefs.InvalidArgument, errdefs.Aborted):
        await w.close()
        with contextlib.suppress(errdefs.Error):
            await content.abort(ref)
        raise
    finally:
        if not committed:
            await w.close()
    await progress.emit("complete", desc.digest, desc.size, desc.size, desc)
    return True


WRITE_BATCH = 4 << 20
QUEUE_DEPTH = 4


async def _pump(chunks: AsyncIterator[bytes], w: BlobWriter, offset: int, desc: Descriptor,
                progress: Progress) -> None:
    """Network -> content store with the two overlapping: the reader batches chunks into
    WRITE_BATCH buffers (so a remote writer pipelines its requests), the writer drains them.
    When the download breaks, what arrived is still written (the ingest resumes from it)
    before the error is raised."""
    q: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUE_DEPTH)

    async def read() -> None:
        parts: list[bytes] = []
        n = 0
        try:
            async for chunk in chunks:
                parts.append(chunk)
                n += len(chunk)
                if n >= WRITE_BATCH:
                    await q.put(b"".join(parts))
                    parts, n = [], 0
        except errdefs.Unavailable as e:
            if parts:
                await q.put(b"".join(parts))
            await q.put(e)
            return
        except BaseException as e:  # noqa: BLE001 - bad data: nothing more is written
            await q.put(e)
            return
        if parts:
            await q.put(b"".join(parts))
        await q.put(None)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            data = await q.get()
            if data is None:
                break
            if isinstance(data, BaseException):
                raise data
            offset = await w.write(data)
            await progress.emit("downloading", desc.digest, offset, desc.size, desc, force=False)
    finally:
        if not reader.done():
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


@dataclass
class _ManifestPlan:
    desc: Descriptor
    data: bytes
    manifest: oci.Manifest
    config_data: bytes
    config: oci.ImageConfig
    layers: bool = True  # False: metadata only (all_metadata for another platform)


async def pull(resolver: Resolver, ref: Reference, content: ContentStore, images: ImageStore,
               opts: PullOptions, progress_fn: ProgressFn | None = None) -> Image:
    progress = Progress(progress_fn)
    await progress.emit(f"Resolving from {ref}")
    root, root_data = await resolver.resolve(ref)
    await progress.emit(f"Pulling from {ref}")
    await progress.emit("fetching image content")
    plans: list[_ManifestPlan] = []
    index_children: list[tuple[Descriptor, bytes, oci.Index, list[Descriptor]]] = []
    await _walk(resolver, root, root_data, opts, plans, index_children, depth=0)
    if not any(p.layers for p in plans):
        raise errdefs.NotFound(f"{ref}: no manifest for platform(s) {', '.join(map(str, opts.platforms or []))}")

    # configs first (small, needed for diff ids)
    for p in plans:
        await write_bytes(content, p.manifest.config, p.config_data, {f"{SOURCE_LABEL}{ref.host}": ref.path})

    # layers: download concurrently, unpack in order as they arrive
    sem = asyncio.Semaphore(max(1, opts.concurrency))
    done: dict[str, asyncio.Future[None]] = {}

    source = {f"{SOURCE_LABEL}{ref.host}": ref.path}

    async def download(desc: Descriptor) -> None:
        async with sem:
            if not await fetch_blob(resolver, content, desc, progress, source):
                await add_source(content, desc.digest, ref)

    for p in plans:
        if not p.layers:
            continue
        for layer in p.manifest.layers:
            if layer.digest not in done:
                await progress.emit("waiting", layer.digest, 0, layer.size, layer)
                done[layer.digest] = asyncio.ensure_future(download(layer))

    unpack_jobs: list[asyncio.Future[str]] = []
    for target in opts.unpacks:
        plan = next((p for p in plans if p.layers and oci.platform_matches(target.platform, p.config.platform)
                     or (p.desc.platform and oci.platform_matches(target.platform, p.desc.platform))), None)
        if plan is None:
            continue
        unpack_jobs.append(asyncio.ensure_future(unpack(target, plan.manifest, plan.config, done, content)))
    jobs: list[asyncio.Future[object]] = [*done.values(), *unpack_jobs]  # type: ignore[list-item]
    try:
        await asyncio.gather(*jobs)
    except BaseException:
        for f in jobs:
            f.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        raise

    # parents after children
    for p in plans:
        labels = {f"{GC_REF}.config": p.manifest.config.digest}
        for i, layer in enumerate(p.manifest.layers if p.layers else ()):
            labels[f"{GC_REF}.l.{i}"] = layer.digest
        await write_bytes(content, p.desc, p.data, labels)
    for desc, data, _index, children in reversed(index_children):
        labels = {f"{GC_REF}.m.{i}": c.digest for i, c in enumerate(children)}
        await write_bytes(content, desc, data, labels)
    await progress.emit("saved", str(ref), desc=root)

    image = Image(opts.name or str(ref), root, dict(opts.labels))
    stored = await store_image(images, image)
    await progress.emit(f"Completed pull from {ref}", desc=root)
    return stored


async def _walk(resolver: Resolver, desc: Descriptor, data: bytes, opts: PullOptions,
                plans: list[_ManifestPlan], indexes: list[tuple[Descriptor, bytes, oci.Index, list[Descriptor]]],
                depth: int, layers: bool = True) -> None:
    if depth > 4:
        raise errdefs.InvalidArgument("index nesting too deep")
    platforms = opts.platforms
    doc = oci.parse_document(data, desc.media_type)
    if isinstance(doc, oci.Index):
        children = oci.select_manifests(doc, platforms)
        if platforms is not None:
            best: list[Descriptor] = [c for c in children if oci.is_index(c.media_type)]
            for p in platforms:  # the best manifest per requested platform
                m = next((c for c in children if oci.is_manifest(c.media_type) and c.platform
                          and oci.platform_matches(p, c.platform) and c not in best), None)
                if m is not None:
                    best.append(m)
            children = best
        wanted = {c.digest for c in children} if layers else set()
        if opts.all_metadata:
            children = [c for c in doc.manifests if oci.is_index(c.media_type) or oci.is_manifest(c.media_type)]
        if opts.manifest_limit:
            children = children[:opts.manifest_limit]
        indexes.append((desc, data, doc, children))
        for child in children:
            if not (oci.is_index(child.media_type) or oci.is_manifest(child.media_type)):
                continue
            child_data = await resolver.fetch_document(child)
            await _walk(resolver, child, child_data, opts, plans, indexes, depth + 1, child.digest in wanted)
        return
    cfg_data = await resolver.fetch_document(doc.config, oci.MAX_JSON_SIZE)
    cfg = oci.parse_config(cfg_data)
    if len(cfg.diff_ids) != len(doc.layers):
        raise errdefs.InvalidArgument(f"{desc.digest}: {len(doc.layers)} layers but {len(cfg.diff_ids)} diff ids")
    if platforms is not None and depth == 0 and cfg.platform.os and not any(
            oci.platform_matches(p, cfg.platform) for p in platforms):
        raise errdefs.NotFound(f"image is for {cfg.platform}, not {', '.join(map(str, platforms))}")
    plans.append(_ManifestPlan(desc, data, doc, cfg_data, cfg, layers))


class _ParentGone(Exception):
    """A chain snapshot found present went before a child was prepared on it."""


UNPACK_RESTARTS = 3


async def unpack(target: UnpackTarget, manifest: oci.Manifest, config: oci.ImageConfig,
                 done: Mapping[str, asyncio.Future[None]], content: ContentStore) -> str:
    """Apply the manifest's layers in order onto `target`; returns the top chain id.

    A chain snapshot that was present (another image's) may be collected between the check
    and the Prepare of its child (its image removed meanwhile; under the pull's lease the
    Prepare holds the parent from then on): the unpack then starts over and extracts what is
    gone again from the layers, which the pull's lease holds."""
    for _ in range(UNPACK_RESTARTS - 1):
        try:
            return await _unpack(target, manifest, config, done, content)
        except _ParentGone:
            continue
    try:
        return await _unpack(target, manifest, config, done, content)
    except _ParentGone as exc:
        raise errdefs.Unavailable(f"unpack: {exc}") from None


async def _unpack(target: UnpackTarget, manifest: oci.Manifest, config: oci.ImageConfig,
                  done: Mapping[str, asyncio.Future[None]], content: ContentStore) -> str:
    sn, applier = target.snapshotter, target.applier
    chain = oci.chain_ids(config.diff_ids)
    parent = ""
    for i, layer in enumerate(manifest.layers):
        chain_id = chain[i]
        if await _snapshot_exists(sn, chain_id):
            parent = chain_id
            continue
        key = f"extract-{time.time_ns()}-{os.urandom(6).hex()} {chain_id}"
        try:
            mounts = await sn.prepare(key, parent, {SNAPSHOT_REF: chain_id})
        except errdefs.AlreadyExists:
            if await _snapshot_exists(sn, chain_id):
                parent = chain_id
                continue
            raise
        except errdefs.NotFound:
            if parent and not await _snapshot_exists(sn, parent):
                raise _ParentGone(f"snapshot {parent} went during the unpack") from None
            raise
        try:
            await asyncio.shield(done[layer.digest])
            diff_id = await applier.apply(layer, mounts)
            if diff_id != config.diff_ids[i]:
                raise errdefs.DataLoss(f"wrong diff id {diff_id} calculated on extraction, expected {config.diff_ids[i]}")
            try:
                await sn.commit(chain_id, key, {SNAPSHOT_REF: chain_id})
            except errdefs.AlreadyExists:
                with contextlib.suppress(errdefs.Error):
                    await sn.remove(key)
        except BaseException:
            with contextlib.suppress(errdefs.Error, OSError):
                await sn.remove(key)
            raise
        await add_labels(content, layer.digest, {UNCOMPRESSED: diff_id})
        parent = chain_id
    if chain:
        await add_labels(content, manifest.config.digest,
                          {f"containerd.io/gc.ref.snapshot.{target.snapshotter_name}": chain[-1]})
    return chain[-1] if chain else ""


async def _snapshot_exists(sn: Snapshotter, key: str) -> bool:
    try:
        await sn.stat(key)
        return True
    except errdefs.NotFound:
        return False
