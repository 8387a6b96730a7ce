"""The diff service logic: apply a layer from content onto mounts, diff two mount sets.

``LocalDiffer`` needs only a blob reader (``read(digest)`` chunks) and a blob ingester
(``writer(ref, total, expected)``): the content service's client, or its store in tests.

Apply (containerd's ``diff/apply`` with its overlay optimisation): one ``overlay`` mount
with an ``upperdir`` -> applied straight to the upper dir with overlay whiteouts, hard
links to lower files copied up; one ``bind`` mount -> applied to its source dir; anything
else -> mounted on a temporary dir, applied with OCI whiteouts, unmounted. The layer is
decompressed and applied on worker threads while the event loop streams the blob. When
the descriptor carries ``containerd.io/uncompressed``, the computed diff id must match
(FailedPrecondition "wrong diff id" otherwise). The result is the uncompressed layer's
descriptor.

Diff (containerd's ``diff/walking``): both sides are read through read-only mounts (or
their bind sources directly), compared by a double walk (``changes.write_diff``), written as
tar (+gzip unless the media type says plain tar) to a temp file, then to content with the
``containerd.io/uncompressed`` label.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Protocol

from moorage import errdefs

from . import changes, mounts as mountlib
from .applier import apply_layer
from .contract import (
    LABEL_UNCOMPRESSED,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    Descriptor,
    Mount,
)
from .layerstream import Limits


class BlobReader(Protocol):
    def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]: ...


class BlobWriter(Protocol):
    async def write(self, data: bytes | memoryview) -> int: ...

    async def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str: ...

    async def close(self) -> None: ...


class BlobIngester(Protocol):
    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Any: ...


def _layer_media_type(media_type: str) -> None:
    if not media_type:
        return
    base = media_type.split(";", 1)[0]
    if "tar" in base or "rootfs.diff" in base:
        return
    raise errdefs.NotImplemented(f"unsupported diff media type: {media_type}")


class _Bridge(Iterator[bytes]):
    """A blocking iterator (worker thread side) over an async chunk iterator (loop side)."""

    def __init__(self, agen: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._agen = agen
        self._loop = loop
        self._done = False

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        try:
            return asyncio.run_coroutine_threadsafe(
                self._agen.__anext__(), self._loop  # type: ignore[arg-type]
            ).result()
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        aclose = getattr(self._agen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(aclose(), self._loop).result(timeout=5)


def apply_target(mounts: Sequence[Mount]) -> tuple[str, bool, list[str]] | None:
    """(root, overlay, lowers) when the mounts can be applied to without mounting."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
        if "ro" in m.options:
            raise errdefs.InvalidArgument("cannot apply to a read-only mount")
        return m.source, False, []
    if m.type == "overlay":
        upper = [o[len("upperdir=") :] for o in m.options if o.startswith("upperdir=")]
        lower = [o[len("lowerdir=") :] for o in m.options if o.startswith("lowerdir=")]
        if not upper:
            raise errdefs.InvalidArgument("cannot apply to a read-only overlay (no upperdir)")
        return upper[0], True, lower[0].split(":") if lower else []
    return None


class LocalDiffer:
    def __init__(
        self,
        content: Any,
        limits: Limits | None = None,
        tmpdir: str | None = None,
        workers: int | None = None,
    ) -> None:
        self.content = content
        self.limits = limits or Limits()
        self.tmpdir = tmpdir
        self.workers = workers

    async def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], sync_fs: bool = False
    ) -> Descriptor:
        _layer_media_type(desc.media_type)
        if not mounts:
            raise errdefs.InvalidArgument("no mounts to apply to")
        loop = asyncio.get_running_loop()
        chunks = _Bridge(self.content.read(desc.digest), loop)
        try:
            applied = await asyncio.to_thread(self._apply_sync, chunks, list(mounts), sync_fs)
        finally:
            await asyncio.to_thread(chunks.close)
        expected = desc.annotations.get(LABEL_UNCOMPRESSED, "")
        if expected and expected != applied[0]:
            raise errdefs.FailedPrecondition(
                f"wrong diff id calculated on extraction: {applied[0]}, expected {expected}"
            )
        return Descriptor(MEDIA_TYPE_LAYER, applied[0], applied[1])

    def _apply_sync(
        self, chunks: Iterator[bytes], mounts: list[Mount], sync_fs: bool
    ) -> tuple[str, int]:
        direct = apply_target(mounts)
        if direct is not None:
            root, overlay, lowers = direct
            result = apply_layer(
                root, chunks, overlay=overlay, lowers=lowers, limits=self.limits, workers=self.workers
            )
            if sync_fs:
                _syncfs(root)
            return result.digest, result.size
        with tempfile.TemporaryDirectory(prefix="apply-", dir=self.tmpdir) as target:
            mountlib.mount_all(mounts, target)
            try:
                result = apply_layer(target, chunks, limits=self.limits, workers=self.workers)
                if sync_fs:
                    _syncfs(target)
            finally:
                mountlib.unmount_all(target)
        return result.digest, result.size

    async def diff(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        media_type = media_type or MEDIA_TYPE_LAYER_GZIP
        if media_type not in (MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_GZIP):
            raise errdefs.NotImplemented(f"unsupported diff media type: {media_type}")
        fd, path = tempfile.mkstemp(prefix="diff-", dir=self.tmpdir)
        os.close(fd)
        try:
            diff_id = await asyncio.to_thread(
                self._diff_sync, list(lower), list(upper), path, media_type == MEDIA_TYPE_LAYER_GZIP
            )
            size = os.path.getsize(path)
            blob_labels = dict(labels or {})
            blob_labels[LABEL_UNCOMPRESSED] = diff_id
            writer = await self.content.writer(ref or f"diff-{uuid.uuid4().hex}", size)
            try:
                with open(path, "rb") as f:
                    while True:
                        data = await asyncio.to_thread(f.read, 1 << 20)
                        if not data:
                            break
                        await writer.write(data)
                digest: str = await writer.commit(size, "", blob_labels)
            except errdefs.AlreadyExists:
                digest = await asyncio.to_thread(_sha256_file, path)
            finally:
                await writer.close()
        finally:
            os.unlink(path)
        return Descriptor(media_type, digest, size)

    def _diff_sync(self, lower: list[Mount], upper: list[Mount], out: str, gzip: bool) -> str:
        with contextlib.ExitStack() as stack:
            a = self._view(stack, lower)
            b = self._view(stack, upper)
            with open(out, "wb") as f:
                return changes.write_diff(a, b, f, gzip=gzip)

    def _view(self, stack: contextlib.ExitStack, mounts: list[Mount]) -> str:
        if not mounts:
            return stack.enter_context(tempfile.TemporaryDirectory(prefix="empty-", dir=self.tmpdir))
        if len(mounts) == 1 and (mounts[0].type == "bind" or "rbind" in mounts[0].options):
            return mounts[0].source
        target = stack.enter_context(tempfile.TemporaryDirectory(prefix="view-", dir=self.tmpdir))
        mountlib.mount_all(mountlib.read_only(mounts), target)
        stack.callback(mountlib.unmount_all, target)
        return target


def _sha256_file(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return "sha256:" + h.hexdigest()


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()
