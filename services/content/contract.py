"""The content contract: types and protocols every content implementation satisfies.

Mirrors containerd's ``core/content``: a ``Store`` is a ``Provider`` (read blobs), a
``Manager`` (info, label updates, listing, delete), an ``IngestManager`` (status of active
ingests, abort) and an ``Ingester`` (open a ``Writer``). The local store and the ttrpc client
both implement it, and one conformance suite (tests/content/conformance.py) runs against each.

Every call is scoped to the namespace of the calling context
(``moorage.namespaces.current_namespace``); a call without one fails with
FailedPrecondition. Errors are errdefs kinds:

- malformed digest or ref (``sha256:../x``, wrong length, uppercase hex, unknown algorithm,
  NUL, ``..`` components) -> InvalidArgument, raised before any file is touched;
- digest not visible in the namespace -> NotFound; read offset past the end -> OutOfRange;
- a ref already held by a live writer (any process on the same root) -> Unavailable;
- commit with a wrong size, a wrong digest, or fewer bytes than the declared total ->
  FailedPrecondition; the ingest is kept (resume or abort it);
- commit of a digest the namespace already has -> AlreadyExists, the ingest is dropped and the
  stored blob is untouched. Opening a writer whose expected digest the namespace already has ->
  AlreadyExists.

Writer lifecycle: ``Ingester.writer(ref, total, expected)`` takes the ref's lock and resumes an
existing ingest (its offset is what is on disk, re-hashed) or starts one. ``write`` appends;
``truncate(0)`` restarts; ``commit`` verifies and publishes the blob and releases the ref;
``close`` releases the ref and leaves the ingest resumable. A blob becomes visible only when
whole and verified. If the expected digest exists in another namespace, the writer starts at
``offset == size`` and ``commit`` adds the blob to this namespace without rewriting it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

READ_CHUNK = 1 << 20
"""Largest data chunk a Read stream carries (containerd's 1 MiB)."""


@dataclass(frozen=True)
class Info:
    """A committed blob as one namespace sees it."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """An active ingest. ``offset`` is the bytes written so far; ``total`` 0 when unknown."""

    ref: str
    offset: int
    total: int
    started_at: datetime
    updated_at: datetime
    expected: str = ""


class ReaderAt(Protocol):
    """Random access to one blob; ``read_at`` returns fewer bytes only at the end."""

    @property
    def size(self) -> int: ...

    async def read_at(self, offset: int, n: int) -> bytes: ...

    async def close(self) -> None: ...


class Writer(Protocol):
    """One ingest session, holding its ref until ``commit`` or ``close``."""

    async def status(self) -> Status: ...

    async def digest(self) -> str:
        """Digest of the bytes written so far."""
        ...

    async def write(self, data: bytes | memoryview) -> int:
        """Append ``data``; returns the new offset."""
        ...

    async def truncate(self, size: int) -> None:
        """Only ``0`` is supported: restart the ingest."""
        ...

    async def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        """Verify (``size`` and ``expected`` when given, else the declared ones) and publish.
        Returns the digest. Ends the session whatever the outcome."""
        ...

    async def close(self) -> None:
        """End the session, keeping the ingest resumable. Idempotent."""
        ...


class Provider(Protocol):
    async def reader_at(self, digest: str) -> ReaderAt: ...

    def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """Stream ``size`` bytes (0: to the end) from ``offset`` in chunks of at most 1 MiB."""
        ...


class Manager(Protocol):
    async def info(self, digest: str) -> Info: ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Only labels are mutable: paths ``labels`` or ``labels.<key>``; no paths = all labels.
        An empty label value removes the label."""
        ...

    def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Blobs of the namespace matching any filter (containerd filter syntax; fields
        ``digest`` and ``labels.<key>``)."""
        ...

    async def delete(self, digest: str) -> None: ...


class IngestManager(Protocol):
    async def status(self, ref: str) -> Status: ...

    async def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        """Active ingests of the namespace; filter field ``ref``."""
        ...

    async def abort(self, ref: str) -> None: ...


class Ingester(Protocol):
    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer: ...


class Store(Provider, Manager, IngestManager, Ingester, Protocol):
    """The whole content API."""


class Sweeper(Protocol):
    """A store that lists and deletes many blobs at once (the garbage collector); optional."""

    async def page(self, after: str, limit: int) -> list[tuple[str, int, int, bytes]]:
        """(digest, size, created_at ns, msgpack labels) of up to ``limit`` blobs whose digest
        sorts after ``after``, in digest order."""
        ...

    async def delete_many(self, digests: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Delete the namespace's ``digests``: (deleted, {digest: why not}); a digest the
        namespace does not have is in neither."""
        ...
