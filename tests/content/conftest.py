"""Fixtures for the content tests: one ``store`` per implementation of the contract.

``store`` is parametrized over the local store, the ttrpc client against the service over a
real unix socket, and the client through the proxy of a real suite (tests/suite.py). The
conformance suite (test_conformance.py) runs unchanged against each.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.namespaces import current_namespace

NS = "conformance"


@contextlib.contextmanager
def using(ns: str | None) -> Iterator[None]:
    token = current_namespace.set(ns)
    try:
        yield
    finally:
        current_namespace.reset(token)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "content"


_seq = itertools.count()


def other() -> str:
    """A second namespace, next to the test's own."""
    return f"{current_namespace.get()}-b"


@pytest.fixture(autouse=True)
def _namespace() -> Iterator[None]:
    """A namespace of its own for every test (suites may be shared between tests)."""
    with using(f"{NS}-{next(_seq)}"):
        yield


async def _local(root: Path) -> AsyncIterator[Any]:
    from moorage.services.content.store import LocalStore

    store = LocalStore(str(root))
    try:
        yield store
    finally:
        store.close()


@contextlib.asynccontextmanager
async def serving(root: Path) -> AsyncIterator[Any]:
    """The content API of a local store on a real unix socket; yields a connected client."""
    pytest.importorskip("ttrpc.server")
    from ttrpc.server import Server

    from moorage.events import NullPublisher
    from moorage.rpc import connect, status_of
    from moorage.runner import with_namespace, with_namespace_raw
    from moorage.services.content.api import servicers
    from moorage.services.content.store import LocalStore

    store = LocalStore(str(root))
    server = Server(status_of=status_of)
    service, *raws = servicers(store, NullPublisher())
    server.register(with_namespace(service))
    for raw in raws:
        for method, handler in raw.methods.items():  # type: ignore[attr-defined]
            server.register_raw(raw.service, method, with_namespace_raw(handler))  # type: ignore[attr-defined]
    # a short path: unix socket paths are limited to 108 bytes
    sockdir = tempfile.mkdtemp(prefix="moor-c-")
    os.chmod(sockdir, 0o700)
    sock = os.path.join(sockdir, "content.sock")
    await server.listen_unix(sock)
    client = await connect(sock)
    try:
        yield client
    finally:
        await client.close()
        await server.shutdown(1.0)
        store.close()
        shutil.rmtree(sockdir, ignore_errors=True)


async def _socket(root: Path) -> AsyncIterator[Any]:
    from moorage.services.content.client import ContentClient

    async with serving(root) as client:
        yield ContentClient(client)


@pytest.fixture(scope="module")
def proxied_suite() -> Iterator[Any]:
    """One proxy + content suite for the module; tests keep apart by namespace."""
    suite = pytest.importorskip("suite")
    pytest.importorskip("moorage.proxy.process")
    tmp = Path(tempfile.mkdtemp(prefix="moorage-", dir="/tmp"))
    s = suite.Suite(tmp)
    try:
        s.start("proxy")
        s.start("content")
        yield s
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _proxy(suite: Any) -> AsyncIterator[Any]:
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    client = await connect(suite.address)
    try:
        yield ContentClient(client)
    finally:
        await client.close()


@pytest.fixture(params=["local", "socket", "proxy"])
async def store(request: pytest.FixtureRequest, root: Path) -> AsyncIterator[Any]:
    if request.param == "proxy":
        gen = _proxy(request.getfixturevalue("proxied_suite"))
    else:
        gen = (_local if request.param == "local" else _socket)(root)
    value = await gen.__anext__()
    try:
        yield value
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await gen.__anext__()
