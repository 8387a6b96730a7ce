"""The CRI's image side: runtime.v1.ImageService over moorage's own services.

Images live in containerd namespace ``k8s.io`` as image records of the transfer service,
as containerd's CRI keeps them: one image is every record whose target resolves (for this
host's platform) to the same config blob; its ID is that config's digest. A pull stores
three records pointing at the pulled target: the normalised reference
(``docker.io/library/busybox:latest``), its repo digest (``name@sha256:<target>``) and the
ID itself (``sha256:<config>``), labelled ``io.cri-containerd.image=managed``; records made
any other way (``moor pull -n k8s.io``) are images too. Pulls go through the transfer
service (registry hosts, mirrors and TLS from its config) and unpack into the snapshotter.

``CriImages`` holds the logic (no protobuf) and is what the rest of the CRI process uses
(``resolve``, ``ensure``, ``pull``); ``ImageService`` only decodes, calls and encodes.
Errors are errdefs kinds: a bad reference or auth is InvalidArgument, an image the
registry lacks NotFound, a pull past the call's deadline DeadlineExceeded. Removal is
idempotent (an unknown image is not an error) and safe to run concurrently.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moorage import errdefs
from moorage.api.k8s.cri.v1 import api_pb2 as api
from moorage.api.k8s.cri.v1.api_ttrpc import ImageServiceServicer
from moorage.namespaces import current_namespace
from moorage.rpc import Peer
from moorage.services.transfer import oci
from moorage.services.transfer.contract import Image
from moorage.services.transfer.reference import DOCKER_HUB, Reference, parse

if TYPE_CHECKING:
    from moorage.api.containerd.types.transfer import registry_pb2
    from moorage.registry import BuildContext
    from ttrpc.server import Context

log = logging.getLogger("moorage.cri.images")

K8S_NAMESPACE = "k8s.io"
MANAGED_LABEL = "io.cri-containerd.image"
PINNED_LABEL = "io.cri-containerd.pinned"
DEFAULT_SNAPSHOTTER = "overlayfs"
_ID = re.compile(r"(?:sha256:)?([a-f0-9]{64})")
_HEX_PREFIX = re.compile(r"(?:sha256:)?([a-f0-9]{1,63})")
_DETAILS_CACHE = 4096
_MAX_DEPTH = 4
STREAM_BATCH = 500
READ_CONCURRENCY = 16
PULL_LOCK_RETRIES = 12
"""Images whose manifest and config are read at once when a listing meets uncached ones."""


@contextlib.contextmanager
def in_namespace(name: str = K8S_NAMESPACE) -> Iterator[None]:
    """Run the block in the CRI's containerd namespace."""
    token = current_namespace.set(name)
    try:
        yield
    finally:
        current_namespace.reset(token)


@dataclass(frozen=True)
class RegistryAuth:
    """The CRI's AuthConfig, decoded. Sent only to the host the reference names (and only
    when ``server_address``, if set, names that host too)."""

    username: str = ""
    password: str = ""
    auth: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""

    def __repr__(self) -> str:  # never print secrets
        return f"RegistryAuth(username={self.username!r}, server_address={self.server_address!r})"

    def credentials(self) -> tuple[str, str, str] | None:
        """(kind, username, secret) as the transfer service's auth stream takes them
        (kind: ``credentials``, ``refresh`` or ``header``); None for anonymous access.
        A malformed ``auth`` is InvalidArgument."""
        if self.username:
            return "credentials", self.username, self.password
        if self.identity_token:
            return "refresh", self.username, self.identity_token
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise errdefs.InvalidArgument("invalid auth: not base64 of user:password") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise errdefs.InvalidArgument("invalid auth: decoded value is not user:password")
            return "credentials", user, password.strip("\x00")
        if self.registry_token:
            return "header", "", f"Bearer {self.registry_token}"
        return None

    def applies_to(self, host: str) -> bool:
        if not self.server_address:
            return True
        addr = self.server_address
        addr = addr.split("://", 1)[1] if "://" in addr else addr
        addr = addr.split("/", 1)[0]
        return _registry_host(addr) == _registry_host(host)


