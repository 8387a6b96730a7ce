"""A strict, bounded tar header parser over a ``LayerStream``.

Reads ustar, GNU (``L``/``K`` long names) and PAX (``x`` per entry, ``g`` global, ignored)
headers as Go's archive/tar does for containerd, with every untrusted length capped by
``Limits`` (header records, name length, entry count). It never touches the filesystem
and never seeks backwards: a header is parsed, the caller consumes or skips the entry's
data, then asks for the next header. Any malformed input raises ``InvalidArgument``
("invalid archive: ..."); caps raise ``ResourceExhausted``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from moorage import errdefs

from .layerstream import LayerStream, Limits

BLOCK = 512

REG = "0"
LINK = "1"
SYMLINK = "2"
CHR = "3"
BLK = "4"
DIR = "5"
FIFO = "6"
CONT = "7"
_ZERO = bytes(BLOCK)
HEADER_ONLY = frozenset({LINK, SYMLINK, CHR, BLK, DIR, FIFO})
XATTR_PREFIX = "SCHILY.xattr."


def _invalid(msg: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"invalid archive: {msg}")


@dataclass
class Entry:
    """One archive member: the header after PAX/GNU records were applied."""

    name: str
    type: str
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _number(raw: bytes, what: str) -> int:
    if raw and raw[0] & 0x80:
        if raw[0] == 0xFF:
            raise _invalid(f"negative {what}")
        value = int.from_bytes(raw, "big") & ~(0x80 << (8 * (len(raw) - 1)))
        return value
    try:
        return int(raw.split(b"\0", 1)[0] or b"0", 8)  # int() ignores surrounding spaces
    except ValueError:
        if not raw.split(b"\0", 1)[0].strip():
            return 0
        raise _invalid(f"bad {what} field") from None


def _cstring(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _pax_time(value: str) -> int:
    sec, _, frac = value.partition(".")
    try:
        whole = int(sec)
        nanos = int((frac + "000000000")[:9]) if frac else 0
    except ValueError:
        raise _invalid("bad PAX time") from None
    if whole < 0 and frac:
        return whole * 1_000_000_000 - nanos
    return whole * 1_000_000_000 + nanos


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX records ``"<len> <key>=<value>\\n"``; keys text, values raw bytes."""
    records: dict[str, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:  # NUL padding after the last record
            if data[pos:].strip(b"\0"):
                raise _invalid("bad PAX record")
            break
        space = data.find(b" ", pos, min(end, pos + 21))
        if space < 0:
            raise _invalid("bad PAX record length")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _invalid("bad PAX record length") from None
        if length <= space - pos + 1 or pos + length > end or data[pos + length - 1] != 0x0A:
            raise _invalid("bad PAX record")
        record = data[space + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if not eq or not key or b"\0" in key:
            raise _invalid("bad PAX record key")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


class TarReader:
    """Iterates ``Entry`` headers; after each, the caller must consume exactly
    ``entry.size`` data bytes through ``data_to``/``skip_data`` (or let ``next`` skip)."""

    def __init__(self, stream: LayerStream, limits: Limits | None = None) -> None:
        self.stream = stream
        self.limits = limits or stream.limits
        self.entries = 0
        self._remaining = 0
        self._padding = 0
        self._done = False

    def _skip_rest(self) -> None:
        left = self._remaining + self._padding
        if left and self.stream.skip(left) != left:
            raise _invalid("unexpected end of data")
        self._remaining = self._padding = 0

    def data_to(self, fd: int) -> None:
        """Write the current entry's data to ``fd``."""
        n = self._remaining
        if self.stream.copy_to(fd, n) != n:
            raise _invalid("unexpected end of data")
        self._remaining = 0

    def read_data(self) -> bytes:
        """The current entry's data, in memory (callers bound the size)."""
        n = self._remaining
        data = self.stream.read(n)
        if len(data) != n:
            raise _invalid("unexpected end of data")
        self._remaining = 0
        return data

    def _read_block(self) -> bytes:
        block = self.stream.read(BLOCK)
        if len(block) != BLOCK:
            if not block and self.entries == 0:
                raise _invalid("empty layer")
            raise _invalid("unexpected end of archive")
        return block

    def _read_payload(self, size: int, what: str) -> bytes:
        if size > self.limits.max_header_bytes:
            raise errdefs.ResourceExhausted(
                f"{what} header of {size} bytes exceeds limit of {self.limits.max_header_bytes}"
            )
        data = self.stream.read(size)
        pad = -size % BLOCK
        if len(data) != size or self.stream.skip(pad) != pad:
            raise _invalid(f"unexpected end in {what} header")
        return data

    def next(self) -> Entry | None:
        """The next entry, or None at the end of the archive."""
        if self._done:
            return None
        self._skip_rest()
        pax: dict[str, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        while True:
            block = self._read_block()
            if block == _ZERO:
                nxt = self.stream.read(BLOCK)
                if nxt and nxt.count(0) != len(nxt):
                    raise _invalid("data after a zero block")
                self._done = True
                return None
            self._check_sum(block)
            typ = chr(block[156]) if block[156] else REG
            size = _number(block[124:136], "size")
            if typ in ("x", "g", "L", "K"):
                payload = self._read_payload(size, "extended")
                if typ == "x":
                    pax.update(parse_pax(payload))
                elif typ == "g":
                    parse_pax(payload)
                elif typ == "L":
                    longname = _cstring(payload)
                else:
                    longlink = _cstring(payload)
                self._count()
                continue
            break
        self._count()
        magic = block[257:263]
        rawname = _cstring(block[0:100])
        if magic == b"ustar\x00":
            prefix = _cstring(block[345:500])
            if prefix:
                rawname = prefix + b"/" + rawname
        if longname is not None:
            rawname = longname
        rawlink = longlink if longlink is not None else _cstring(block[157:257])
        entry = Entry(
            name=os.fsdecode(rawname),
            type=typ,
            size=size,
            mode=_number(block[100:108], "mode") & 0o7777,
            uid=_number(block[108:116], "uid"),
            gid=_number(block[116:124], "gid"),
            mtime_ns=_number(block[136:148], "mtime") * 1_000_000_000,
            linkname=os.fsdecode(rawlink),
            devmajor=_number(block[329:337], "devmajor") if typ in (CHR, BLK) else 0,
            devminor=_number(block[337:345], "devminor") if typ in (CHR, BLK) else 0,
        )
        if pax:
            self._apply_pax(entry, pax)
        if typ in HEADER_ONLY:
            entry.size = 0
        if entry.size < 0:
            raise _invalid("negative size")
        if len(entry.name) > self.limits.max_name or len(entry.linkname) > self.limits.max_name:
            raise _invalid(f"name longer than {self.limits.max_name} bytes")
        if "\0" in entry.name or "\0" in entry.linkname:
            raise _invalid("NUL in name")
        self._remaining = entry.size
        self._padding = -entry.size % BLOCK
        return entry

    def _count(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise errdefs.ResourceExhausted(
                f"layer has more than {self.limits.max_entries} entries"
            )

    @staticmethod
    def _check_sum(block: bytes) -> None:
        stored = _number(block[148:156], "checksum")
        unsigned = sum(block) - sum(block[148:156]) + 256
        if stored == unsigned:
            return
        signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
        if stored != signed:
            raise _invalid("header checksum mismatch")

    @staticmethod
    def _apply_pax(entry: Entry, pax: dict[str, bytes]) -> None:
        for key, raw in pax.items():
            if key.startswith(XATTR_PREFIX):
                name = key[len(XATTR_PREFIX) :]
                if not name or len(name.encode("utf-8", "surrogateescape")) > 255:
                    raise _invalid("bad xattr name")
                entry.xattrs[name] = raw
                continue
            if key.startswith("GNU.sparse"):
                raise _invalid("sparse files are not supported")
            value = raw.decode("utf-8", "surrogateescape")
            try:
                if key == "path":
                    entry.name = value
                elif key == "linkpath":
                    entry.linkname = value
                elif key == "size":
                    entry.size = int(value)
                elif key == "uid":
                    entry.uid = int(value)
                elif key == "gid":
                    entry.gid = int(value)
                elif key == "mtime":
                    entry.mtime_ns = _pax_time(value)
                elif key == "atime":
                    entry.atime_ns = _pax_time(value)
            except ValueError:
                raise _invalid(f"bad PAX {key}") from None
        if entry.uid < 0 or entry.gid < 0 or entry.uid > 0xFFFFFFFE or entry.gid > 0xFFFFFFFE:
            raise _invalid("uid/gid out of range")
