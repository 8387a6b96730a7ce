"""The transfer contract: images and transfers, as plain types and protocols (no protobuf).

Images (containerd's `core/images`): an `Image` is a name pointing at a target descriptor
(a manifest or an index), with labels. `ImageStore` is scoped to the calling namespace
(`moorage.namespaces.namespace()`); errors are errdefs kinds: unknown name -> NotFound,
Create of an existing name -> AlreadyExists, empty name or invalid target digest ->
InvalidArgument, Update with an unknown field path -> InvalidArgument. Events:
`/images/create`, `/images/update`, `/images/delete` after each committed change.

Transfers (containerd's `core/transfer`): one `transfer(source, destination, progress)` call;
the pair decides the operation (pull, push, import, export, tag). The narrow roles a
transfer needs from its peers are the protocols below, so the logic runs the same against
local stores in tests and against the content / snapshots / diff services over ttrpc.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from .oci import Descriptor, Platform

request_deadline: ContextVar[float | None] = ContextVar("transfer_request_deadline", default=None)
"""The running Transfer call's deadline (event-loop time; None without one), set by the API
adapter: waits with no end of their own (a locked ingest ref) last until it."""


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ImageStore(Protocol):
    async def get(self, name: str) -> Image: ...

    async def list(self, filters: Sequence[str] = ()) -> list[Image]:
        """Images matching any filter; fields `name`, `target.digest`, `target.mediatype`,
        `labels.<key>`."""
        ...

    async def create(self, image: Image) -> Image: ...

    async def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        """Paths: `labels`, `labels.<key>`, `target`, `annotations`-free; none = labels and target."""
        ...

    async def delete(self, name: str, target: str = "") -> None:
        """`target`: when set, delete only if the image still points at that digest
        (FailedPrecondition otherwise)."""
        ...


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report (containerd's transfer Progress)."""

    event: str
    name: str = ""
    parents: tuple[str, ...] = ()
    progress: int = 0
    total: int = 0
    desc: Descriptor | None = None


ProgressFn = Callable[[ProgressEvent], Awaitable[None] | None]


class Snapshotter(Protocol):
    """What unpack needs from a snapshotter (snapshots.v1 for one snapshotter name)."""

    async def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> Sequence[object]: ...

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None: ...

    async def stat(self, key: str) -> object: ...

    async def remove(self, key: str) -> None: ...


class Applier(Protocol):
    """What unpack needs from the diff service: apply one layer blob onto mounts, return the
    uncompressed digest (diff id) of what was applied."""

    async def apply(self, desc: Descriptor, mounts: Sequence[object]) -> str: ...


@dataclass(frozen=True)
class UnpackTarget:
    platform: Platform
    snapshotter_name: str
    snapshotter: Snapshotter
    applier: Applier


BytesSource = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class BlobInfo:
    """Same fields as the content contract's Info (content stores accept it structurally)."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


class BlobStatus(Protocol):
    @property
    def offset(self) -> int: ...


class BlobWriter(Protocol):
    async def status(self) -> BlobStatus: ...

    async def write(self, data: bytes | memoryview) -> int: ...

    async def truncate(self, size: int) -> None: ...

    async def commit(self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None) -> str: ...

    async def close(self) -> None: ...


class ContentStore(Protocol):
    """The part of moorage.services.content.contract.Store a transfer uses (narrow role)."""

    async def info(self, digest: str) -> BlobInfo: ...

    async def update(self, info: BlobInfo, fieldpaths: Sequence[str] = ()) -> BlobInfo: ...

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> BlobWriter: ...

    async def abort(self, ref: str) -> None: ...

    def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]: ...


# ---- transfer endpoints (containerd.types.transfer, decoded) --------------------------------

CredentialsFn = Callable[[str, str, str], Awaitable[object]]
"""(host, reference, www-authenticate) -> registry.auth.Credentials | None."""


@dataclass(frozen=True)
class RegistryEndpoint:
    """OCIRegistry: a reference plus how to reach its registry."""

    reference: str
    hosts_dir: str = ""
    default_scheme: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    credentials: CredentialsFn | None = None


@dataclass(frozen=True)
class UnpackRequest:
    platform: Platform
    snapshotter: str = ""


@dataclass(frozen=True)
class ExtraReference:
    """ImageReference: another name to store. `is_prefix`: a base name that import
    completes with each image's tag; `add_digest`: store `name@digest`; `allow_overwrite`:
    replace an image of that name pointing elsewhere (else AlreadyExists)."""

    name: str
    is_prefix: bool = False
    allow_overwrite: bool = False
    add_digest: bool = False
    skip_named_digest: bool = False


@dataclass(frozen=True)
class ImageTarget:
    """ImageStore: an image name (source or destination) with what to keep of it."""

    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    platforms: tuple[Platform, ...] = ()
    all_metadata: bool = False
    unpacks: tuple[UnpackRequest, ...] = ()
    extra_references: tuple[ExtraReference, ...] = ()
    manifest_limit: int = 0


@dataclass(frozen=True)
class ImportSource:
    data: BytesSource
    media_type: str = ""


@dataclass(frozen=True)
class ExportTarget:
    sink: Callable[[AsyncIterator[bytes]], Awaitable[None]]
    platforms: tuple[Platform, ...] = ()
    all_platforms: bool = False
    skip_non_distributable: bool = False
    skip_compatibility_manifest: bool = False
