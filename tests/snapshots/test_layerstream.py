"""Gzip layers through ``LayerStream`` with each decoder (zlib, ISA-L): same bytes, same
digest, same error kinds and messages (the decoder's own wording after ``gzip:`` aside).

The applier's gzip cases (truncated, multistream, non-tar, caps, a full layer) are imported
from test_applier and run here once per decoder, with that module's fixtures."""

from __future__ import annotations

import gzip as _gzip
import hashlib
import os
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage import errdefs
from moorage.services.snapshots import layerstream
from moorage.services.snapshots.layerstream import LayerStream

from .test_applier import (  # noqa: F401 - the fixtures these tests use, and the tests
    canary,
    resolver,
    root,
    test_decompression_bomb_ratio,
    test_gzip_multistream_and_zstd_frames,
    test_max_bytes,
    test_non_tar,
    test_regular_layer_metadata_and_digest,
    test_truncated_gzip,
)

try:
    from isal import isal_zlib
except ImportError:
    isal_zlib = None

DECODERS = {"zlib": zlib, "isal": isal_zlib}


@pytest.fixture(autouse=True, params=list(DECODERS))
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    mod = DECODERS[request.param]
    if mod is None:
        pytest.skip("isal is not installed")
    monkeypatch.setattr(layerstream, "INFLATE", mod)
    return str(request.param)


