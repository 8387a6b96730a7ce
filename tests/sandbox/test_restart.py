"""The service dies (SIGKILL) mid-create and restarts: the reconciler releases what the
half-done create took; a ready sandbox survives a restart unchanged (root, real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import CniNet

pytestmark = pytest.mark.root


def _suite(testnet: CniNet, tmp_path: Path) -> Any:
    suite = pytest.importorskip("suite")
    cfg = testnet.config()
    config = {
        "sandbox": {
            "cni_conf_dir": cfg.cni_conf_dir,
            "cni_bin_dirs": list(cfg.cni_bin_dirs),
            "netns_prefix": cfg.netns_prefix,
            "cni_add_timeout": 20.0,
            "cni_del_timeout": 10.0,
        }
    }
    (tmp_path / "suite").mkdir()
    return suite.Suite(tmp_path / "suite", config=config)


def _until(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # an external process's progress: nothing to wait on but its files
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _kill_hung_plugins(net: CniNet) -> None:
    for line in net.calls():
        pid = int(line.split()[-1])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_killed_during_cni_add_then_reconciled(testnet: CniNet, tmp_path: Path) -> None:
    testnet.write_conflist(failpoint=True)
    testnet.set_faults(ADD="hang-after")
    s = _suite(testnet, tmp_path)
    try:
        s.start("proxy")
        s.start("sandbox")
        cmd = [sys.executable, "-m", "moorage.cli.main", "--address", s.address, "sandbox", "run", "pod"]
        cli = subprocess.Popen(cmd, env=s.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _until(lambda: len(testnet.allocations()) == 1 and len(testnet.namespaces()) == 1)
        s.kill("sandbox")
        _, err = cli.communicate(timeout=30)
        assert cli.returncode != 0, err
        _kill_hung_plugins(testnet)

        testnet.set_faults()
        s.start("sandbox")  # the reconciler runs before the service is ready
        assert testnet.allocations() == [] and testnet.namespaces() == [] and testnet.bridge_ports() == []
        assert sum(1 for c in testnet.calls() if c.startswith("DEL ")) == 1
        ls = s.moor("--json", "sandbox", "ls")
        assert [(r["id"], r["state"]) for r in json.loads(ls.stdout)] == [("pod", "SANDBOX_NOTREADY")]
        inspect = json.loads(s.moor("sandbox", "inspect", "pod").stdout)[0]
        assert inspect["status"]["info"]["state"] == "failed"
        rm = s.moor("sandbox", "rm", "pod")
        assert rm.returncode == 0, rm.stderr
        assert json.loads(s.moor("--json", "sandbox", "ls").stdout) == []
        testnet.assert_clean()
    finally:
        _kill_hung_plugins(testnet)
        s.close()


def test_ready_sandbox_survives_restart(testnet: CniNet, tmp_path: Path) -> None:
    s = _suite(testnet, tmp_path)
    try:
        s.start("proxy")
        s.start("sandbox")
        run = s.moor("sandbox", "run", "keep")
        assert run.returncode == 0, run.stderr
        before = json.loads(s.moor("sandbox", "inspect", "keep").stdout)[0]
        s.kill("sandbox")
        s.start("sandbox")
        after = json.loads(s.moor("sandbox", "inspect", "keep").stdout)[0]
        assert after["status"]["state"] == "SANDBOX_READY"
        assert after["status"]["info"] == before["status"]["info"]
        assert testnet.allocations() == [before["status"]["info"]["ips"]]
        assert s.moor("sandbox", "rm", "-f", "keep").returncode == 0
        testnet.assert_clean()
    finally:
        s.close()
