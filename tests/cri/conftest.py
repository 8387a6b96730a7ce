"""The CRI suite for tests: real processes (proxy, content, snapshots, transfer, sandbox,
runtime, cri) under a tmp root, a private CNI bridge network, a local registry holding the
test images (tests/cri/testimages.py), and a grpcio client on the proxy's gRPC door
(``<state>/moorage.sock``) built from our CRI descriptors (no generated grpc stubs).

    def test_x(cri: CriSuite) -> None:
        pod = cri.run_pod("web")                        # RunPodSandbox with a tmp log dir
        cri.rt("ListPodSandbox", api.ListPodSandboxRequest())
        cri.img("PullImage", api.PullImageRequest(image=api.ImageSpec(image=cri.images.busybox)))

``cri`` is module-scoped (one suite per test module: starting it and pushing the images
takes a few seconds); every test's pods are removed after it, and the module's teardown
checks nothing is left behind. Root only (namespaces, mounts, runc, CNI).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from moorage.api.k8s.cri.v1 import api_pb2 as api

from .testimages import TestImages, push_test_images

SYSTEM_CNI = "/usr/lib/cni"
NRI_RECORDER = """#!{python}
from moorage.nri.stub import Plugin, run

LOG = {log!r}


def note(*words):
    with open(LOG, "a") as f:
        f.write(" ".join(words) + "\\n")


class Recorder(Plugin):
    async def run_pod_sandbox(self, pod):
        note("RunPodSandbox", pod.id, "/".join((pod.namespace, pod.name, pod.uid, pod.labels.get("app", ""),
                                                pod.annotations.get("note", ""))))

    async def stop_pod_sandbox(self, pod):
        note("StopPodSandbox", pod.id, pod.namespace + "/" + pod.name)

    async def remove_pod_sandbox(self, pod):
        note("RemovePodSandbox", pod.id, pod.namespace + "/" + pod.name)

    async def create_container(self, pod, container):
        note("CreateContainer", pod.id, container.id, pod.namespace + "/" + pod.name + "/" + container.name)

    async def start_container(self, pod, container):
        note("StartContainer", pod.id, container.id)

    async def stop_container(self, pod, container):
        note("StopContainer", pod.id, container.id)
        return []

    async def remove_container(self, pod, container):
        note("RemoveContainer", pod.id, container.id)


raise SystemExit(run(Recorder()))
"""
RUNTIME = "runtime.v1.RuntimeService"
IMAGES = "runtime.v1.ImageService"


def wait_until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy (its value), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Net:
    """A private CNI network: bridge + host-local IPAM + portmap, its own names."""

    name: str
    bridge: str
    subnet: str
    conf_dir: Path
    ipam_dir: Path
    prefix: str

    def allocations(self) -> list[str]:
        d = self.ipam_dir / self.name
        return sorted(n for n in os.listdir(d) if n[0].isdigit()) if d.exists() else []

    def namespaces(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir("/var/run/netns") if n.startswith(self.prefix))
        except FileNotFoundError:
            return []

    def bridge_ports(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True, check=False)
        return [ln.split(":")[1].strip() for ln in out.stdout.splitlines() if ln.strip()]


def make_net(base: Path) -> Net:
    import json

    tag = secrets.token_hex(3)
    net = Net(f"mcri-{tag}", f"mcri{tag}", f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24",
              base / "net.d", base / "ipam", f"mcri-{tag}-")
    net.conf_dir.mkdir(parents=True)
    doc = {"cniVersion": "1.0.0", "name": net.name, "plugins": [
        {"type": "bridge", "bridge": net.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": net.subnet}]], "dataDir": str(net.ipam_dir)}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    (net.conf_dir / "10-test.conflist").write_text(json.dumps(doc))
    return net


def remove_net(net: Net) -> None:
    for n in net.namespaces():
        subprocess.run(["umount", f"/var/run/netns/{n}"], capture_output=True, check=False)
        Path(f"/var/run/netns/{n}").unlink(missing_ok=True)
    subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, check=False)
    shutil.rmtree(net.ipam_dir, ignore_errors=True)


@dataclass
class CriSuite:
    suite: Any
    images: TestImages
    net: Net
    work: Path
    channel: grpc.Channel
    cgroup_parent: str = ""
    """The suite's ``[cri] default_cgroup_parent`` (removed at the end with what is under it)."""
    pods: list[str] = field(default_factory=list)

    def _call(self, service: str, method: str, request: Any, timeout: float | None) -> Any:
        desc = api.DESCRIPTOR.services_by_name[service.split(".")[-1]].methods_by_name[method]
        from google.protobuf import message_factory

        resp_type = message_factory.GetMessageClass(desc.output_type)
        fn = self.channel.unary_unary(f"/{service}/{method}", request_serializer=type(request).SerializeToString,
                                      response_deserializer=resp_type.FromString)
        return fn(request, timeout=timeout)

    def rt(self, method: str, request: Any, timeout: float | None = 60.0) -> Any:
        """One runtime.v1.RuntimeService call."""
        return self._call(RUNTIME, method, request, timeout)

    def img(self, method: str, request: Any, timeout: float | None = 60.0) -> Any:
        """One runtime.v1.ImageService call."""
        return self._call(IMAGES, method, request, timeout)

    def pull(self, ref: str) -> str:
        return str(self.img("PullImage", api.PullImageRequest(image=api.ImageSpec(image=ref))).image_ref)

    def pod_config(self, name: str, **kw: Any) -> api.PodSandboxConfig:
        logs = self.work / "logs" / f"{name}-{secrets.token_hex(3)}"
        cfg = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=secrets.token_hex(8), namespace="default", attempt=0),
            hostname=name, log_directory=str(logs), labels={"app": name}, annotations={"note": "cri-test"})
        for k, v in kw.items():
            if isinstance(v, dict) and k in ("labels", "annotations"):
                getattr(cfg, k).update(v)
            elif hasattr(v, "DESCRIPTOR"):
                getattr(cfg, k).CopyFrom(v)
            else:
                setattr(cfg, k, v)
        return cfg

    def run_pod(self, name: str, config: api.PodSandboxConfig | None = None) -> tuple[str, api.PodSandboxConfig]:
        cfg = config or self.pod_config(name)
        pod_id = str(self.rt("RunPodSandbox", api.RunPodSandboxRequest(config=cfg)).pod_sandbox_id)
        self.pods.append(pod_id)
        return pod_id, cfg

    def container_config(self, name: str, image: str, *command: str, **kw: Any) -> api.ContainerConfig:
        cfg = api.ContainerConfig(metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=image),
                                  command=list(command), log_path=f"{name}/0.log", labels={"ctr": name})
        for k, v in kw.items():
            if hasattr(v, "DESCRIPTOR"):
                getattr(cfg, k).CopyFrom(v)
            elif isinstance(v, list):
                getattr(cfg, k).extend(v)
            else:
                setattr(cfg, k, v)
        return cfg

    def create(self, pod_id: str, pod_cfg: api.PodSandboxConfig, cfg: api.ContainerConfig) -> str:
        req = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_cfg)
        return str(self.rt("CreateContainer", req).container_id)

    def status(self, container_id: str) -> api.ContainerStatus:
        return self.rt("ContainerStatus", api.ContainerStatusRequest(container_id=container_id)).status

    def exec_sync(self, container_id: str, *cmd: str, timeout: int = 30) -> api.ExecSyncResponse:
        return self.rt("ExecSync", api.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout))

    def remove_all(self) -> None:
        for p in self.rt("ListPodSandbox", api.ListPodSandboxRequest()).items:
            self.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=p.id))
            self.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=p.id))
        self.pods.clear()

    def shims(self, ids: list[str]) -> list[int]:
        """Pids of live runc shims started for any of ``ids`` (namespace k8s.io)."""
        from runtime.helpers import shims_of

        return [pid for i in ids for pid in shims_of("k8s.io", i)]

    def nri_events(self) -> list[str]:
        """What the recording NRI plugin saw, one ``Event pod-id [container-id]`` a line."""
        log = self.work / "nri" / "events.log"
        return log.read_text().splitlines() if log.exists() else []

    def mounts(self) -> list[str]:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        return [m for m in points if m.startswith((str(self.suite.root), str(self.suite.state)))]