def split(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def drain(chunks: Iterator[bytes]) -> tuple[bytes, str, int]:
    s = LayerStream(chunks)
    try:
        out = s.read(1 << 40)
        digest, size = s.finish()
    finally:
        s.close()
    return out, digest, size


def outcome(data: bytes, size: int) -> tuple[str, str]:
    """(kind, detail) of decompressing ``data`` fed in ``size``-byte chunks. Bad data and a
    truncation are one detail: on a stream that is both, zlib checks a member's CRC as soon
    as its 4 bytes arrive, ISA-L once the 8-byte trailer is whole."""
    try:
        out, digest, n = drain(split(data, size))
    except errdefs.Error as exc:
        msg = str(exc)
        return type(exc).__name__, "bad gzip" if msg.startswith("invalid layer: gzip") else msg
    assert digest == "sha256:" + hashlib.sha256(out).hexdigest() and n == len(out)
    return "ok", digest


def header(flags: int, extra: bytes = b"abcd", name: bytes = b"layer.tar") -> bytes:
    h = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\xff"
    if flags & 4:
        h += len(extra).to_bytes(2, "little") + extra
    if flags & 8:
        h += name + b"\0"
    if flags & 16:
        h += b"a comment\0"
    if flags & 2:
        h += (zlib.crc32(h) & 0xFFFF).to_bytes(2, "little")
    return h


def member(raw: bytes, flags: int = 0) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = c.compress(raw) + c.flush()
    return header(flags) + body + zlib.crc32(raw).to_bytes(4, "little") + len(raw).to_bytes(4, "little")


RAW = os.urandom(3000) + b"layer " * 50_000 + os.urandom(2000)
GOOD = _gzip.compress(RAW)


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_members_and_headers(size: int) -> None:
    data = member(RAW[:7000], 0) + member(b"", 4) + member(RAW[7000:20000], 2) + member(RAW[20000:], 14)
    if size == 1:
        data = member(RAW[:300], 2) + member(RAW[300:600], 6)
    out, digest, n = drain(split(data, size))
    want = RAW if size != 1 else RAW[:600]
    assert out == want and digest == "sha256:" + hashlib.sha256(want).hexdigest() and n == len(want)


@pytest.mark.parametrize("flags", [0, 1, 2, 4, 6, 8, 12, 14, 16, 28, 29, 31])
def test_header_split_anywhere(flags: int) -> None:
    """ISA-L misparses some headers that come in pieces (FEXTRA+FNAME, FHCRC)."""
    data = member(b"x" * 100, flags) + member(b"y" * 50, flags)
    for cut in range(1, len(header(flags)) + 2):
        for at in (cut, len(data) // 2 + cut):
            out, _, _ = drain(iter([data[:at], data[at:]]))
            assert out == b"x" * 100 + b"y" * 50
    for size in (1, 2, 3):
        out, _, _ = drain(split(data, size))
        assert out == b"x" * 100 + b"y" * 50


def test_large_output_is_chunked() -> None:
    raw = b"\0" * (5 << 20) + b"end"
    s = LayerStream(split(_gzip.compress(raw, 9), 1 << 20))
    try:
        sizes = []
        while True:
            part = s.read(layerstream.CHUNK)
            if not part:
                break
            sizes.append(len(part))
        assert sum(sizes) == len(raw) and max(sizes) <= layerstream.CHUNK
        assert s.finish() == ("sha256:" + hashlib.sha256(raw).hexdigest(), len(raw))
    finally:
        s.close()


@pytest.mark.parametrize("size", [3, 4096, 1 << 20])
@pytest.mark.parametrize(
    "data,kind,message",
    [
        (GOOD[:-5], errdefs.InvalidArgument, "invalid layer: gzip stream truncated"),
        (GOOD[:6], errdefs.InvalidArgument, "invalid layer: gzip stream truncated"),
        (GOOD + b"\x1f", errdefs.InvalidArgument, "invalid layer: gzip stream truncated"),
        (GOOD + GOOD[:100], errdefs.InvalidArgument, "invalid layer: gzip stream truncated"),
        (GOOD + b"tail", errdefs.InvalidArgument, "invalid layer: garbage after gzip stream"),
        (GOOD + b"\0" * 10, errdefs.InvalidArgument, "invalid layer: garbage after gzip stream"),
        (GOOD[:-8] + b"\0\0\0\0" + GOOD[-4:], errdefs.InvalidArgument, "invalid layer: gzip: "),
        (GOOD[:-4] + b"\1\0\0\0", errdefs.InvalidArgument, "invalid layer: gzip: "),
        (GOOD[:10] + b"\xff" * 20 + GOOD[30:], errdefs.InvalidArgument, "invalid layer: gzip: "),
        (b"\x1f\x8b\x09" + GOOD[3:], errdefs.InvalidArgument, "invalid layer: gzip: "),
        (GOOD + b"\x1f\x8bX", errdefs.InvalidArgument, "invalid layer: gzip"),
    ],
    ids=["truncated", "header-only", "partial-magic-after", "truncated-second", "garbage-after",
         "zeros-after", "bad-crc", "bad-size", "bad-block", "bad-method", "bad-second-header"],
)
def test_bad_gzip(data: bytes, kind: type, message: str, size: int) -> None:
    with pytest.raises(kind) as info:
        drain(split(data, size))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "limits,message",
    [(layerstream.Limits(max_bytes=1000), "max uncompressed size"),
     (layerstream.Limits(max_ratio=2, ratio_floor=1000), "ratio")],
)
def test_caps(limits: layerstream.Limits, message: str) -> None:
    s = LayerStream(split(GOOD, 4096), limits)
    try:
        with pytest.raises(errdefs.ResourceExhausted, match=message):
            s.read(1 << 40)
            s.finish()
    finally:
        s.close()


@settings(max_examples=int(os.environ.get("H9_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.binary(max_size=3000), min_size=1, max_size=3),
    flags=st.sampled_from([0, 2, 4, 8, 12, 14, 28]),
    cut=st.integers(0, 10_000),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    tail=st.sampled_from([b"", b"\x1f", b"\x1f\x8b", b"x", b"\x1f\x8b\x08\x02"]),
    size=st.sampled_from([1, 2, 5, 64, 1 << 20]),
)
def test_same_outcome_as_zlib(parts: list[bytes], flags: int, cut: int, edits: list[tuple[int, int]],
                              tail: bytes, size: int) -> None:
    data = bytearray(b"".join(member(p, flags) for p in parts) + tail)
    for at, value in edits:
        data[at % len(data)] = value
    blob = bytes(data[: max(2, len(data) - cut % 40)]) if cut % 3 == 0 else bytes(data)
    if not blob.startswith(b"\x1f\x8b"):
        blob = b"\x1f\x8b" + blob[2:]
    got = outcome(blob, size)
    saved = layerstream.INFLATE
    layerstream.INFLATE = zlib
    try:
        want = outcome(blob, size)
    finally:
        layerstream.INFLATE = saved
    assert got == want


def test_zlib_when_isal_is_missing() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gzip; sys.modules['isal'] = None\n"
        "from moorage.services.snapshots import layerstream as l\n"
        "s = l.LayerStream(iter([gzip.compress(b'x' * 10)]))\n"
        "assert l.INFLATE.__name__ == 'zlib' and s.read(100) == b'x' * 10, l.INFLATE\n"
        "s.finish()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
