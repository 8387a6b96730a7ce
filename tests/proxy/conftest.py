"""The proxy tests' client: the proxy, ``echo`` and ``other`` running (tests/skeleton/echo.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from moorage.rpc import connect
from suite import Suite
from ttrpc.client import Client

WARM = {"containerd-namespace-ttrpc": "default"}


@pytest.fixture
async def client(suite: Suite) -> AsyncIterator[Client]:
    """A client of the proxy whose first call, in namespace ``default``, is made: that one
    records the namespace (the splice's work), so the relay carries the test's calls there."""
    await asyncio.to_thread(suite.start, "proxy")
    await asyncio.to_thread(suite.start, "echo")
    await asyncio.to_thread(suite.start, "other")
    c = await connect(suite.address)
    try:
        assert await c.unary_raw("moorage.test.v1.Echo", "Echo", b"warm", metadata=WARM) == b"warm"
        yield c
    finally:
        await c.close()
