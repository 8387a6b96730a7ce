"""Fixtures: an in-process Adaptation on a real NRI socket under tmp, and Python plugins
(the SDK's Stub) connected to it over that socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from moorage.nri.adaptation import Adaptation, Options
from moorage.nri.stub import Plugin, Stub


class Harness:
    def __init__(self, adaptation: Adaptation, socket_path: str) -> None:
        self.nri = adaptation
        self.socket_path = socket_path
        self.stubs: list[Stub] = []

    async def plugin(self, plugin: Plugin, idx: str, name: str) -> Stub:
        """Connect ``plugin`` as ``idx-name`` and wait until the runtime side lists it."""
        stub = Stub(plugin, name=name, idx=idx, socket_path=self.socket_path)
        await stub.start()
        self.stubs.append(stub)
        await self.nri.wait_until(lambda: any(p.id == f"{idx}-{name}" for p in self.nri.plugins))
        return stub

    def ids(self) -> list[str]:
        return [p.id for p in self.nri.plugins]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async for h in make_harness():
        yield h


async def make_harness(**options: Any) -> AsyncIterator[Harness]:
    tmp = Path(tempfile.mkdtemp(prefix="nri-", dir="/tmp"))
    path = str(tmp / "nri" / "nri.sock")
    updates: list[Any] = []
    updated = asyncio.Event()

    async def updater(u: Any) -> list[Any]:
        updates.extend(u)
        updated.set()
        return []

    opts = {"socket_path": path, "request_timeout": 0.5, "registration_timeout": 1.0, **options}
    nri = Adaptation(Options(**opts), updater=updater)
    nri.applied = updates  # type: ignore[attr-defined]
    nri.updated = updated  # type: ignore[attr-defined]
    await nri.listen()
    h = Harness(nri, path)
    try:
        yield h
    finally:
        for s in h.stubs:
            s.close()
        await nri.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def harness_factory() -> Callable[..., AsyncIterator[Harness]]:
    return make_harness
