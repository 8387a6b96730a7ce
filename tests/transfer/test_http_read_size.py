"""The registry client reads bodies READ_SIZE at a time by raising httpcore's read size, a
class attribute of a dependency: if an httpcore upgrade drops it, this fails (pulls would
only get slower, see registry/http._read_size)."""

from __future__ import annotations

import httpcore

from moorage.services.transfer.registry import http


def test_preload_raises_httpcores_read_size() -> None:
    http.preload()
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == http.READ_SIZE == 256 << 10
