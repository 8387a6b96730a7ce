"""Decompressing a layer blob into a bounded, digested byte stream.

A layer arrives as an iterator of compressed chunks (from the content service, or a file
in tests and benches). ``LayerStream`` detects the compression by magic bytes (gzip, zstd,
else plain tar, as containerd's ``compression.DecompressStream``), decompresses on a
worker thread (zlib, zstandard and hashlib release the GIL, so this overlaps the writes of
the applier), hashes the uncompressed bytes (the diff id) and enforces ``Limits``:

- ``max_bytes``: total uncompressed bytes;
- ``max_ratio``: uncompressed / compressed once past ``ratio_floor`` bytes;
- each decompression step yields at most ``CHUNK`` bytes, so memory stays bounded whatever
  the input (a zstd frame announcing a huge window is refused by ``max_window``).

Gzip is inflated by ISA-L (``isal.isal_zlib``, zlib's API, 1.5-2x as fast) when it is
installed, else by zlib; ISA-L gets a member once its whole header is at hand (and only a
plain one), zlib the rest. Either way every input has the same outcome; only the decoder's
wording after ``invalid layer: gzip:`` differs, and which of two faults a stream that is
both corrupt and truncated is reported with.

Exceeding a cap raises ``ResourceExhausted``; corrupt or truncated compression raises
``InvalidArgument``. The consumer reads with ``read``/``copy_to``/``skip`` and calls
``finish()`` to drain to the end (the digest covers every byte) or ``close()`` to abort.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import queue
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from moorage import errdefs

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
# ISA-L is given a member only with its whole header in one input (it misparses a header
# split across inputs), no FHCRC and no reserved flag bits (it ignores those; zlib refuses)
_ISAL_HEADER = b"\x1f\x8b\x08"
_ISAL_FLAGS = 0x1D  # FTEXT, FEXTRA, FNAME, FCOMMENT
_HEADER_MAX = 1 << 17
INFLATE: Any = zlib
"""The gzip decoder module (``decompressobj``, ``error``); tests switch it."""
try:
    from isal import isal_zlib
except ImportError:  # optional speed-up: zlib is the reference
    _GZIP_ERRORS: tuple[type[Exception], ...] = (zlib.error,)
else:
    INFLATE = isal_zlib
    _GZIP_ERRORS = (zlib.error, INFLATE.error)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Limits:
    """Caps on one layer; every one configurable (config section ``[snapshots.limits]``)."""

    max_bytes: int = 64 << 30
    max_ratio: int = 1000
    ratio_floor: int = 256 << 20
    max_entries: int = 1_000_000
    max_header_bytes: int = 1 << 20
    max_name: int = 4096
    max_window: int = 1 << 27


class _Source:
    """A file-like ``read`` over the compressed chunk iterator, counting bytes."""

    def __init__(self, chunks: Iterator[bytes], first: bytes) -> None:
        self._chunks = chunks
        self._pending = first
        self.count = len(first)
        self.eof = False

    def next_chunk(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        for data in self._chunks:
            if data:
                self.count += len(data)
                return data
        self.eof = True
        return b""

    def read(self, n: int = -1) -> bytes:
        return self.next_chunk()


class LayerStream:
    """Uncompressed layer bytes, produced by a worker thread; see the module docstring."""

    def __init__(self, chunks: Iterator[bytes], limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.compression = "unknown"
        self.digest = ""
        self.size = 0
        self._chunks = chunks
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._buf = b""
        self._off = 0
        self._eof = False
        self._consumed = 0
        # the source may call back into the caller's event loop: keep its context (namespace)
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(
            target=ctx.run, args=(self._run,), name="layer-decompress", daemon=True
        )
        self._thread.start()

    # producer -------------------------------------------------------------------------
    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped()

    def _run(self) -> None:
        hasher = hashlib.sha256()
        total = 0
        lim = self.limits
        try:
            first = b""
            for data in self._chunks:
                first += data
                if len(first) >= 4:
                    break
            src = _Source(self._chunks, first)
            for out in self._decompress(src, first):
                if self._stop.is_set():
                    return
                total += len(out)
                if total > lim.max_bytes:
                    raise errdefs.ResourceExhausted(
                        f"layer exceeds max uncompressed size of {lim.max_bytes} bytes"
                    )
                if total > lim.ratio_floor and total > lim.max_ratio * max(src.count, 1):
                    raise errdefs.ResourceExhausted(
                        f"layer exceeds max compression ratio of {lim.max_ratio}"
                    )
                hasher.update(out)
                self._put(out)
            self.digest = "sha256:" + hasher.hexdigest()
            self.size = total
            self._put(None)
        except _Stopped:
            return
        except BaseException as exc:  # forwarded to the consumer
            try:
                self._put(exc)
            except _Stopped:
                return
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    def _decompress(self, src: _Source, first: bytes) -> Iterator[bytes]:
        if first.startswith(GZIP_MAGIC):
            self.compression = "gzip"
            yield from self._gunzip(src)
        elif first.startswith(ZSTD_MAGIC):
            self.compression = "zstd"
            yield from self._unzstd(src)
        else:
            self.compression = "none"
            while True:
                data = src.next_chunk()
                if not data:
                    return
                for i in range(0, len(data), CHUNK):
                    yield data[i : i + CHUNK]

    @staticmethod
    def _member(src: _Source, pending: bytes) -> tuple[Any, bytes]:
        """A decoder for the gzip member that starts ``pending``, read on to its header's end."""
        if INFLATE is zlib:
            return zlib.decompressobj(31), pending
        while (end := _header_end(pending)) == 0 and len(pending) < _HEADER_MAX:
            more = src.next_chunk()
            if not more:
                break
            pending += more
        plain = end > 0 and pending.startswith(_ISAL_HEADER) and not pending[3] & ~_ISAL_FLAGS
        return (INFLATE if plain else zlib).decompressobj(31), pending

    def _gunzip(self, src: _Source) -> Iterator[bytes]:
        d, pending = self._member(src, src.next_chunk())
        while True:
            if not pending:
                pending = src.next_chunk()
                if not pending:
                    if not d.eof:
                        raise errdefs.InvalidArgument("invalid layer: gzip stream truncated")
                    return
            if d.eof:
                # another gzip member (multistream), as Go's gzip reader accepts
                if not pending.startswith(GZIP_MAGIC[: len(pending)]):
                    raise errdefs.InvalidArgument("invalid layer: garbage after gzip stream")
                d, pending = self._member(src, pending)
            try:
                data = pending
                while True:
                    out = d.decompress(data, CHUNK)
                    if out:
                        yield out
                    if d.unconsumed_tail:
                        data = d.unconsumed_tail
                    elif len(out) == CHUNK and not d.eof:
                        data = b""
                    else:
                        break
            except _GZIP_ERRORS as exc:
                raise errdefs.InvalidArgument(f"invalid layer: gzip: {exc}") from None
            pending = d.unused_data if d.eof else b""

    def _unzstd(self, src: _Source) -> Iterator[bytes]:
        import zstandard

        dctx = zstandard.ZstdDecompressor(max_window_size=self.limits.max_window)
        source: Any = src
        reader = dctx.stream_reader(source, read_size=CHUNK, read_across_frames=True)
        try:
            while True:
                out = reader.read(CHUNK)
                if not out:
                    break
                yield out
        except zstandard.ZstdError as exc:
            raise errdefs.InvalidArgument(f"invalid layer: zstd: {exc}") from None
        if not src.eof or src.next_chunk():
            raise errdefs.InvalidArgument("invalid layer: zstd stream truncated or trailing data")

    # consumer -------------------------------------------------------------------------
    def _fill(self) -> bool:
        if self._eof:
            return False
        item = self._queue.get()
        if item is None:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._buf = item
        self._off = 0
        return True

    @property
    def consumed(self) -> int:
        """Uncompressed bytes handed to the consumer so far."""
        return self._consumed

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer only at the end of the stream."""
        avail = len(self._buf) - self._off
        if avail >= n:
            out = self._buf[self._off : self._off + n]
            self._off += n
            self._consumed += n
            return out
        parts = [self._buf[self._off :]]
        got = avail
        self._buf, self._off = b"", 0
        while got < n and self._fill():
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._off = take
            got += take
        self._consumed += got
        return b"".join(parts)

    def copy_to(self, fd: int, n: int) -> int:
        """Write the next ``n`` bytes to ``fd``; returns how many were available."""
        left = n
        while left:
            if self._off >= len(self._buf) and not self._fill():
                break
            end = min(len(self._buf), self._off + left)
            view = memoryview(self._buf)[self._off : end]
            while view:
                written = os.write(fd, view)
                view = view[written:]
            left -= end - self._off
            self._off = end
        self._consumed += n - left
        return n - left

    def skip(self, n: int) -> int:
        left = n
        while left:
            if self._off >= len(self._buf) and not self._fill():
                break
            take = min(left, len(self._buf) - self._off)
            self._off += take
            left -= take
        self._consumed += n - left
        return n - left

    def finish(self) -> tuple[str, int]:
        """Read to the end; returns (sha256 digest, size) of the uncompressed bytes."""
        self._buf, self._off = b"", 0
        while self._fill():
            self._consumed += len(self._buf)
            self._buf = b""
        self._thread.join()
        return self.digest, self.size

    def close(self) -> None:
        """Abort: stop the worker and release the source."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


def _header_end(data: bytes) -> int:
    """Where the gzip member header at the start of ``data`` ends; 0 if not all there."""
    if len(data) < 10:
        return 0
    flags, end = data[3], 10
    if flags & 0x04:  # FEXTRA
        if len(data) < 12:
            return 0
        end = 12 + int.from_bytes(data[10:12], "little")
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: NUL-terminated
        if flags & bit:
            nul = data.find(b"\0", end)
            if nul < 0:
                return 0
            end = nul + 1
    if flags & 0x02:  # FHCRC
        end += 2
    return end if len(data) >= end else 0


class _Stopped(Exception):
    pass
