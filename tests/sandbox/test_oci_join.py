"""A container joins a pod sandbox through plain OCI: runc with the sandbox's namespace path,
hostname and files, exactly what the runtime service gets from Controller.Status (root).

This is the contract check for `moor run --sandbox`: the namespace path and the prepared
files are usable by an OCI runtime as they are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from moorage.services.sandbox.contract import POD_CONFIG_TYPE, AnyValue, CreateOptions, DNSConfig, PodConfig

from .conftest import CniNet, Pods

pytestmark = pytest.mark.root
BUSYBOX = "/bin/busybox"


def bundle_for(tmp: Path, name: str, info: dict[str, str], args: list[str]) -> Path:
    bundle = tmp / name
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        (rootfs / d).mkdir()
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "ping", "hostname", "cat", "ip"):
        os.symlink("busybox", rootfs / "bin" / applet)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    for caps in spec["process"]["capabilities"].values():
        caps.append("CAP_NET_RAW")
    spec["root"] = {"path": "rootfs", "readonly": False}
    spec["hostname"] = info["hostname"]
    spec["linux"]["namespaces"] = [
        ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"
    ] + [{"type": "network", "path": info["netns_path"]}]
    for dest, key in (("/etc/hostname", "hostname_path"), ("/etc/hosts", "hosts_path"), ("/etc/resolv.conf", "resolv_conf_path")):
        spec["mounts"].append({"destination": dest, "type": "bind", "source": info[key], "options": ["rbind", "ro"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


async def test_runc_container_joins_sandbox(pods: Pods, testnet: CniNet, tmp_path: Path) -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc not installed")
    pod = PodConfig(hostname="joined", dns=DNSConfig(servers=("192.0.2.53",)))
    await pods.controller.create("a", CreateOptions(options=AnyValue(POD_CONFIG_TYPE, pod.to_json())))
    await pods.controller.create("b", CreateOptions())
    a = dict((await pods.controller.status("a")).info)
    b = dict((await pods.controller.status("b")).info)
    script = f"hostname; cat /etc/resolv.conf; cat /etc/hosts; ip -o -4 addr show eth0; ping -c 1 -W 3 {b['ips']}"
    bundle = bundle_for(tmp_path, "ctr", a, ["/bin/sh", "-c", script])
    cid = f"{testnet.prefix}ctr"
    root = tmp_path / "runc-state"
    try:
        out = subprocess.run(["runc", "--root", str(root), "run", cid], cwd=bundle, capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["runc", "--root", str(root), "delete", "-f", cid], capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout
    assert lines.startswith("joined\n")
    assert "nameserver 192.0.2.53" in lines
    assert f"{a['ips']}\tjoined" in lines
    assert f"inet {a['ips']}/" in lines  # the container sees the sandbox's interface
    assert "1 packets received" in lines
    await pods.controller.shutdown("a")
    await pods.controller.shutdown("b")
    testnet.assert_clean()
