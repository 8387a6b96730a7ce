"""Raw tar archives for tests, including ones no well-behaved writer would produce."""

from __future__ import annotations

import gzip as _gzip
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

BLOCK = 512


def _octal(value: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, value)) + b"\0"


def header(
    name: bytes | str,
    type: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    linkname: bytes | str = b"",
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1_700_000_000,
    devmajor: int = 0,
    devminor: int = 0,
    checksum: int | None = None,
    size_field: bytes | None = None,
) -> bytes:
    name = os.fsencode(name)
    linkname = os.fsencode(linkname)
    h = bytearray(BLOCK)
    h[0:100] = name[:100].ljust(100, b"\0")
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(uid, 8)
    h[116:124] = _octal(gid, 8)
    h[124:136] = size_field if size_field is not None else _octal(size, 12)
    h[136:148] = _octal(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = type
    h[157:257] = linkname[:100].ljust(100, b"\0")
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = _octal(devmajor, 8)
    h[337:345] = _octal(devminor, 8)
    csum = sum(h) if checksum is None else checksum
    h[148:156] = b"%06o\0 " % csum
    return bytes(h)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def pax_record(key: str | bytes, value: str | bytes) -> bytes:
    k = os.fsencode(key) if isinstance(key, str) else key
    v = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    body = b" " + k + b"=" + v + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


@dataclass
class E:
    """One entry to write; ``type`` as the tar typeflag ("0" file, "5" dir, "2" symlink...)."""

    name: str
    type: str = "0"
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    pax: dict[str, bytes | str] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def entry_bytes(e: E) -> bytes:
    out = b""
    pax = dict(e.pax)
    if len(os.fsencode(e.name)) > 100:
        pax.setdefault("path", e.name)
    if len(os.fsencode(e.link)) > 100:
        pax.setdefault("linkpath", e.link)
    if pax:
        body = b"".join(pax_record(k, v) for k, v in pax.items())
        out += header("PaxHeader", b"x", len(body)) + pad(body)
    size = len(e.data) if e.type in ("0", "7") else 0
    out += header(
        e.name,
        e.type.encode(),
        size,
        e.mode,
        e.link,
        e.uid,
        e.gid,
        devmajor=e.dev[0],
        devminor=e.dev[1],
    )
    if size:
        out += pad(e.data)
    return out


def tar(entries: Iterable[E], end: bool = True) -> bytes:
    data = b"".join(entry_bytes(e) for e in entries)
    return data + (b"\0" * (2 * BLOCK) if end else b"")


def gz(data: bytes) -> bytes:
    return _gzip.compress(data, 1)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def snapshot_tree(root: str) -> dict[str, tuple[object, ...]]:
    """Everything observable about a tree: type, mode, owner, size, mtime, content, target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            extra: object = None
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink, extra)
    st = os.lstat(root)
    out["."] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out
