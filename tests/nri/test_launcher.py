"""Pre-installed plugins: discovery in the plugin folder, config lookup, and launched
plugins that hang or crash (killed, dropped, the event carries on)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.adaptation import Adaptation, Options
from moorage.nri.launcher import discover, read_config

SCRIPT = """#!{python}
import asyncio, os, sys
from moorage.nri.stub import Adjustment, Plugin, run

class P(Plugin):
    async def create_container(self, pod, container):
        mode = {mode!r}
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "crash":
            os._exit(7)
        return Adjustment().add_env("FROM", os.environ["NRI_PLUGIN_NAME"])

raise SystemExit(run(P()))
"""


def plugin(folder: Path, name: str, mode: str) -> None:
    path = folder / name
    path.write_text(SCRIPT.format(python=sys.executable, mode=mode))
    path.chmod(0o755)


@pytest.fixture
async def folder() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nri-plugins-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_discovery_and_config(tmp_path: Path) -> None:
    for name in ("20-b", "10-a", "x-bad", "1-short", "30-c d", "40-d"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    (tmp_path / "40-d").chmod(0o644)
    (tmp_path / "50-dir").mkdir()
    found = discover(tmp_path)
    assert [p.id for p in found] == ["10-a", "20-b"]
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.conf").write_text("by name")
    assert read_config(found[0], conf) == "by name"
    (conf / "10-a.conf").write_text("by id")
    assert read_config(found[0], conf) == "by id"
    assert read_config(found[1], conf) == ""
    assert discover(tmp_path / "missing") == []


@pytest.mark.parametrize("mode", ["hang", "crash"])
async def test_launched_plugin_that_hangs_or_crashes_is_killed_and_dropped(folder: Path, mode: str) -> None:
    plugin(folder, "10-bad", mode)
    plugin(folder, "20-good", "ok")
    # one timeout drops it (request_timeout_strikes 1, upstream's rule; the default is 3)
    nri = Adaptation(Options(socket_path=str(folder / "nri.sock"), request_timeout=1.0, registration_timeout=10.0,
                             request_timeout_strikes=1))
    try:
        running = await nri.launch_preinstalled(folder, folder / "conf.d", folder / "logs")
        assert [p.id for p in running] == ["10-bad", "20-good"]
        assert all(p.pid > 0 and p.was_launched for p in running)
        bad = running[0]
        adj = await nri.create_container(api.PodSandbox(id="p"), api.Container(id="c"))
        assert [(kv.key, kv.value) for kv in adj.env] == [("FROM", "good")]
        assert [p.id for p in nri.plugins] == ["20-good"]
        assert bad.reaped is not None
        status = await bad.reaped
        assert status == -9 if mode == "hang" else status in (7, -9)  # a crash may race the kill
    finally:
        await nri.close()


async def test_launched_plugin_is_restarted_and_resynchronized(folder: Path) -> None:
    plugin(folder, "10-bad", "crash")
    nri = Adaptation(Options(socket_path=str(folder / "nri.sock"), request_timeout=2.0, registration_timeout=10.0,
                             restart_delay=0.05, restart_max_delay=0.1))
    try:
        [first] = await nri.launch_preinstalled(folder, folder / "conf.d", folder / "logs")
        await nri.create_container(api.PodSandbox(id="p"), api.Container(id="c1"))
        assert first not in nri.plugins
        await nri.wait_until(lambda: bool(nri.plugins), timeout=20)
        [second] = nri.plugins
        assert second.id == "10-bad" and second.pid != first.pid and second.was_launched
        await nri.create_container(api.PodSandbox(id="p"), api.Container(id="c2"))  # crashes again
        await nri.wait_until(lambda: bool(nri.plugins) and nri.plugins[0] is not second, timeout=20)
    finally:
        await nri.close()
    assert not nri.plugins
