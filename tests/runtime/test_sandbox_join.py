"""`moor run --sandbox ID`: a container placed in a pod sandbox's namespaces (network
namespace by path, hostname, hostname/hosts/resolv.conf) and, on the runc shim, in the
sandbox's shim group; the Containers record names the sandbox. The pod hooks reach NRI
plugins (RunPodSandbox/StopPodSandbox/RemovePodSandbox) and a container in a pod is shown
to plugins with that pod.

The spec part (`spec.join_sandbox`) is checked without root; the end-to-end case runs a
whole suite (proxy, content, snapshots, transfer, runtime, sandbox, nri) on a private CNI
network (root)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.errdefs import InvalidArgument
from moorage.services.runtime import spec as sp
from sandbox.conftest import CniNet, testnet  # noqa: F401  (the fixture)
from suite import Suite

from .helpers import shims_of, wait_until
from .ociimage import build_archive, import_image

INFO = {"netns_path": "/var/run/netns/pod-a", "ips": "10.1.0.2", "hostname": "alpha",
        "hostname_path": "/pods/a/hostname", "hosts_path": "/pods/a/hosts",
        "resolv_conf_path": "/pods/a/resolv.conf"}


def test_join_sandbox_spec() -> None:
    spec = sp.build_spec("ns", "c", sp.ImageConfig(cmd=("sh",)))
    sp.join_sandbox(spec, "a", INFO)
    assert [n for n in spec["linux"]["namespaces"] if n["type"] == "network"] == [
        {"type": "network", "path": "/var/run/netns/pod-a"}]
    assert {n["type"] for n in spec["linux"]["namespaces"]} == set(sp.NAMESPACES)
    assert spec["hostname"] == "alpha"
    binds = {m["destination"]: m for m in spec["mounts"] if m["type"] == "bind"}
    assert binds["/etc/hosts"] == {"destination": "/etc/hosts", "type": "bind", "source": "/pods/a/hosts",
                                   "options": ["rbind", "ro"]}
    assert binds["/etc/hostname"]["source"] == "/pods/a/hostname"
    assert binds["/etc/resolv.conf"]["source"] == "/pods/a/resolv.conf"
    assert spec["annotations"][sp.GROUP_ANNOTATION] == "a"


def test_join_sandbox_host_network_no_group_operator_mount_wins() -> None:
    spec = sp.build_spec("ns", "c", sp.ImageConfig(cmd=("sh",)), sp.Overrides(
        mounts=(sp.parse_mount("type=bind,src=/h/hosts,dst=/etc/hosts"),)))
    sp.join_sandbox(spec, "a", {**INFO, "netns_path": ""}, group=False)
    assert "network" not in {n["type"] for n in spec["linux"]["namespaces"]}
    assert [m["source"] for m in spec["mounts"] if m["destination"] == "/etc/hosts"] == ["/h/hosts"]
    assert sp.GROUP_ANNOTATION not in spec.get("annotations", {})


def test_join_sandbox_without_a_network_namespace_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no network namespace"):
        sp.join_sandbox(sp.build_spec("ns", "c", sp.ImageConfig(cmd=("sh",))), "s", {"address": "unix:///x"})


POD_RECORDER = """#!{python}
from moorage.nri.stub import Plugin, run

LOG = {log!r}


def note(*words):
    with open(LOG, "a") as f:
        f.write(" ".join(words) + "\\n")


class Pods(Plugin):
    async def run_pod_sandbox(self, pod):
        note("RunPodSandbox", pod.id, ",".join(pod.ips))

    async def stop_pod_sandbox(self, pod):
        note("StopPodSandbox", pod.id)

    async def remove_pod_sandbox(self, pod):
        note("RemovePodSandbox", pod.id)

    async def create_container(self, pod, container):
        note("CreateContainer", pod.id, container.name)


