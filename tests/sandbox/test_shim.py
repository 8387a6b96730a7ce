"""The shim sandboxer against a small shim of ours serving containerd.runtime.sandbox.v1.Sandbox:
directly, and through the proxy of a real suite (Controller calls with sandboxer "shim")."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.namespaces import current_namespace
from moorage.services.sandbox.config import SandboxConfig
from moorage.services.sandbox.contract import NOT_READY, READY, AnyValue, CreateOptions, Runtime, Sandbox
from moorage.services.sandbox.db import Database
from moorage.services.sandbox.shim import ShimController, parse_start_output
from moorage.services.sandbox.store import SqliteStore

from .conftest import Events

HERE = Path(__file__).parent


@pytest.fixture
def shim_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "containerd-shim-moortest-v1"
    path.write_text(f"#!{sys.executable}\n" + (HERE / "fakeshim.py").read_text())
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MOORTEST_SHIM_LOG", str(tmp_path / "shim-calls.log"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    return path


@pytest.fixture
def ns() -> Iterator[str]:
    token = current_namespace.set("shimtest")
    yield "shimtest"
    current_namespace.reset(token)


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)  # the shim is not our child: nothing to wait on but its pid
    return False


def test_parse_start_output() -> None:
    assert parse_start_output(b"unix:///run/x.sock") == ("/run/x.sock", 2)
    assert parse_start_output(b'{"version":3,"address":"unix:///r/s","protocol":"ttrpc"}') == ("/r/s", 3)
    for bad in (b"", b"tcp://x", b'{"protocol":"grpc","address":"unix:///x"}', b"{nope"):
        with pytest.raises(errdefs.Unavailable):
            parse_start_output(bad)


@pytest.fixture
async def shims(tmp_path: Path, ns: str) -> AsyncIterator[tuple[ShimController, SqliteStore, Events]]:
    db = Database(tmp_path / "sandbox.db")
    store = SqliteStore(db)
    events = Events()
    ctl = ShimController("shim", db, store, SandboxConfig(), tmp_path / "shims", str(tmp_path / "proxy.sock"), events)
    yield ctl, store, events
    await ctl.close()
    db.close()


async def test_shim_sandbox_lifecycle(shims: Any, shim_binary: Path, tmp_path: Path) -> None:
    ctl, store, events = shims
    await store.create(Sandbox("pod1", Runtime(str(shim_binary)), sandboxer="shim", spec=AnyValue("x.Spec", b'{"ociVersion":"1.1.0"}')))
    opts = CreateOptions(netns_path="/var/run/netns/given", annotations={"k": "v"}, options=AnyValue("x.Opts", b"1"))
    await ctl.create("pod1", opts)
    bundle = tmp_path / "shims" / "shimtest" / "pod1"
    assert json.loads((bundle / "config.json").read_text()) == {"ociVersion": "1.1.0"}
    created = json.loads((bundle / "create.json").read_text())
    assert created == {"sandbox_id": "pod1", "netns_path": "/var/run/netns/given", "annotations": {"k": "v"}, "options": "x.Opts", "rootfs": []}

    inst = await ctl.start("pod1")
    assert inst.pid > 0 and inst.address.startswith("ttrpc+unix:///") and inst.version == 2
    status = await ctl.status("pod1", verbose=True)
    assert status.state == READY and status.pid == inst.pid and status.info == {"shim": "fake", "verbose": "True"}
    assert status.address == inst.address
    assert (await ctl.platform("pod1")).architecture == "fake64"
    assert await ctl.metrics("pod1") == AnyValue("moortest.Metrics", b"\x08\x2a")

    waiter = asyncio.ensure_future(ctl.wait("pod1"))
    await ctl.stop("pod1", 3)
    assert (await asyncio.wait_for(waiter, 10)).exit_status == 0
    await ctl.shutdown("pod1")
    assert gone(inst.pid)
    assert not bundle.exists()
    with pytest.raises(errdefs.NotFound):
        await ctl.status("pod1")
    assert events.topics()[:2] == ["/sandboxes/create", "/sandboxes/start"]
    assert "/sandboxes/exit" in events.topics()


async def test_shim_errors_and_crash(shims: Any, shim_binary: Path, tmp_path: Path) -> None:
    ctl, store, _ = shims
    with pytest.raises(errdefs.FailedPrecondition):  # no record: no runtime to launch
        await ctl.create("norecord", CreateOptions())
    await store.create(Sandbox("missing", Runtime("io.containerd.nosuchshim.v9"), sandboxer="shim"))
    with pytest.raises(errdefs.NotFound):
        await ctl.create("missing", CreateOptions())

    await store.create(Sandbox("crash", Runtime(str(shim_binary)), sandboxer="shim"))
    await ctl.create("crash", CreateOptions())
    pid = (await ctl.start("crash")).pid
    with pytest.raises(errdefs.AlreadyExists):
        await ctl.create("crash", CreateOptions())
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    status = await ctl.status("crash")
    assert status.state == NOT_READY and "unreachable" in status.info["error"]
    assert (await ctl.wait("crash")).exit_status == 255
    await ctl.shutdown("crash")  # shim unreachable: `<shim> delete` cleans up
    calls = (tmp_path / "shim-calls.log").read_text()
    assert "delete shimtest crash" in calls
    assert not (tmp_path / "shims" / "shimtest" / "crash").exists()


async def test_shim_sandboxer_through_proxy(shim_binary: Path, tmp_path: Path) -> None:
    suite = pytest.importorskip("suite")
    from moorage.rpc import connect
    from moorage.services.sandbox.client import ControllerClient, StoreClient

    config = {"sandbox": {"cni_conf_dir": str(tmp_path / "net.d"), "reconcile": False}}
    token = current_namespace.set("shimtest")
    try:
        async with suite.running(["sandbox"], config=config) as s:
            client = await connect(s.address)
            try:
                store, ctl = StoreClient(client), ControllerClient(client, "shim")
                await store.create(Sandbox("viaproxy", Runtime(str(shim_binary)), sandboxer="shim"))
                await ctl.create("viaproxy", CreateOptions(annotations={"a": "b"}))
                inst = await ctl.start("viaproxy")
                assert inst.address.startswith("ttrpc+unix://")
                assert (await ctl.status("viaproxy")).state == READY
                await ctl.stop("viaproxy")
                assert (await ctl.wait("viaproxy")).exit_status == 0
                await ctl.shutdown("viaproxy")
                assert gone(inst.pid)
                await store.delete("viaproxy")

                def moor(*args: str) -> str:
                    out = s.moor("--namespace", "shimtest", *args)
                    assert out.returncode == 0, out.stderr
                    return str(out.stdout)

                run = json.loads(await asyncio.to_thread(moor, "--json", "sandbox", "run", "--sandboxer", "shim", "--runtime", str(shim_binary), "cli"))
                assert run["pid"] > 0 and run["address"].startswith("ttrpc+unix://")
                ls = json.loads(await asyncio.to_thread(moor, "--json", "sandbox", "ls"))
                assert [(r["id"], r["sandboxer"], r["state"]) for r in ls] == [("cli", "shim", "SANDBOX_READY")]
                await asyncio.to_thread(moor, "sandbox", "rm", "-f", "cli")
                assert gone(run["pid"])
                assert json.loads(await asyncio.to_thread(moor, "--json", "sandbox", "ls")) == []
            finally:
                await client.close()
    finally:
        current_namespace.reset(token)


async def test_reconcile_cleans_half_created_shim_sandbox(shims: Any, shim_binary: Path, tmp_path: Path) -> None:
    from moorage.services.sandbox.reconcile import reconcile

    ctl, _, _ = shims
    bundle = tmp_path / "shims" / "shimtest" / "half"
    bundle.mkdir(parents=True)
    ctl.db.put_instance("shimtest", "half", "shim", {"binary": str(shim_binary), "bundle": str(bundle), "address": "", "version": 2, "state": "creating"})
    report = await reconcile([], [ctl])
    assert report.shims_cleaned == ["shimtest/half"]
    assert not bundle.exists() and ctl.db.get_instance("shimtest", "half", "shim") is None
    assert "delete shimtest half" in (tmp_path / "shim-calls.log").read_text()
