from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from ttrpc.client import Client  # noqa: E402
from ttrpc.server import Server  # noqa: E402
from ttrpctest.impl import Echo  # noqa: E402


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ttrpc.sock")


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
async def server(sock_path: str, echo: Echo) -> AsyncIterator[Server]:
    srv = Server()
    srv.register(echo)
    await srv.listen_unix(sock_path)
    yield srv
    srv.close()


@pytest.fixture
async def client(server: Server, sock_path: str) -> AsyncIterator[Client]:
    c = await Client.connect(sock_path)
    yield c
    await c.close()



def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on uvloop (production) and on plain asyncio."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories
