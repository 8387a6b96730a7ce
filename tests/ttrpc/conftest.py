from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
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


@pytest.fixture
def anyio_backend() -> Iterator[str]:
    yield "asyncio"
