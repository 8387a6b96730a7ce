"""Streaming tar for archives, async and bounded, never touching the filesystem.

`TarReader` parses ustar / PAX (`path`, `size`) / GNU long-name headers from an async byte
source (gzip detected and decompressed on the fly); entry data is streamed or read with a
cap. Every untrusted length is limited; malformed input raises InvalidArgument ("invalid
archive: ..."). `tar_entry` / `tar_end` produce the bytes of a PAX archive for export.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from moorage import errdefs

BLOCK = 512
MAX_NAME = 4096
MAX_PAX = 1 << 20
MAX_ENTRIES = 1_000_000


def _invalid(msg: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"invalid archive: {msg}")


@dataclass
class TarEntry:
    name: str
    type: str
    size: int


async def _gunzip(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    d = zlib.decompressobj(wbits=47)
    try:
        out = d.decompress(first)
        if out:
            yield out
        async for chunk in rest:
            while chunk:
                out = d.decompress(chunk, 1 << 20)
                chunk = d.unconsumed_tail
                if out:
                    yield out
                if d.eof:
                    break
        if not d.eof:
            raise _invalid("truncated gzip stream")
    except zlib.error as e:
        raise _invalid(f"gzip: {e}") from None


class TarReader:
    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._src = source
        self._buf = bytearray()
        self._eof = False
        self._remaining = 0  # data bytes of the current entry not yet consumed
        self._pad = 0
        self._entries = 0
        self._started = False

    async def _fill(self, n: int) -> bool:
        while len(self._buf) < n and not self._eof:
            try:
                chunk = await self._src.__anext__()
            except StopAsyncIteration:
                self._eof = True
                break
            self._buf += chunk
        return len(self._buf) >= n

    async def _take(self, n: int) -> bytes:
        if not await self._fill(n):
            raise _invalid("unexpected end of archive")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def _start(self) -> None:
        self._started = True
        await self._fill(2)
        if self._buf[:2] == b"\x1f\x8b":
            first = bytes(self._buf)
            self._buf.clear()
            self._src = _gunzip(first, self._src)
            self._eof = False

    async def _skip_current(self) -> None:
        n = self._remaining + self._pad
        while n:
            if not await self._fill(1):
                raise _invalid("unexpected end of archive")
            k = min(n, len(self._buf))
            del self._buf[:k]
            n -= k
        self._remaining = self._pad = 0

    async def next(self) -> TarEntry | None:
        if not self._started:
            await self._start()
        await self._skip_current()
        pax: dict[str, str] = {}
        longname = ""
        while True:
            if not await self._fill(BLOCK):
                if not self._buf:
                    return None  # tolerate a missing end-of-archive marker
                raise _invalid("truncated header")
            block = await self._take(BLOCK)
            if block == bytes(BLOCK):
                return None
            self._entries += 1
            if self._entries > MAX_ENTRIES:
                raise errdefs.ResourceExhausted(f"invalid archive: more than {MAX_ENTRIES} entries")
            _check_sum(block)
            typ = chr(block[156]) if block[156] else "0"
            size = _number(block[124:136])
            if size < 0 or size > 1 << 44:
                raise _invalid("bad entry size")
            if typ in ("x", "g", "L"):
                if size > MAX_PAX:
                    raise errdefs.ResourceExhausted("invalid archive: extended header too large")
                data = await self._take(size)
                await self._take(-size % BLOCK)
                if typ == "x":
                    pax.update(_parse_pax(data))
                elif typ == "L":
                    longname = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            name = block[0:100].split(b"\0", 1)[0]
            if block[257:262] == b"ustar" and block[345:500].strip(b"\0"):
                name = block[345:500].split(b"\0", 1)[0] + b"/" + name
            sname = pax.get("path") or longname or name.decode("utf-8", "surrogateescape")
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise _invalid("bad pax size") from None
                if size < 0 or size > 1 << 44:
                    raise _invalid("bad entry size")
            if len(sname) > MAX_NAME or "\0" in sname:
                raise _invalid("bad entry name")
            self._remaining = size if typ in ("0", "7") else 0
            self._pad = -self._remaining % BLOCK
            return TarEntry(sname, typ, self._remaining)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The current entry's data, in pieces."""
        while self._remaining:
            if not await self._fill(1):
                raise _invalid("unexpected end of archive")
            k = min(self._remaining, len(self._buf), 1 << 20)
            out = bytes(self._buf[:k])
            del self._buf[:k]
            self._remaining -= k
            yield out

    async def read(self, limit: int) -> bytes:
        if self._remaining > limit:
            raise errdefs.ResourceExhausted(f"invalid archive: entry of {self._remaining} bytes exceeds the {limit} byte limit")
        return b"".join([c async for c in self.chunks()])


def _number(raw: bytes) -> int:
    if raw and raw[0] & 0x80:
        if raw[0] == 0xFF:
            return -1
        return int.from_bytes(raw, "big") & ~(0x80 << (8 * (len(raw) - 1)))
    s = raw.split(b"\0", 1)[0].strip()
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise _invalid("bad number in header") from None


def _check_sum(block: bytes) -> None:
    want = _number(block[148:156])
    got = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if want != got:
        raise _invalid("header checksum mismatch")


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            raise _invalid("bad pax record")
        try:
            n = int(data[pos:sp])
        except ValueError:
            raise _invalid("bad pax record length") from None
        if n <= sp - pos or pos + n > len(data):
            raise _invalid("bad pax record length")
        rec = data[sp + 1:pos + n - 1]
        k, eq, v = rec.partition(b"=")
        if not eq:
            raise _invalid("bad pax record")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += n
    return out


def tar_header(name: str, size: int, mode: int = 0o444, typ: bytes = tarfile.REGTYPE) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = mode
    ti.type = typ
    ti.mtime = 0
    return ti.tobuf(tarfile.PAX_FORMAT)


def tar_padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def tar_end() -> bytes:
    return bytes(2 * BLOCK)
