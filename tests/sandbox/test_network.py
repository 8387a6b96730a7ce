"""Real networking through the pod sandboxer: bridge + host-local + portmap (root)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.services.sandbox import netns
from moorage.services.sandbox.contract import (
    NETWORK_EXTENSION,
    NOT_READY,
    POD_CONFIG_TYPE,
    READY,
    AnyValue,
    CreateOptions,
    DNSConfig,
    PodConfig,
    PortMapping,
    Runtime,
    Network,
    PodMeta,
    Sandbox,
)
from moorage.services.sandbox.pod import PodController

from .conftest import Pods, CniNet, in_netns

pytestmark = pytest.mark.root
BUSYBOX = "/bin/busybox"


def options(pod: PodConfig) -> CreateOptions:
    return CreateOptions(options=AnyValue(POD_CONFIG_TYPE, pod.to_json()))


async def run(pods: Pods, sandbox_id: str, pod: PodConfig | None = None) -> dict[str, str]:
    await pods.store.create(Sandbox(sandbox_id, Runtime("io.containerd.runc.v2"), sandboxer="podsandbox"))
    await pods.controller.create(sandbox_id, options(pod or PodConfig()))
    await pods.controller.start(sandbox_id)
    status = await pods.controller.status(sandbox_id)
    assert status.state == READY
    return dict(status.info)


async def remove(pods: Pods, sandbox_id: str) -> None:
    await pods.controller.stop(sandbox_id)
    await pods.controller.shutdown(sandbox_id)
    await pods.store.delete(sandbox_id)


async def test_two_sandboxes_reach_each_other(pods: Pods, testnet: CniNet) -> None:
    a = await run(pods, "pod-a")
    b = await run(pods, "pod-b", PodConfig(hostname="bee", dns=DNSConfig(servers=("10.0.0.53",), searches=("example.test",))))
    assert a["ips"] and b["ips"] and a["ips"] != b["ips"]
    assert sorted(testnet.allocations()) == sorted([a["ips"], b["ips"]])
    assert netns.is_netns(a["netns_path"]) and a["netns_path"].startswith("/var/run/netns/" + testnet.prefix)
    for src, dst in ((a, b), (b, a)):
        ping = in_netns(src["netns_path"], BUSYBOX, "ping", "-c", "1", "-W", "3", dst["ips"])
        assert ping.returncode == 0, ping.stdout + ping.stderr
    assert Path(b["hostname_path"]).read_text() == "bee\n"
    assert "nameserver 10.0.0.53" in Path(b["resolv_conf_path"]).read_text()
    assert f"{b['ips']}\tbee" in Path(b["hosts_path"]).read_text()
    record = await pods.store.get("pod-a")
    assert a["netns_path"] in record.extensions[NETWORK_EXTENSION].value.decode()
    assert len(testnet.bridge_ports()) == 2

    await pods.controller.stop("pod-a")
    stopped = json.loads((await pods.store.get("pod-a")).extensions[NETWORK_EXTENSION].value)
    assert stopped["netns_path"] == "" and stopped["ips"] == []
    await remove(pods, "pod-a")
    await remove(pods, "pod-b")
    testnet.assert_clean()
    assert not Path(a["hostname_path"]).exists()
    assert pods.events.topics() == ["/sandboxes/create", "/sandboxes/start"] * 2 + ["/sandboxes/exit"] * 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _host_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])


def _fetch(host: str, port: int, deadline: float) -> bytes:
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                return conn.makefile("rb").read()
        except OSError as exc:  # the server in the namespace may not be listening yet
            last = exc
            time.sleep(0.05)
    raise AssertionError(f"no answer from {host}:{port}: {last}")


async def test_port_mapping_reaches_server_in_sandbox(pods: Pods, testnet: CniNet, tmp_path: Path) -> None:
    host_port = _free_port()
    info = await run(pods, "web", PodConfig(port_mappings=(PortMapping(host_port, 8080),)))
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the sandbox\n")
    server = subprocess.Popen(["nsenter", f"--net={info['netns_path']}", BUSYBOX, "httpd", "-f", "-p", "8080", "-h", str(www)])
    try:
        body = _fetch(_host_ip(), host_port, time.monotonic() + 10)
        assert b"hello from the sandbox" in body
    finally:
        server.kill()
        server.wait()
    await remove(pods, "web")
    testnet.assert_clean()
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert f"--dport {host_port}" not in rules


async def test_host_network_and_errors(pods: Pods, testnet: CniNet) -> None:
    await pods.controller.create("hostnet", options(PodConfig(host_network=True)))
    status = await pods.controller.status("hostnet")
    assert status.info["netns_path"] == "" and status.state == NOT_READY
    with pytest.raises(errdefs.AlreadyExists):
        await pods.controller.create("hostnet", CreateOptions())
    with pytest.raises(errdefs.InvalidArgument):
        await pods.controller.create("bad", CreateOptions(options=AnyValue("x.Unknown", b"{}")))
    with pytest.raises(errdefs.NotFound):
        await pods.controller.status("nope")
    await pods.controller.shutdown("hostnet")
    with pytest.raises(errdefs.NotFound):
        await pods.controller.status("hostnet")
    testnet.assert_clean()


async def test_concurrent_sandboxes(pods: Pods, testnet: CniNet) -> None:
    import asyncio

    ids = [f"par{i}" for i in range(6)]
    await asyncio.gather(*(pods.controller.create(i, CreateOptions()) for i in ids))
    infos = [dict((await pods.controller.status(i)).info) for i in ids]
    ips = [info["ips"] for info in infos]
    assert len(set(ips)) == len(ids) and sorted(testnet.allocations()) == sorted(ips)
    assert len(testnet.bridge_ports()) == len(ids)
    await asyncio.gather(*(pods.controller.shutdown(i) for i in ids))
    testnet.assert_clean()


async def test_joins_a_given_namespace_without_cni(pods: Pods, testnet: CniNet, tmp_path: Path) -> None:
    given = f"/var/run/netns/{testnet.prefix}given"
    netns.create(given)
    try:
        await pods.controller.create("joined", CreateOptions(netns_path=given))
        info = (await pods.controller.status("joined")).info
        assert info["netns_path"] == given and info["ips"] == ""
        await pods.controller.shutdown("joined")
        assert netns.is_netns(given)  # not ours: left in place
        assert testnet.allocations() == [] and testnet.bridge_ports() == []
        with pytest.raises(errdefs.InvalidArgument):
            await pods.controller.create("bogus", CreateOptions(netns_path=str(tmp_path)))
    finally:
        netns.remove(given)


class RecordingHooks:
    def __init__(self, fail_run: bool = False, broken: bool = True) -> None:
        self.calls: list[tuple[str, str]] = []
        self.seen: list[tuple[str, Network, PodMeta]] = []
        self.fail_run = fail_run
        self.broken = broken

    async def run(self, sandbox_id: str, network: Network, meta: PodMeta) -> None:
        self.calls.append(("run", sandbox_id))
        self.seen.append(("run", network, meta))
        if self.fail_run:
            raise errdefs.FailedPrecondition("hook says no")

    async def stop(self, sandbox_id: str, network: Network, meta: PodMeta) -> None:
        self.calls.append(("stop", sandbox_id))
        self.seen.append(("stop", network, meta))
        if self.broken:
            raise RuntimeError("stop hook broken")

    async def remove(self, sandbox_id: str, network: Network, meta: PodMeta) -> None:
        self.calls.append(("remove", sandbox_id))
        self.seen.append(("remove", network, meta))
        if self.broken:
            raise RuntimeError("remove hook broken")


async def test_pod_hooks(pods: Pods, testnet: CniNet) -> None:
    hooks = RecordingHooks()
    pods.controller.hooks = hooks
    await pods.controller.create("hooked", CreateOptions())
    await pods.controller.stop("hooked")  # hook errors never block teardown
    await pods.controller.shutdown("hooked")
    assert hooks.calls == [("run", "hooked"), ("stop", "hooked"), ("remove", "hooked")]
    testnet.assert_clean()

    pods.controller.hooks = RecordingHooks(fail_run=True)
    with pytest.raises(errdefs.FailedPrecondition, match="hook says no"):
        await pods.controller.create("vetoed", CreateOptions())
    with pytest.raises(errdefs.NotFound):
        await pods.controller.status("vetoed")
    testnet.assert_clean()


async def test_pod_hooks_get_what_run_got_after_a_restart(pods: Pods, testnet: CniNet, tmp_path: Path) -> None:
    meta = PodMeta({"io.kubernetes.cri.sandbox-name": "web", "note": "hi"}, {"app": "web"})
    record = Sandbox("kept", Runtime("io.containerd.runc.v2"), sandboxer="podsandbox", labels={"app": "web"})
    first = RecordingHooks(broken=False)
    pods.controller.hooks = first
    await pods.controller.create("kept", CreateOptions(annotations=meta.annotations, sandbox=record))
    await pods.controller.create("old", CreateOptions(annotations=meta.annotations, sandbox=record))
    rec = pods.db.get_instance("testing", "old", "podsandbox")
    assert rec is not None
    del rec["pod_meta"]  # an instance recorded before the metadata was kept
    pods.db.put_instance("testing", "old", "podsandbox", rec)

    restarted = RecordingHooks(broken=False)  # a new process: the same records, nothing in memory
    controller = PodController("podsandbox", pods.db, pods.store, testnet.config(), tmp_path / "root", hooks=restarted)
    await controller.stop("kept")
    await controller.shutdown("kept")
    await controller.shutdown("old")
    _, network, got = first.seen[0]
    assert network.ips and network.netns_path and got == meta
    assert restarted.seen == [("stop", network, meta), ("remove", network, meta),
                              ("stop", first.seen[1][1], PodMeta()), ("remove", first.seen[1][1], PodMeta())]
    testnet.assert_clean()
