"""Fixtures for transfer tests: real registries (tests/transfer/registry.py), an umoci-built
multi-layer image, the local content store and the image store under tmp."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.namespaces import current_namespace

from . import registry as regfix

NS = "transfer-test"


@pytest.fixture(autouse=True)
def _namespace() -> Iterator[None]:
    token = current_namespace.set(NS)
    try:
        yield
    finally:
        current_namespace.reset(token)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transfer")


@pytest.fixture(scope="session")
def layout(workdir: Path) -> Path:
    """An OCI layout (tag `latest`): busybox + 3 small layers."""
    return regfix.build_image(workdir / "image", [
        {"etc/moorage/one": b"one\n"},
        {"etc/moorage/two": b"two\n" * 1000},
        {"usr/share/moorage/three": bytes(range(256)) * 512},
    ])


def _registry(workdir: Path, variant: str) -> Iterator[regfix.Registry]:
    with regfix.running(workdir / f"reg-{variant}", variant) as reg:
        yield reg


@pytest.fixture(scope="session")
def plain_registry(workdir: Path) -> Iterator[regfix.Registry]:
    yield from _registry(workdir, "plain")


@pytest.fixture(scope="session")
def tls_registry(workdir: Path) -> Iterator[regfix.Registry]:
    yield from _registry(workdir, "tls")


@pytest.fixture(scope="session")
def basic_registry(workdir: Path) -> Iterator[regfix.Registry]:
    yield from _registry(workdir, "basic")


@pytest.fixture(scope="session")
def token_registry(workdir: Path) -> Iterator[regfix.Registry]:
    yield from _registry(workdir, "token")


def hosts_dir_for(reg: regfix.Registry, base: Path, extra: str = "") -> str:
    """A certs.d root with hosts.toml for `reg` (server + its CA)."""
    d = base / "certs.d" / reg.host
    d.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "{reg.url}"']
    if reg.ca:
        lines.append(f'ca = "{reg.ca.ca}"')
    (d / "hosts.toml").write_text("\n".join(lines) + "\n" + extra)
    return str(base / "certs.d")


@pytest.fixture
async def content(tmp_path: Path) -> AsyncIterator[Any]:
    from moorage.services.content.store import LocalStore

    store = LocalStore(str(tmp_path / "content"))
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            store.close()


@pytest.fixture
def images(tmp_path: Path) -> Iterator[Any]:
    from moorage.services.transfer.images import ImageDB

    events: list[tuple[str, str]] = []

    async def sink(topic: str, name: str, labels: Any) -> None:
        events.append((topic, name))

    db = ImageDB(tmp_path / "images", sink)
    db.events = events  # type: ignore[attr-defined]
    try:
        yield db
    finally:
        db.close()


def skopeo_available() -> bool:
    return shutil.which("skopeo") is not None


@pytest.fixture(scope="session")
def mtls_registry(workdir: Path) -> Iterator[regfix.Registry]:
    yield from _registry(workdir, "mtls")


@pytest.fixture(scope="module")
def images_suite() -> Iterator[Any]:
    """proxy + transfer for the image store conformance run through the proxy."""
    import tempfile
    suite = pytest.importorskip("suite")
    tmp = Path(tempfile.mkdtemp(prefix="moorage-img-", dir="/tmp"))
    s = suite.Suite(tmp)
    try:
        s.start("proxy")
        s.start("transfer")
        yield s
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _socket_images(root: Path) -> AsyncIterator[Any]:
    import os
    import tempfile

    from ttrpc.server import Server

    from moorage.rpc import connect, status_of
    from moorage.runner import with_namespace
    from moorage.services.transfer.api import ImagesService
    from moorage.services.transfer.client import ImagesClient
    from moorage.services.transfer.images import ImageDB

    db = ImageDB(root)
    server = Server(status_of=status_of)
    server.register(with_namespace(ImagesService(db)))
    sockdir = tempfile.mkdtemp(prefix="moor-i-")
    os.chmod(sockdir, 0o700)
    sock = os.path.join(sockdir, "images.sock")
    await server.listen_unix(sock)
    client = await connect(sock)
    try:
        yield ImagesClient(client)
    finally:
        await client.close()
        await server.shutdown(1.0)
        db.close()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture(params=["local", "socket", "proxy"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, images: Any) -> AsyncIterator[Any]:
    """The image store contract: the SQLite store, its client over a unix socket, through the proxy."""
    if request.param == "local":
        yield images
        return
    if request.param == "socket":
        gen = _socket_images(tmp_path / "sock")
        value = await gen.__anext__()
        try:
            yield value
        finally:
            with contextlib.suppress(StopAsyncIteration):
                await gen.__anext__()
        return
    from moorage.rpc import connect
    from moorage.services.transfer.client import ImagesClient
    s = request.getfixturevalue("images_suite")
    client = await connect(s.address)
    ns = f"conf-{os_urandom_hex()}"
    token = current_namespace.set(ns)
    try:
        yield ImagesClient(client)
    finally:
        current_namespace.reset(token)
        await client.close()


def os_urandom_hex() -> str:
    import os
    return os.urandom(4).hex()
