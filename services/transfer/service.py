"""The transferrer: one `transfer(source, destination)` call dispatched by the pair, as
containerd's local transfer service: registry -> image store = pull; image store ->
registry = push; import stream -> image store = import; image store -> export stream =
export; image store -> image store = tag. Any other pair -> NotImplemented.

Unpack targets come from `unpacker(platform, snapshotter)` (the process wires the snapshots
and diff services in); an ImageStore destination without unpacks only stores content.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from moorage import errdefs

from . import oci
from .archive import ImportOptions, export_archive, import_archive
from .blobs import read_blob
from .contract import (
    ContentStore,
    ExportTarget,
    Image,
    ImageStore,
    ImageTarget,
    ImportSource,
    ProgressFn,
    RegistryEndpoint,
    UnpackRequest,
    UnpackTarget,
)
from .oci import Platform
from .pull import DEFAULT_CONCURRENCY, PullOptions, pull, unpack
from .push import push
from .reference import Reference
from .reference import parse as parse_ref
from .registry.auth import CredentialCallback, CredentialStore, load_credentials_file
from .registry.resolver import Resolver, ResolverOptions

if TYPE_CHECKING:
    from moorage.leasing import Leases

Unpacker = Callable[[Platform, str], UnpackTarget]


@dataclass(frozen=True)
class TransferSettings:
    max_concurrent_downloads: int = DEFAULT_CONCURRENCY
    max_concurrent_uploads: int = DEFAULT_CONCURRENCY
    hosts_dir: str = ""
    credentials_file: str = ""
    default_snapshotter: str = "overlayfs"
    chunk_size: int = 0


class Transferrer:
    def __init__(self, content: ContentStore, images: ImageStore, unpacker: Unpacker | None = None,
                 settings: TransferSettings | None = None, leases: Leases | None = None) -> None:
        self.content = content
        self.images = images
        self.unpacker = unpacker
        self.settings = settings or TransferSettings()
        self.leases = leases
        """Pulls and imports run under a lease (the caller's ``containerd-lease``, else one of
        their own, ``containerd.io/gc.expire`` 24 h ahead, deleted when they end), as
        containerd's transfer service: a collection meanwhile keeps what they made before the
        image names it. None: no lease (tests of the logic alone)."""

    def _leased(self) -> AbstractAsyncContextManager[object]:
        if self.leases is None:
            return contextlib.nullcontext()
        from moorage.leasing import hold

        return hold(self.leases)

    async def transfer(self, src: object, dst: object, progress: ProgressFn | None = None) -> None:
        if isinstance(src, RegistryEndpoint) and isinstance(dst, ImageTarget):
            await self.pull(src, dst, progress)
        elif isinstance(src, ImageTarget) and isinstance(dst, RegistryEndpoint):
            await self.push(src, dst, progress)
        elif isinstance(src, ImportSource) and isinstance(dst, ImageTarget):
            await self.import_(src, dst, progress)
        elif isinstance(src, ImageTarget) and isinstance(dst, ExportTarget):
            await self.export(src, dst)
        elif isinstance(src, ImageTarget) and isinstance(dst, ImageTarget):
            await self.tag(src, dst)
        else:
            raise errdefs.NotImplemented(
                f"method Transfer not implemented for {type(src).__name__} to {type(dst).__name__}")

    def _resolver(self, ep: RegistryEndpoint, ref: Reference) -> Resolver:
        entries = {}
        if self.settings.credentials_file:
            p = Path(self.settings.credentials_file)
            if p.exists():
                entries = load_credentials_file(p)
        creds = CredentialStore(cast("CredentialCallback | None", ep.credentials), entries)
        return Resolver(ref, ResolverOptions(hosts_dir=ep.hosts_dir or self.settings.hosts_dir or None,
                                             default_scheme=ep.default_scheme, headers=ep.headers,
                                             credentials=creds, chunk_size=self.settings.chunk_size))

    def _unpacks(self, reqs: Sequence[UnpackRequest]) -> list[UnpackTarget]:
        if not reqs:
            return []
        if self.unpacker is None:
            raise errdefs.FailedPrecondition("no unpack platforms defined: no snapshotter is configured")
        return [self.unpacker(r.platform, r.snapshotter or self.settings.default_snapshotter) for r in reqs]

    @staticmethod
    def _platforms(t: ImageTarget) -> list[Platform] | None:
        if t.platforms:
            return list(t.platforms)
        if t.unpacks:
            return [u.platform for u in t.unpacks]
        return None

    async def pull(self, src: RegistryEndpoint, dst: ImageTarget, progress: ProgressFn | None) -> Image:
        async with self._leased():
            return await self._pull(src, dst, progress)

    async def _pull(self, src: RegistryEndpoint, dst: ImageTarget, progress: ProgressFn | None) -> Image:
        ref = parse_ref(src.reference)
        async with self._resolver(src, ref) as res:
            img = await pull(res, ref, self.content, self.images,
                             PullOptions(name=dst.name or str(ref), labels=dst.labels,
                                         platforms=self._platforms(dst), unpacks=self._unpacks(dst.unpacks),
                                         concurrency=self.settings.max_concurrent_downloads,
                                         all_metadata=dst.all_metadata, manifest_limit=dst.manifest_limit),
                             progress)
        await self._extra(img, dst)
        return img

    async def _extra(self, img: Image, dst: ImageTarget) -> None:
        """Store the destination's extra (non-prefix) references for `img`'s target."""
        for r in dst.extra_references:
            if r.is_prefix or not r.name:
                continue
            name = f"{r.name}@{img.target.digest}" if r.add_digest else r.name
            new = Image(name, img.target, dict(dst.labels))
            try:
                await self.images.create(new)
            except errdefs.AlreadyExists:
                cur = await self.images.get(name)
                if cur.target.digest == img.target.digest:
                    continue
                if not r.allow_overwrite:
                    raise errdefs.AlreadyExists(f"image {name!r} already exists with another target") from None
                await self.images.update(new, ["target", *(f"labels.{k}" for k in new.labels)])

    async def push(self, src: ImageTarget, dst: RegistryEndpoint, progress: ProgressFn | None) -> None:
        image = await self.images.get(src.name)
        ref = parse_ref(dst.reference)
        async with self._resolver(dst, ref) as res:
            await push(res, ref, image, self.content, self._platforms(src), progress,
                       self.settings.max_concurrent_uploads)

    async def import_(self, src: ImportSource, dst: ImageTarget, progress: ProgressFn | None) -> list[Image]:
        async with self._leased():
            return await self._import(src, dst, progress)

    async def _import(self, src: ImportSource, dst: ImageTarget, progress: ProgressFn | None) -> list[Image]:
        base = dst.name or next((r.name for r in dst.extra_references if r.is_prefix and r.name), "")
        imgs = await import_archive(src.data(), self.content, self.images,
                                    ImportOptions(base, dst.labels, self._platforms(dst)), progress)
        for img in imgs:
            await self._extra(img, dst)
        for target in self._unpacks(dst.unpacks):
            for img in imgs:
                await self.unpack_image(img, target)
        return imgs

    async def unpack_image(self, img: Image, target: UnpackTarget) -> str:
        """Unpack an image whose content is all present (import, or re-unpack)."""
        desc = img.target
        for _ in range(5):
            doc = oci.parse_document(await read_blob(self.content, desc, oci.MAX_MANIFEST_SIZE), desc.media_type)
            if isinstance(doc, oci.Manifest):
                cfg = oci.parse_config(await read_blob(self.content, doc.config, oci.MAX_JSON_SIZE))
                done: dict[str, asyncio.Future[None]] = {}
                for layer in doc.layers:
                    f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    f.set_result(None)
                    done[layer.digest] = f
                return await unpack(target, doc, cfg, done, self.content)
            present = [m for m in oci.select_manifests(doc, [target.platform])]
            if not present:
                raise errdefs.NotFound(f"{img.name}: no manifest for {target.platform}")
            desc = present[0]
        raise errdefs.InvalidArgument("index nesting too deep")

    async def export(self, src: ImageTarget, dst: ExportTarget) -> None:
        names = [n for n in src.name.split(",") if n] if src.name else []
        imgs = [await self.images.get(n) for n in names] if names else await self.images.list()
        platforms = None if dst.all_platforms or not dst.platforms else list(dst.platforms)
        await dst.sink(export_archive(imgs, self.content, platforms, dst.skip_non_distributable,
                                      docker_manifest=not dst.skip_compatibility_manifest))

    async def tag(self, src: ImageTarget, dst: ImageTarget) -> Image:
        image = await self.images.get(src.name)
        new = Image(dst.name, image.target, dict(dst.labels) or dict(image.labels))
        try:
            out = await self.images.create(new)
        except errdefs.AlreadyExists:
            out = await self.images.update(new, ["target", "labels"])
        await self._extra(out, dst)
        return out
