"""Property tests on every decoder of untrusted bytes in transfer: whatever the input, the
outcome is a value or an errdefs kind, never another exception, never a hang."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage import errdefs
from moorage.services.transfer import oci, reference
from moorage.services.transfer.registry.auth import parse_challenges
from moorage.services.transfer.tarstream import TarReader

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["mediaType", "schemaVersion", "manifests", "layers", "config", "digest", "size",
                         "annotations", "platform", "urls", "rootfs", "diff_ids", "os", "architecture", "x"]),
        inner, max_size=8),
    max_leaves=30)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(JSONISH, st.sampled_from(["", oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST, "text/plain"]))
def test_parse_document_structures(doc: Any, declared: str) -> None:
    try:
        oci.parse_document(json.dumps(doc).encode(), declared)
    except errdefs.Error:
        pass


@FAST
@given(st.binary(max_size=300))
def test_parse_document_bytes(data: bytes) -> None:
    for fn in (lambda: oci.parse_document(data), lambda: oci.parse_config(data)):
        try:
            fn()
        except errdefs.Error:
            pass


@FAST
@given(JSONISH)
def test_parse_config(doc: Any) -> None:
    try:
        oci.parse_config(json.dumps(doc).encode())
    except errdefs.Error:
        pass


@FAST
@given(st.text(max_size=200))
def test_reference_and_platform(s: str) -> None:
    for fn in (reference.parse, oci.parse_platform, oci.validate_digest):
        try:
            fn(s)
        except errdefs.Error:
            pass


@FAST
@given(st.lists(st.text(max_size=300), max_size=4))
def test_challenges(headers: list[str]) -> None:
    for c in parse_challenges(headers):
        assert isinstance(c.scheme, str) and isinstance(c.params, dict)


async def _drain(data: bytes) -> None:
    async def src() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 97):
            yield data[i:i + 97]
    r = TarReader(src())
    while (e := await r.next()) is not None:
        await r.read(1 << 20) if e.size < (1 << 20) else [c async for c in r.chunks()]


def _tar(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for n in names:
            ti = tarfile.TarInfo(n or "x")
            ti.size = 3
            t.addfile(ti, io.BytesIO(b"abc"))
    return buf.getvalue()


@FAST
@given(st.lists(st.text(min_size=1, max_size=120), max_size=3), st.integers(0, 4000), st.binary(max_size=8))
def test_tar_reader_mutations(names: list[str], pos: int, junk: bytes) -> None:
    data = bytearray(_tar(names))
    pos = pos % max(len(data), 1)
    data[pos:pos + len(junk)] = junk
    try:
        asyncio.run(asyncio.wait_for(_drain(bytes(data)), 10))
    except errdefs.Error:
        pass


@FAST
@given(st.binary(max_size=2000))
def test_tar_reader_random(data: bytes) -> None:
    try:
        asyncio.run(asyncio.wait_for(_drain(data), 10))
    except errdefs.Error:
        pass