@pytest.fixture(scope="module")
def cri() -> Iterator[CriSuite]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from suite import Suite
    from transfer import registry as regfix
    from transfer.conftest import hosts_dir_for

    work = Path(tempfile.mkdtemp(prefix="moorage-cri-", dir="/tmp"))
    net = make_net(work / "cni")
    cgroup_parent = f"/moorage-test-{secrets.token_hex(3)}"
    stack = []
    try:
        reg_cm = regfix.running(work / "registry", "plain")
        reg = reg_cm.__enter__()
        stack.append(reg_cm)
        images = push_test_images(reg, work / "images")
        plugins, nri_conf = work / "nri" / "plugins", work / "nri" / "conf.d"
        plugins.mkdir(parents=True)
        nri_conf.mkdir(parents=True)
        recorder = plugins / "50-recorder"
        recorder.write_text(NRI_RECORDER.format(python=sys.executable, log=str(work / "nri" / "events.log")))
        recorder.chmod(0o755)
        config = {
            "nri": {"socket_path": str(work / "nri" / "nri.sock"), "plugin_path": str(plugins),
                    "plugin_config_path": str(nri_conf)},
            "transfer": {"hosts_dir": hosts_dir_for(reg, work)},
            "sandbox": {"cni_conf_dir": str(net.conf_dir), "cni_bin_dirs": [SYSTEM_CNI, "/opt/cni/bin"],
                        "netns_prefix": net.prefix, "cni_add_timeout": 20.0, "cni_del_timeout": 20.0},
            "cri": {"sandbox_image": images.pause, "cni_conf_dir": str(net.conf_dir),
                    "default_cgroup_parent": cgroup_parent},
        }
        s = Suite(work / "suite", config=config)
        try:
            for name in ("proxy", "content", "snapshots", "transfer", "nri", "sandbox", "runtime", "cri"):
                s.start(name)
            channel = grpc.insecure_channel(f"unix:{s.state / 'moorage.sock'}")
            c = CriSuite(s, images, net, work, channel, cgroup_parent=cgroup_parent)
            try:
                c.pull(images.busybox)
                yield c
            finally:
                try:
                    c.remove_all()
                finally:
                    channel.close()
        finally:
            s.close()
            with open("/proc/self/mounts") as f:
                leftover = [line.split()[1] for line in f]
            for m in reversed(leftover):
                if m.startswith((str(work), str(s.state))):
                    subprocess.run(["umount", "-l", m], capture_output=True, check=False)
    finally:
        for cm in reversed(stack):
            cm.__exit__(None, None, None)
        remove_net(net)
        for top in Path("/sys/fs/cgroup").glob(f"*{cgroup_parent}"):
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def pods(cri: CriSuite) -> Iterator[CriSuite]:
    """``cri``, with every pod the test ran stopped and removed afterwards."""
    try:
        yield cri
    finally:
        cri.remove_all()