raise SystemExit(run(Pods()))
"""


class Env:
    def __init__(self, suite: Suite, ns: str, tmp: Path) -> None:
        self.suite, self.ns, self.tmp = suite, ns, tmp

    def moor(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "moorage.cli.main", "--address", self.suite.address, "--namespace", self.ns, *args]
        return subprocess.run(cmd, env=self.suite.env(), capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        r = self.moor(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def nri_log(self) -> list[str]:
        log = self.tmp / "pods.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def env(testnet: CniNet) -> Iterator[Env]:  # noqa: F811
    tmp = Path(tempfile.mkdtemp(prefix="moorage-join-", dir="/tmp"))
    plugins, conf = tmp / "plugins", tmp / "conf.d"
    plugins.mkdir()
    conf.mkdir()
    (plugins / "50-pods").write_text(POD_RECORDER.format(python=sys.executable, log=str(tmp / "pods.log")))
    (plugins / "50-pods").chmod(0o755)
    cfg = testnet.config()
    config = {
        "sandbox": {"cni_conf_dir": cfg.cni_conf_dir, "cni_bin_dirs": list(cfg.cni_bin_dirs),
                    "netns_prefix": cfg.netns_prefix, "cni_add_timeout": 10.0, "cni_del_timeout": 10.0},
        "nri": {"socket_path": str(tmp / "run" / "nri.sock"), "plugin_path": str(plugins),
                "plugin_config_path": str(conf)},
    }
    s = Suite(tmp, config=config)
    ns = "join" + secrets.token_hex(3)
    e = Env(s, ns, tmp)
    try:
        for name in ("proxy", "content", "snapshots", "transfer", "nri", "sandbox", "runtime"):
            s.start(name)
        import_image(s.address, build_archive(tmp / "busybox.tar"), namespace=ns)
        yield e
    finally:
        for line in e.moor("ps", "-a", "-q").stdout.split():
            e.moor("rm", "-f", line)
        for sb in ("pa", "pb"):
            e.moor("sandbox", "rm", "-f", sb)
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.root
@pytest.mark.slow
def test_containers_in_two_sandboxes_reach_each_other(env: Env, testnet: CniNet) -> None:  # noqa: F811
    env.ok("sandbox", "run", "--hostname", "alpha", "pa")
    env.ok("sandbox", "run", "--hostname", "beta", "pb")
    a, b = json.loads(env.ok("sandbox", "inspect", "pa", "pb"))
    ip_a, ip_b = a["status"]["info"]["ips"], b["status"]["info"]["ips"]
    assert ip_a and ip_b and ip_a != ip_b

    # a long-running container in pb, two more in its shim group
    env.ok("run", "-d", "--name", "cb", "--sandbox", "pb", "busybox", "sleep", "120")
    env.ok("run", "-d", "--name", "cb2", "--sandbox", "pb", "busybox", "sleep", "120")
    assert json.loads(env.ok("containers", "info", "cb"))["sandbox"] == "pb"
    assert len(shims_of(env.ns)) == 1  # one shim serves the sandbox's group
    seen = env.ok("exec", "cb", "sh", "-c", "hostname; cat /etc/hostname; busybox ip -o -4 addr show eth0")
    assert seen.splitlines()[:2] == ["beta", "beta"] and f"inet {ip_b}/" in seen, seen

    # a container in pa pings pb's address; it sees pa's hostname and files
    r = env.moor("run", "--rm", "--sandbox", "pa", "busybox", "sh", "-c",
                 f"hostname; cat /etc/hosts; busybox ping -c 1 -W 3 {ip_b}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("alpha\n")
    assert f"{ip_a}\talpha" in r.stdout
    assert "1 packets received" in r.stdout, r.stdout

    # and back: pb's container pings pa's address
    back = env.moor("exec", "cb", "busybox", "ping", "-c", "1", "-W", "3", ip_a)
    assert back.returncode == 0 and "1 packets received" in back.stdout, back.stdout + back.stderr

    refused = env.moor("run", "--rm", "--sandbox", "nope", "busybox", "true")
    assert refused.returncode == 3, refused.stderr
    both = env.moor("run", "--rm", "--sandbox", "pa", "--hostname", "x", "busybox", "true")
    assert both.returncode == 5 and "--sandbox" in both.stderr

    env.ok("rm", "-f", "cb", "cb2")
    wait_until(lambda: shims_of(env.ns) == [], what="the group's shim gone")
    env.ok("sandbox", "rm", "-f", "pa", "pb")
    log = env.nri_log()
    assert f"RunPodSandbox pa {ip_a}" in log and f"RunPodSandbox pb {ip_b}" in log, log
    assert "CreateContainer pb cb" in log and "CreateContainer pb cb2" in log, log
    assert any(line.startswith("CreateContainer pa ") for line in log), log
    for sb in ("pa", "pb"):
        assert f"StopPodSandbox {sb}" in log and f"RemovePodSandbox {sb}" in log, log
    assert env.ok("--json", "containers", "ls").strip() in ("", "[]")
    testnet.assert_clean()