def _registry_host(host: str) -> str:
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io", DOCKER_HUB) else host


@dataclass(frozen=True)
class _Details:
    """What an image record's target resolves to on this host (immutable per target)."""

    id: str
    manifest: str
    config: Mapping[str, Any]
    chain_id: str
    size: int


@dataclass(frozen=True)
class ResolvedImage:
    """One CRI image: every record sharing a config digest, and what the runtime needs.

    ``name`` is the record to use for it (its first repo tag, else a repo digest, else the
    ID record); ``records`` maps every record name to its target digest; ``chain_id`` is
    the snapshot of the unpacked rootfs (the parent of a container's rootfs snapshot)."""

    id: str
    name: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    records: Mapping[str, str]
    target: str
    manifest: str
    config: Mapping[str, Any]
    chain_id: str
    size: int
    uid: int | None = None
    username: str = ""
    pinned: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


def user_of(config: Mapping[str, Any]) -> tuple[int | None, str]:
    """(uid, username) from an image config's ``config.User`` as containerd's CRI reads it:
    the part before ``:``; a number is a uid, anything else a user name."""
    inner = config.get("config")
    user = inner.get("User") if isinstance(inner, dict) else None
    if not isinstance(user, str) or not user:
        return None, ""
    user = user.split(":", 1)[0]
    try:
        return int(user, 10), ""
    except ValueError:
        return None, user


def normalise(ref: str) -> Reference:
    """containerd's ParseDockerRef: normalised name, ``:latest`` when neither tag nor digest,
    the tag dropped when a digest pins the reference."""
    r = parse(ref)
    if r.digest and r.tag:
        r = Reference(r.host, r.path, "", r.digest)
    return r


def _normalised_or_empty(ref: str) -> str:
    try:
        return str(normalise(ref))
    except errdefs.Error:
        return ""


def _tag_or_digest(name: str) -> tuple[str, str]:
    """('tag', name) or ('digest', name) for a reference record name; ('', '') otherwise
    (an ID record, ``sha256:<hex>``, would parse as the tag of an image named sha256)."""
    if _ID.fullmatch(name):
        return "", ""
    try:
        r = parse(name, default_tag=False)
    except errdefs.Error:
        return "", ""
    if r.digest:
        return "digest", str(r)
    if r.tag:
        return "tag", str(r)
    return "", ""


_PullKey = tuple[str, "RegistryAuth | None", tuple[tuple[str, str], ...]]


@dataclass
class _SharedPull:
    task: asyncio.Future[ResolvedImage]
    waiters: int = 0


