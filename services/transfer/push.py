"""Push: image store -> registry. Children before parents (layers and config concurrently,
then manifests, then the index), each blob checked for existence first and mounted from
another repository of the same registry when the content store knows one
(`containerd.io/distribution.source.<host>` labels, set by pull); the root manifest is
tagged last. Blobs are read from the content store and streamed to the registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from moorage import errdefs

from . import oci
from .blobs import SOURCE_LABEL, Progress, read_blob
from .contract import ContentStore, Image, ProgressFn
from .oci import Descriptor, Platform
from .reference import Reference
from .registry.resolver import Resolver



async def _tree(content: ContentStore, desc: Descriptor, platforms: Sequence[Platform] | None,
                layers: dict[str, Descriptor], docs: list[tuple[Descriptor, bytes]], depth: int = 0) -> None:
    if depth > 4:
        raise errdefs.InvalidArgument("index nesting too deep")
    data = await read_blob(content, desc, oci.MAX_MANIFEST_SIZE)
    doc = oci.parse_document(data, desc.media_type)
    if isinstance(doc, oci.Index):
        for c in oci.select_manifests(doc, platforms):
            try:
                await content.info(c.digest)
            except errdefs.NotFound:
                if platforms is None:
                    continue  # only some platforms were pulled
                raise
            await _tree(content, c, platforms, layers, docs, depth + 1)
    else:
        layers[doc.config.digest] = doc.config
        for layer in doc.layers:
            layers[layer.digest] = layer
    docs.append((desc, data))


async def push(resolver: Resolver, ref: Reference, image: Image, content: ContentStore,
               platforms: Sequence[Platform] | None = None, progress_fn: ProgressFn | None = None,
               concurrency: int = 3) -> Descriptor:
    progress = Progress(progress_fn)
    blobs: dict[str, Descriptor] = {}
    docs: list[tuple[Descriptor, bytes]] = []
    await _tree(content, image.target, platforms, blobs, docs)
    sem = asyncio.Semaphore(max(1, concurrency))
    source_key = SOURCE_LABEL + ref.host

    async def one(desc: Descriptor) -> None:
        async with sem:
            info = await content.info(desc.digest)
            mount_from = [r for r in info.labels.get(source_key, "").split(",") if r]

            async def reader() -> AsyncIterator[bytes]:
                n = 0
                async for chunk in content.read(desc.digest):
                    n += len(chunk)
                    yield chunk
                    await progress.emit("uploading", desc.digest, n, desc.size, desc, force=False)
            await progress.emit("uploading", desc.digest, 0, desc.size, desc)
            outcome = await resolver.push_blob(desc, reader, mount_from)
            await progress.emit("pushed content" if outcome == "pushed" else outcome, desc.digest,
                                desc.size, desc.size, desc)

    await asyncio.gather(*(one(d) for d in blobs.values()))
    for desc, data in docs:  # children first (post-order)
        tag = ref.tag if desc.digest == image.target.digest and not ref.digest else ""
        await resolver.push_manifest(desc, data, tag)
        await progress.emit("pushed content", desc.digest, desc.size, desc.size, desc)
    await progress.emit(f"Pushed {ref}", desc=image.target)
    return image.target
