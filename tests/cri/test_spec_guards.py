"""On the wire, through a real suite: what a CRI request may not put in a spec. A pod's
sysctls are checked before anything is made (CVE-2022-0811), and a container annotation
naming another pod's shim group runs in its own pod's shim all the same (H8 F2)."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from moorage.api.k8s.cri.v1 import api_pb2 as api

from .conftest import CriSuite

pytestmark = pytest.mark.root

BUSYBOX = "/bin/busybox"


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_cve_2022_0811_sysctl_is_invalid_and_nothing_is_made(pods: CriSuite) -> None:
    cri = pods
    before = {p.id for p in cri.rt("ListPodSandbox", api.ListPodSandboxRequest()).items}
    bad = cri.pod_config("sysctl", linux=api.LinuxPodSandboxConfig(
        sysctls={"kernel.shm_rmid_forced": "1+kernel.core_pattern=|/tmp/moorage-pwn"}))
    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("RunPodSandbox", api.RunPodSandboxRequest(config=bad))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "kernel.shm_rmid_forced" in str(exc.value.details())  # type: ignore[attr-defined]
    assert {p.id for p in cri.rt("ListPodSandbox", api.ListPodSandboxRequest()).items} == before
    assert cri.net.namespaces() == [] and cri.net.allocations() == []
    bad.linux.sysctls.clear()
    bad.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    pod_id, _ = cri.run_pod("sysctl", bad)  # the name was never reserved; a clean value runs
    st = cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    pid = json.loads(st.info["info"])["pid"]
    ipc = subprocess.run(["nsenter", "-t", str(pid), "-i", "cat", "/proc/sys/kernel/shm_rmid_forced"],
                         capture_output=True, text=True, check=True)  # read in the pod's IPC namespace
    assert ipc.stdout.strip() == "1"


def test_annotation_naming_another_pods_group_stays_in_its_own_pods_shim(pods: CriSuite) -> None:
    cri = pods
    victim, _ = cri.run_pod("victim")
    pod_id, cfg = cri.run_pod("guest")
    note = {"io.containerd.runc.v2.group": victim, "io.kubernetes.cri.sandbox-id": victim}
    ccfg = cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000")
    ccfg.annotations.update(note)
    c = cri.create(pod_id, cfg, ccfg)
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    info = json.loads(cri.rt("ContainerStatus", api.ContainerStatusRequest(container_id=c, verbose=True)).info["info"])
    (own,) = cri.shims([pod_id])
    (theirs,) = cri.shims([victim])
    assert _ppid(info["pid"]) == own != theirs
    assert cri.status(c).annotations["io.containerd.runc.v2.group"] == victim  # the CRI's record keeps what was asked
