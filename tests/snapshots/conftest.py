"""Fixtures for the snapshots tests: a ``snapshotters`` per implementation of the contract.

``snapshotters`` (a ``contract.Snapshotters``) is parametrized over the local store, the
ttrpc client against the service over a real unix socket, and the client through the proxy
of a real suite; ``sn`` is one snapshotter from it, parametrized over overlayfs and native.
The conformance suite (test_conformance.py) runs unchanged against each combination.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.namespaces import current_namespace

NS = "snaptest"
OTHER = "snaptest-other"


@contextlib.contextmanager
def using(ns: str | None) -> Iterator[None]:
    token = current_namespace.set(ns)
    try:
        yield
    finally:
        current_namespace.reset(token)


@pytest.fixture(autouse=True)
def _namespace() -> Iterator[None]:
    with using(NS):
        yield


async def _local(root: Path) -> AsyncIterator[Any]:
    from moorage.services.snapshots.store import LocalSnapshotters

    sns = LocalSnapshotters(str(root))
    try:
        yield sns
    finally:
        sns.close()


async def _socket(root: Path) -> AsyncIterator[Any]:
    pytest.importorskip("moorage.api.containerd.services.snapshots.v1.snapshots_ttrpc")
    from ttrpc.server import Server

    from moorage.events import NullPublisher
    from moorage.rpc import connect, status_of
    from moorage.services.snapshots.api import SnapshotsService
    from moorage.services.snapshots.client import RemoteSnapshotters
    from moorage.services.snapshots.store import LocalSnapshotters

    sns = LocalSnapshotters(str(root))
    server = Server(status_of=status_of)
    server.register(SnapshotsService(sns, NullPublisher()))
    sockdir = tempfile.mkdtemp(prefix="moor-s-")
    os.chmod(sockdir, 0o700)
    sock = os.path.join(sockdir, "snapshots.sock")
    with using(None):  # handlers must take the namespace from each call's metadata
        await server.listen_unix(sock)
    client = await connect(sock)
    try:
        yield RemoteSnapshotters(client)
    finally:
        await client.close()
        await server.shutdown(1.0)
        sns.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        os.rmdir(sockdir)


async def _proxy(root: Path) -> AsyncIterator[Any]:
    suite = pytest.importorskip("tests.suite")
    if not hasattr(suite, "running"):
        pytest.skip("tests/suite.py has no running()")
    from moorage.rpc import connect
    from moorage.services.snapshots.client import RemoteSnapshotters

    async with suite.running(["snapshots"]) as s:
        client = await connect(s.address)
        try:
            yield RemoteSnapshotters(client)
        finally:
            await client.close()


_KINDS = {"local": _local, "socket": _socket, "proxy": _proxy}


@pytest.fixture(params=sorted(_KINDS))
async def snapshotters(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    gen = _KINDS[request.param](tmp_path / "snapshots")
    value = await gen.__anext__()
    try:
        yield value
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await gen.__anext__()


@pytest.fixture(params=["overlayfs", "native"])
def sn(request: pytest.FixtureRequest, snapshotters: Any) -> Any:
    return snapshotters.get(request.param)
