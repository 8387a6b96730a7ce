"""Content-store helpers every transfer uses: containerd's labels, ref keys, verified
reads and writes, label updates, a writer opened with lock retries (until the call's
deadline), image records stored create-or-update, and rate-limited progress."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping

from moorage import errdefs

from . import oci
from .contract import (
    BlobInfo,
    BlobWriter,
    ContentStore,
    Image,
    ImageStore,
    ProgressEvent,
    ProgressFn,
    request_deadline,
)
from .oci import Descriptor
from .reference import Reference

PROGRESS_INTERVAL = 0.1
GC_REF = "containerd.io/gc.ref.content"
UNCOMPRESSED = "containerd.io/uncompressed"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
SOURCE_LABEL = "containerd.io/distribution.source."


class Progress:
    """Rate-limited progress reporting (one event per blob per interval, plus edges)."""

    def __init__(self, fn: ProgressFn | None) -> None:
        self.fn = fn
        self._last: dict[str, float] = {}

    async def emit(self, event: str, name: str = "", progress: int = 0, total: int = 0,
                   desc: Descriptor | None = None, parents: tuple[str, ...] = (), force: bool = True) -> None:
        if self.fn is None:
            return
        if not force:
            now = time.monotonic()
            if now - self._last.get(name, 0.0) < PROGRESS_INTERVAL:
                return
            self._last[name] = now
        r = self.fn(ProgressEvent(event, name, parents, progress, total, desc))
        if r is not None:
            await r


def ref_key(desc: Descriptor) -> str:
    """containerd's remotes.MakeRefKey."""
    if oci.is_index(desc.media_type):
        kind = "index"
    elif oci.is_manifest(desc.media_type):
        kind = "manifest"
    elif oci.is_layer(desc.media_type):
        kind = "layer"
    elif "config" in desc.media_type or desc.media_type == oci.DOCKER_CONFIG:
        kind = "config"
    else:
        kind = "unknown"
    return f"{kind}-{desc.digest}"


async def has_blob(content: ContentStore, digest: str) -> bool:
    try:
        await content.info(digest)
        return True
    except errdefs.NotFound:
        return False


async def write_bytes(content: ContentStore, desc: Descriptor, data: bytes,
                      labels: Mapping[str, str] | None = None) -> None:
    """Store verified bytes (checked again here) with labels; an existing blob gets the labels."""
    oci.verify_bytes(data, desc)
    try:
        w = await content.writer(ref_key(desc), desc.size, desc.digest)
    except errdefs.AlreadyExists:
        await add_labels(content, desc.digest, labels or {})
        return
    try:
        await w.truncate(0)
        await w.write(data)
        await w.commit(desc.size, desc.digest, labels or {})
    except errdefs.AlreadyExists:
        await add_labels(content, desc.digest, labels or {})
    finally:
        await w.close()


async def add_labels(content: ContentStore, digest: str, labels: Mapping[str, str]) -> None:
    if not labels:
        return
    info = await content.info(digest)
    await content.update(BlobInfo(info.digest, info.size, info.created_at, info.updated_at, dict(labels)),
                         [f"labels.{k}" for k in labels])


async def add_source(content: ContentStore, digest: str, ref: Reference) -> None:
    """Record that `ref`'s repository has the blob (comma-separated, as containerd), so a
    later push to that registry can mount it instead of uploading."""
    with contextlib.suppress(errdefs.NotFound):
        info = await content.info(digest)
        key = f"{SOURCE_LABEL}{ref.host}"
        repos = [r for r in info.labels.get(key, "").split(",") if r]
        if ref.path not in repos and len(",".join([*repos, ref.path])) + len(key) < 4000:
            await add_labels(content, digest, {key: ",".join([*repos, ref.path])})


LOCK_RETRY_SECONDS = 15.0
"""How long a locked ref is waited for when the call has no deadline."""
DEADLINE_MARGIN = 0.2
"""The last try comes this long before the call's deadline, so that the caller is answered
with the lock error naming the ref rather than the server's bare deadline error."""


async def open_writer(content: ContentStore, ref: str, desc: Descriptor) -> BlobWriter:
    """content.writer, retried with jittered exponential backoff while the ref is locked by
    another writer (Unavailable), as containerd's content.OpenWriter does until its
    context's deadline: here the Transfer call's (``request_deadline``), or
    LOCK_RETRY_SECONDS without one. A ref still locked then is Unavailable naming it (the
    lock error, as containerd returns it). The other writer is e.g. a concurrent pull of the
    same blob, or a session of a process that just died whose stream the content service
    has not reaped yet."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = request_deadline.get()
    end = start + LOCK_RETRY_SECONDS if deadline is None else deadline - DEADLINE_MARGIN
    delay = 0.05
    while True:
        try:
            return await content.writer(ref, desc.size, desc.digest)
        except errdefs.Unavailable as exc:
            remaining = end - loop.time()
            if remaining <= 0:
                until = "the call's deadline" if deadline is not None else "the limit without a deadline"
                raise errdefs.Unavailable(
                    f"ref {ref} is still locked by another writer after {loop.time() - start:.1f}s "
                    f"(waited until {until}): {exc}") from exc
            await asyncio.sleep(min(delay + random.uniform(0, delay), remaining))
            delay = min(delay * 2, 1.0)


async def read_blob(content: ContentStore, desc: Descriptor, limit: int) -> bytes:
    if desc.size > limit:
        raise errdefs.ResourceExhausted(f"{desc.digest}: {desc.size} bytes exceeds the {limit} byte limit")
    buf = bytearray()
    async for chunk in content.read(desc.digest):
        buf += chunk
        if len(buf) > limit:
            raise errdefs.ResourceExhausted(f"{desc.digest}: exceeds the {limit} byte limit")
    data = bytes(buf)
    oci.verify_bytes(data, desc)
    return data


async def store_image(images: ImageStore, image: Image) -> Image:
    try:
        return await images.create(image)
    except errdefs.AlreadyExists:
        return await images.update(image, ["target", *(f"labels.{k}" for k in image.labels)])