class CriImages:
    """The CRI image store over the proxy: the transfer service's Images and Transfer, the
    content store (manifests and configs) and the snapshotter (usage)."""

    def __init__(self, peer: Peer, snapshotter: str = DEFAULT_SNAPSHOTTER, image_fs: Path | None = None,
                 namespace: str = K8S_NAMESPACE, pinned: Sequence[str] = ()) -> None:
        """``pinned``: references whose image kubelet must never garbage-collect (the
        sandbox image), reported as ``pinned`` like records labelled io.cri-containerd.pinned."""
        self.peer = peer
        self.namespace = namespace
        self.pinned: frozenset[str] = frozenset(_normalised_or_empty(r) for r in pinned) - {""}
        self._fs: asyncio.Future[tuple[int, int]] | None = None
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        self._pulls: dict[_PullKey, _SharedPull] = {}
        self.snapshotter = snapshotter
        self.image_fs = image_fs
        self._details: OrderedDict[str, _Details] = OrderedDict()

    # ---- reading ------------------------------------------------------------------------

    async def _records(self) -> list[Image]:
        from moorage.services.transfer.client import ImagesClient

        with in_namespace(self.namespace):
            return await ImagesClient(await self.peer.client()).list()

    async def _blob(self, digest: str, limit: int) -> bytes:
        from moorage.services.content.client import ContentClient

        content = ContentClient(await self.peer.client())
        buf = bytearray()
        with in_namespace(self.namespace):
            async for chunk in content.read(digest):
                buf += chunk
                if len(buf) > limit:
                    raise errdefs.ResourceExhausted(f"{digest}: more than {limit} bytes")
        return bytes(buf)

    async def _resolve_target(self, target: oci.Descriptor) -> _Details:
        cached = self._details.get(target.digest)
        if cached is not None:
            self._details.move_to_end(target.digest)
            return cached
        desc = target
        for _ in range(_MAX_DEPTH):
            data = await self._blob(desc.digest, oci.MAX_MANIFEST_SIZE)
            oci.verify_bytes(data, desc)
            doc = oci.parse_document(data, desc.media_type)
            if isinstance(doc, oci.Manifest):
                raw = await self._blob(doc.config.digest, oci.MAX_JSON_SIZE)
                oci.verify_bytes(raw, doc.config)
                config = oci.load_json(raw)
                diff_ids = oci.parse_config(raw).diff_ids
                chain = oci.chain_ids(diff_ids)
                details = _Details(
                    id=doc.config.digest,
                    manifest=desc.digest,
                    config=config,
                    chain_id=chain[-1] if chain else "",
                    size=desc.size + doc.config.size + sum(layer.size for layer in doc.layers),
                )
                self._details[target.digest] = details
                while len(self._details) > _DETAILS_CACHE:
                    self._details.popitem(last=False)
                return details
            picked = oci.select_manifests(doc, [oci.host_platform()])
            if not picked:
                raise errdefs.NotFound(f"{target.digest}: no manifest for {oci.host_platform()}")
            desc = picked[0]
        raise errdefs.InvalidArgument(f"{target.digest}: index nesting too deep")

    async def all(self) -> list[ResolvedImage]:
        """Every image (records grouped by ID) whose manifest and config are present."""
        records = await self._records()
        targets = {r.target.digest: r.target for r in records}
        found = await asyncio.gather(*(self._try_resolve(t) for t in targets.values()))
        details = {d: f for d, f in zip(targets, found, strict=True) if f is not None}
        groups: dict[str, list[Image]] = {}
        for r in records:
            d = details.get(r.target.digest)
            if d is not None:
                groups.setdefault(d.id, []).append(r)
        return [self._image(details[group[0].target.digest], group) for group in groups.values()]

    async def _try_resolve(self, target: oci.Descriptor) -> _Details | None:
        cached = self._details.get(target.digest)
        if cached is not None:
            return cached
        try:
            async with self._reads:
                return await self._resolve_target(target)
        except (errdefs.NotFound, errdefs.InvalidArgument, errdefs.DataLoss, errdefs.ResourceExhausted):
            return None

    def _image(self, d: _Details, group: Sequence[Image]) -> ResolvedImage:
        tags: list[str] = []
        digests: list[str] = []
        labels: dict[str, str] = {}
        for r in sorted(group, key=lambda r: r.name):
            kind, name = _tag_or_digest(r.name)
            if kind == "tag" and name not in tags:
                tags.append(name)
            elif kind == "digest" and name not in digests:
                digests.append(name)
            labels.update(r.labels)
        names = {r.name for r in group}
        name = next((t for t in tags if t in names), "") or next((x for x in digests if x in names), "")
        if not name:
            name = d.id if d.id in names else min(names)
        uid, username = user_of(d.config)
        by_name = {r.name: r.target.digest for r in group}
        return ResolvedImage(
            id=d.id, name=name, repo_tags=tuple(tags), repo_digests=tuple(digests), records=by_name,
            target=by_name[name], manifest=d.manifest, config=d.config, chain_id=d.chain_id,
            size=d.size, uid=uid, username=username,
            pinned=any(r.labels.get(PINNED_LABEL) == "pinned" or r.name in self.pinned for r in group),
            labels=labels)

    async def resolve(self, ref: str) -> ResolvedImage:
        """The image named by ``ref``: a reference (normalised as containerd does), a full
        ID (``sha256:<hex>`` or the bare hex) or a unique ID prefix. NotFound when absent
        (an unparseable reference is simply not found, as in containerd)."""
        if not ref:
            raise errdefs.NotFound("image reference is empty")
        images = await self.all()
        m = _ID.fullmatch(ref)
        if m:
            want = "sha256:" + m.group(1)
            for img in images:
                if img.id == want:
                    return img
        with contextlib.suppress(errdefs.Error):
            name = str(normalise(ref))
            for img in images:
                if name in img.records:
                    return img
        m = _HEX_PREFIX.fullmatch(ref)
        if m:
            hits = [img for img in images if img.id.startswith("sha256:" + m.group(1))]
            if len(hits) == 1:
                return hits[0]
        raise errdefs.NotFound(f"image {ref!r} not found")

    # ---- pulling ------------------------------------------------------------------------

    async def ensure(self, ref: str, auth: RegistryAuth | None = None) -> ResolvedImage:
        """The image ``ref`` names, pulled first when it is not here."""
        try:
            return await self.resolve(ref)
        except errdefs.NotFound:
            return await self.pull(ref, auth)

    async def pull(self, ref: str, auth: RegistryAuth | None = None,
                   labels: Mapping[str, str] | None = None) -> ResolvedImage:
        """Pull ``ref`` for this host's platform and unpack it.

        Concurrent pulls of one reference (same auth) share one transfer, which is
        cancelled when every caller has given up. A pull that meets another's content
        ingest in progress (Unavailable ``... locked``: the transfer service does not wait
        for it) is retried with backoff, and then finds that content present."""
        r = normalise(ref)
        creds = auth.credentials() if auth is not None else None  # bad auth fails before any I/O
        key = (str(r), auth if creds else None, tuple(sorted((labels or {}).items())))
        shared = self._pulls.get(key)
        if shared is None:
            shared = _SharedPull(asyncio.ensure_future(self._pull_retrying(r, key[1], dict(labels or {}))))
            self._pulls[key] = shared
            shared.task.add_done_callback(lambda _t: self._forget(key, shared))
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.task)
        finally:
            shared.waiters -= 1
            if shared.waiters == 0 and not shared.task.done():
                shared.task.cancel()

    def _forget(self, key: _PullKey, shared: _SharedPull) -> None:
        if self._pulls.get(key) is shared:
            del self._pulls[key]

    async def _pull_retrying(self, r: Reference, auth: RegistryAuth | None,
                             labels: dict[str, str]) -> ResolvedImage:
        delay = 0.05
        for attempt in range(PULL_LOCK_RETRIES + 1):
            try:
                return await self._pull(r, auth, labels)
            except errdefs.Unavailable as exc:
                if "locked" not in str(exc) or attempt == PULL_LOCK_RETRIES:
                    raise
                log.info("pull %s met another pull's ingest (%s); retrying in %.2fs", r, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def _pull(self, r: Reference, auth: RegistryAuth | None, labels: dict[str, str]) -> ResolvedImage:
        from moorage.api.containerd.types.transfer import imagestore_pb2, registry_pb2
        from moorage.services.transfer import wire
        from moorage.services.transfer.client import ImagesClient, TransferClient

        name = str(r)
        labels = {MANAGED_LABEL: "managed", **labels}
        src = registry_pb2.OCIRegistry(reference=name, resolver=registry_pb2.RegistryResolver())
        dst = imagestore_pb2.ImageStore(name=name, labels=labels)
        dst.unpacks.append(imagestore_pb2.UnpackConfiguration(
            platform=wire.platform_to_pb(oci.host_platform()), snapshotter=self.snapshotter))
        dst.extra_references.append(imagestore_pb2.ImageReference(name=r.name, add_digest=True, allow_overwrite=True))
        answer = None
        creds = auth.credentials() if auth is not None else None
        if auth is not None and creds is not None and creds[0] == "header":
            # a registry token is the Bearer token itself: sent with every request to this
            # reference's registry (and its configured mirrors), never fetched from a realm
            if auth.applies_to(r.host):
                src.resolver.headers["Authorization"] = creds[2]
        elif auth is not None:
            answer = _auth_answer(r.host, auth)
        client = await self.peer.client()
        with in_namespace(self.namespace):
            await TransferClient(client).transfer(src, dst, auth=answer)
            record = await ImagesClient(client).get(name)
            details = await self._resolve_target(record.target)
            await self._put(ImagesClient(client), Image(details.id, record.target, labels))
        return await self.resolve(name)

    async def _put(self, images: Any, image: Image) -> None:
        try:
            await images.create(image)
        except errdefs.AlreadyExists:
            await images.update(image, ["target", *(f"labels.{k}" for k in image.labels)])

    # ---- removing -----------------------------------------------------------------------

    async def remove(self, ref: str) -> None:
        """Remove the image ``ref`` names with every record of it (all its tags, digests
        and its ID); nothing to do when it is absent or removed meanwhile."""
        from moorage.services.transfer.client import ImagesClient

        try:
            img = await self.resolve(ref)
        except errdefs.NotFound:
            return
        images = ImagesClient(await self.peer.client())
        order = sorted(img.records, key=lambda n: n == img.id)  # the ID record last
        with in_namespace(self.namespace):
            for name in order:
                try:
                    await images.delete(name, target=img.records[name])
                except (errdefs.NotFound, errdefs.FailedPrecondition):
                    continue  # gone already, or re-pointed at another image meanwhile

    # ---- filesystem ---------------------------------------------------------------------

    async def fs_usage(self) -> tuple[int, int]:
        """(bytes, inodes) used by the snapshotter's snapshots in the CRI namespace. Callers
        arriving while a measurement runs share it (kubelet and crictl ask on every
        connection); a caller that gives up does not cancel it for the others."""
        running = self._fs
        if running is None or running.done():
            running = asyncio.ensure_future(self._measure_fs())
            self._fs = running
        return await asyncio.shield(running)

    async def _measure_fs(self) -> tuple[int, int]:
        from moorage.services.snapshots.client import RemoteSnapshotter

        sn = RemoteSnapshotter(await self.peer.client(), self.snapshotter)
        with in_namespace(self.namespace):
            keys = [info.name async for info in sn.walk()]
            usages = await asyncio.gather(*(self._usage(sn, k) for k in keys))
        return sum(u[0] for u in usages), sum(u[1] for u in usages)

    async def _usage(self, sn: Any, key: str) -> tuple[int, int]:
        try:
            u = await sn.usage(key)
        except errdefs.NotFound:
            return 0, 0
        return int(u.size), int(u.inodes)


def _auth_answer(ref_host: str, auth: RegistryAuth) -> Any:
    from moorage.api.containerd.types.transfer import registry_pb2

    creds = auth.credentials()
    kinds = {"credentials": registry_pb2.CREDENTIALS, "refresh": registry_pb2.REFRESH,
             "header": registry_pb2.HEADER}

    async def answer(host: str, reference: str, challenges: Sequence[str]) -> registry_pb2.AuthResponse | None:
        if creds is None or _registry_host(host) != _registry_host(ref_host) or not auth.applies_to(host):
            return None
        kind, user, secret = creds
        return registry_pb2.AuthResponse(authType=kinds[kind], username=user, secret=secret)

    return answer


# ---- the gRPC/ttrpc edge ----------------------------------------------------------------


def _auth_from_pb(a: api.AuthConfig) -> RegistryAuth:
    return RegistryAuth(a.username, a.password, a.auth, a.identity_token, a.registry_token, a.server_address)


def _image_pb(img: ResolvedImage) -> api.Image:
    out = api.Image(id=img.id, repo_tags=list(img.repo_tags), repo_digests=list(img.repo_digests),
                    size=img.size, username=img.username, pinned=img.pinned,
                    spec=api.ImageSpec(image=img.id))
    if img.uid is not None:
        out.uid.value = img.uid
    return out


def _deadline(ctx: Context) -> float | None:
    left = ctx.time_remaining()
    return None if left is None else max(left, 0.0)


class ImageService(ImageServiceServicer):
    """runtime.v1.ImageService: decode, call ``CriImages``, encode."""

    def __init__(self, images: CriImages) -> None:
        self.images = images

    async def _listed(self, flt: api.ImageFilter | None) -> list[api.Image]:
        if flt is not None and flt.image.image:
            try:
                found = [await self.images.resolve(flt.image.image)]
            except errdefs.NotFound:
                found = []
        else:
            found = await self.images.all()
        return [_image_pb(i) for i in sorted(found, key=lambda i: i.id)]

    async def ListImages(self, request: api.ListImagesRequest, ctx: Context) -> api.ListImagesResponse:
        return api.ListImagesResponse(
            images=await self._listed(request.filter if request.HasField("filter") else None))

    async def StreamImages(self, request: api.StreamImagesRequest,
                           ctx: Context) -> AsyncIterator[api.StreamImagesResponse]:
        """ListImages in batches of STREAM_BATCH images (at least one response)."""
        images = await self._listed(request.filter if request.HasField("filter") else None)
        for start in range(0, max(len(images), 1), STREAM_BATCH):
            yield api.StreamImagesResponse(images=images[start:start + STREAM_BATCH])

    async def ImageStatus(self, request: api.ImageStatusRequest, ctx: Context) -> api.ImageStatusResponse:
        try:
            img = await self.images.resolve(request.image.image)
        except errdefs.NotFound:
            return api.ImageStatusResponse()
        resp = api.ImageStatusResponse(image=_image_pb(img))
        if request.verbose:
            resp.info["info"] = json.dumps({"chainID": img.chain_id, "imageSpec": img.config})
        return resp

    async def PullImage(self, request: api.PullImageRequest, ctx: Context) -> api.PullImageResponse:
        if not request.image.image:
            raise errdefs.InvalidArgument("image reference is required")
        auth = _auth_from_pb(request.auth) if request.HasField("auth") else None
        timeout = _deadline(ctx)
        try:
            async with asyncio.timeout(timeout):
                img = await self.images.pull(request.image.image, auth)
        except TimeoutError:
            raise errdefs.DeadlineExceeded(f"pull {request.image.image}: deadline exceeded") from None
        return api.PullImageResponse(image_ref=img.id)

    async def RemoveImage(self, request: api.RemoveImageRequest, ctx: Context) -> api.RemoveImageResponse:
        await self.images.remove(request.image.image)
        return api.RemoveImageResponse()

    async def ImageFsInfo(self, request: api.ImageFsInfoRequest, ctx: Context) -> api.ImageFsInfoResponse:
        used, inodes = await self.images.fs_usage()
        usage = api.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=api.FilesystemIdentifier(mountpoint=str(self.images.image_fs or "")),
            used_bytes=api.UInt64Value(value=used), inodes_used=api.UInt64Value(value=inodes))
        return api.ImageFsInfoResponse(image_filesystems=[usage], container_filesystems=[usage])


async def build_images(ctx: BuildContext) -> ImageService:
    """The CRI process's ImageService (``svc.images`` is its ``CriImages``). Reads
    ``snapshotter``, ``namespace`` and ``sandbox_image`` (reported pinned) from the cri
    config section (defaults overlayfs and k8s.io); the image filesystem is that
    snapshotter's folder under the snapshots process's root."""
    snapshotter = str(getattr(ctx.settings, "snapshotter", "") or DEFAULT_SNAPSHOTTER)
    namespace = str(getattr(ctx.settings, "namespace", "") or K8S_NAMESPACE)
    sandbox_image = str(getattr(ctx.settings, "sandbox_image", "") or "")
    peer = Peer(ctx.proxy_address)
    ctx.on_close(peer.close)
    image_fs = ctx.root.parent / "snapshots" / snapshotter
    return ImageService(CriImages(peer, snapshotter, image_fs, namespace, pinned=[sandbox_image]))
