"""The snapshots and diff contracts: what every snapshotter and differ provides.

Plain types, no protobuf. Implementations: ``store.LocalSnapshotter`` over the overlayfs
and native backends (this process), ``client.RemoteSnapshotter`` (over ttrpc); one
conformance suite (tests/snapshots/suite.py) runs against all of them.

Snapshot lifecycle (containerd's ``snapshots.Snapshotter``), within one namespace (the
running call's, ``moorage.namespaces.namespace()``):

- ``prepare(key, parent)`` creates an *active* snapshot (writable) on top of the
  *committed* snapshot ``parent`` (or empty); ``view`` creates a read-only *view*. Active,
  view and committed snapshots share one key space: an existing key -> AlreadyExists; a
  missing parent -> NotFound; a parent that is not committed -> InvalidArgument.
- ``mounts(key)`` returns the mounts that assemble the snapshot; a shim can use them as
  they are (bind or overlay, see ``overlay.py``).
- ``commit(name, key)`` turns the active ``key`` into the committed ``name`` (``key``
  disappears; a view -> FailedPrecondition; an existing ``name`` -> AlreadyExists). Its
  usage is measured at that moment. Its labels are the ones given to commit.
- ``remove(key)``: a snapshot with children -> FailedPrecondition.
- ``update(info, fieldpaths)``: only labels are mutable (``labels`` or ``labels.<k>``;
  no paths = all labels); anything else -> InvalidArgument.
- ``usage(key)``: bytes and inodes of this snapshot only (not its parents).
- ``walk(filters)``: containerd filter syntax over ``name``, ``parent``, ``kind``
  (``View``/``Active``/``Committed``) and ``labels.<k>``.
- ``cleanup()``: removes directories left behind by interrupted removals.

Diff (containerd's ``diff.Applier`` and ``diff.Comparer``): ``apply`` reads a layer blob
from the content store and applies it onto mounts, returning the descriptor of the
uncompressed layer (its digest is the diff id); ``diff`` computes the layer between two
mount sets, writes it to the content store and returns its descriptor.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_SNAPSHOTTER = "overlayfs"
SNAPSHOTTERS = ("overlayfs", "native")

MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"


class Kind(enum.IntEnum):
    """Snapshot kinds, numbered as containerd's proto enum."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def label(self) -> str:
        """containerd's ``Kind.String()``, used by the ``kind`` filter field."""
        return {1: "View", 2: "Active", 3: "Committed"}.get(int(self), "Unknown")


@dataclass(frozen=True)
class Info:
    """A snapshot's metadata. Times are unix nanoseconds."""

    name: str
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True)
class Mount:
    """One mount (containerd.types.Mount): ``mount -t type source target -o options``."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


@dataclass(frozen=True)
class Usage:
    size: int = 0
    inodes: int = 0


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor (containerd.types.Descriptor)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


class Snapshotter(Protocol):
    """One named snapshotter in the running call's namespace (see the module docstring)."""

    async def stat(self, key: str) -> Info: ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info: ...

    async def usage(self, key: str) -> Usage: ...

    async def mounts(self, key: str) -> list[Mount]: ...

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]: ...

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]: ...

    async def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None: ...

    async def remove(self, key: str) -> None: ...

    def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]: ...

    async def cleanup(self) -> None: ...


class Snapshotters(Protocol):
    """Snapshotters by name; ``get("")`` -> InvalidArgument "snapshotter argument missing",
    an unknown name -> InvalidArgument "snapshotter not loaded"."""

    def get(self, name: str) -> Snapshotter: ...

    def names(self) -> Sequence[str]: ...


class Differ(Protocol):
    """Layer apply and diff (containerd diff.v1)."""

    async def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], sync_fs: bool = False
    ) -> Descriptor: ...

    async def diff(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor: ...
