"""Fixtures: a private CNI network per test (own bridge, subnet, IPAM dir, netns prefix),
the failpoint plugin, and a PodController on a tmp database."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moorage.namespaces import current_namespace
from moorage.services.sandbox import netns
from moorage.services.sandbox.config import SandboxConfig
from moorage.services.sandbox.contract import SandboxEvent
from moorage.services.sandbox.db import Database
from moorage.services.sandbox.pod import PodController
from moorage.services.sandbox.store import SqliteStore

HERE = Path(__file__).parent
SYSTEM_CNI = "/usr/lib/cni"


def conflist(name: str, bridge: str, subnet: str, ipam_dir: str, first: dict[str, Any] | None = None) -> dict[str, Any]:
    """The test network: what deploy/ ships, with private names (see README: Sandboxes)."""
    bridge_plugin: dict[str, Any] = {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir},
    }
    if first:
        bridge_plugin.update(first)
    return {"cniVersion": "1.0.0", "name": name, "plugins": [bridge_plugin, {"type": "portmap", "capabilities": {"portMappings": True}}]}


@dataclass
class CniNet:
    name: str
    bridge: str
    subnet: str
    conf_dir: Path
    bin_dir: Path
    ipam_dir: Path
    control: Path
    prefix: str
    netns_dir: str = "/var/run/netns"

    def config(self, **kw: Any) -> SandboxConfig:
        args: dict[str, Any] = dict(
            cni_conf_dir=str(self.conf_dir),
            cni_bin_dirs=(str(self.bin_dir), SYSTEM_CNI),
            netns_dir=self.netns_dir,
            netns_prefix=self.prefix,
            cni_add_timeout=10.0,
            cni_del_timeout=10.0,
        )
        args.update(kw)
        return SandboxConfig(**args)

    def write_conflist(self, failpoint: bool = False) -> None:
        first = {"type": "failpoint", "delegate": "bridge", "control": str(self.control)} if failpoint else None
        doc = conflist(self.name, self.bridge, self.subnet, str(self.ipam_dir), first)
        (self.conf_dir / "10-test.conflist").write_text(json.dumps(doc))

    def set_faults(self, **modes: str) -> None:
        self.control.write_text(json.dumps(modes))

    def calls(self) -> list[str]:
        log = Path(str(self.control) + ".log")
        return log.read_text().splitlines() if log.exists() else []

    # leak checks -------------------------------------------------------------------------

    def allocations(self) -> list[str]:
        d = self.ipam_dir / self.name
        return sorted(n for n in os.listdir(d) if n[0].isdigit()) if d.exists() else []

    def namespaces(self) -> list[str]:
        return netns.listdir(self.netns_dir, self.prefix)

    def bridge_ports(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True)
        return [ln.split(":")[1].strip() for ln in out.stdout.splitlines() if ln.strip()]

    def assert_clean(self) -> None:
        assert self.namespaces() == []
        assert self.allocations() == []
        assert self.bridge_ports() == []


def _cleanup(net: CniNet) -> None:
    for path in net.namespaces():
        netns.remove(path)
    subprocess.run(["ip", "link", "del", net.bridge], capture_output=True)
    # portmap's per-container chains are removed by DEL; drop the bridge's masquerade rules.
    shutil.rmtree(net.ipam_dir, ignore_errors=True)


@pytest.fixture
def testnet(tmp_path: Path) -> Iterator[CniNet]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tag = secrets.token_hex(3)
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    plugin = bin_dir / "failpoint"
    plugin.write_text(f"#!{sys.executable}\n" + (HERE / "failpoint.py").read_text())
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    net = CniNet(
        name=f"mrgt-{tag}",
        bridge=f"mrgt{tag}",
        subnet=f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24",
        conf_dir=conf_dir,
        bin_dir=bin_dir,
        ipam_dir=tmp_path / "ipam",
        control=tmp_path / "failpoint.json",
        prefix=f"mrgt-{tag}-",
    )
    net.write_conflist()
    try:
        yield net
    finally:
        _cleanup(net)


class Events:
    def __init__(self) -> None:
        self.seen: list[SandboxEvent] = []

    async def publish(self, event: SandboxEvent) -> None:
        self.seen.append(event)

    def topics(self) -> list[str]:
        return [e.topic for e in self.seen]


@pytest.fixture
def ns() -> Iterator[str]:
    token = current_namespace.set("testing")
    yield "testing"
    current_namespace.reset(token)


@dataclass
class Pods:
    controller: PodController
    store: SqliteStore
    db: Database
    events: Events


@pytest.fixture
def pods(testnet: CniNet, tmp_path: Path, ns: str) -> Iterator[Pods]:
    db = Database(tmp_path / "sandbox.db")
    store = SqliteStore(db)
    events = Events()
    controller = PodController("podsandbox", db, store, testnet.config(), tmp_path / "root", events)
    yield Pods(controller, store, db, events)
    db.close()


def in_netns(path: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=timeout)
