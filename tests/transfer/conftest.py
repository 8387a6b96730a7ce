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
