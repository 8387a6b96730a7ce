"""``moorage serve nri`` as a real process: pre-installed plugins launched from a plugin
folder, external plugins on its socket, the hook API through the proxy, ``moor nri ls``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.namespaces import current_namespace
from moorage.nri.adjust import apply_adjustment
from moorage.nri.client import NriHooks
from moorage.nri.stub import Adjustment, Plugin, Stub
from moorage.api.nri.pkg.api import api_pb2 as api
from suite import Suite

LAUNCHER = "#!{python}\nfrom moorage.nri.plugins.{module} import main\nraise SystemExit(main())\n"
ENV_PROBE = """#!{python}
import json, os, stat, sys
initial = open("/proc/self/environ", "rb").read().split(b"\\0")
env = dict(e.decode().split("=", 1) for e in initial if e)
json.dump({{"env": env, "fd3": stat.S_ISSOCK(os.fstat(3).st_mode), "argv0": sys.argv[0]}},
          open({out!r}, "w"))
from moorage.nri.plugins.logger import main
raise SystemExit(main(["--log-file", {log!r}]))
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def nri_suite() -> Iterator[tuple[Suite, Path]]:
    from moorage.registry import builtin_names

    tmp = Path(tempfile.mkdtemp(prefix="nri-", dir="/tmp"))
    plugins, conf = tmp / "plugins", tmp / "conf.d"
    plugins.mkdir()
    conf.mkdir()
    py = sys.executable
    executable(plugins / "10-inject", LAUNCHER.format(python=py, module="inject"))
    (conf / "10-inject.conf").write_text('[env]\nHELLO = "world"\n[annotations]\n"example.com/by" = "inject"\n')
    executable(plugins / "20-ulimit", LAUNCHER.format(python=py, module="ulimit"))
    (conf / "ulimit.conf").write_text("[rlimits]\nnofile = { soft = 4242, hard = 4242 }\n")
    executable(plugins / "30-probe", ENV_PROBE.format(python=py, out=str(tmp / "probe.json"), log=str(tmp / "logger.log")))
    executable(plugins / "05-crash", "#!/bin/sh\nexit 3\n")
    executable(plugins / "not-a-plugin", "#!/bin/sh\nexit 0\n")
    (plugins / "40-notexec").write_text("data")
    disabled = {n: {"enabled": False} for n in builtin_names() if n not in ("proxy", "nri")}
    config: dict[str, Any] = {
        **disabled,
        "nri": {"socket_path": str(tmp / "run" / "nri.sock"), "plugin_path": str(plugins),
                "plugin_config_path": str(conf), "registration_timeout": 10.0, "request_timeout": 2.0},
    }
    s = Suite(tmp, config=config)
    try:
        s.start("proxy")
        s.start("nri")
        yield s, tmp
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


def spec() -> dict[str, Any]:
    return {"process": {"args": ["sh"], "env": ["PATH=/bin"]}, "annotations": {}}


async def test_preinstalled_plugins_and_hooks(nri_suite: tuple[Suite, Path]) -> None:
    s, tmp = nri_suite
    ls = s.moor("--json", "nri", "ls")
    assert ls.returncode == 0, ls.stderr
    listed = json.loads(ls.stdout)
    assert [(p["index"], p["name"], p["launched"]) for p in listed] == [
        ("10", "inject", True), ("20", "ulimit", True), ("30", "probe", True)]
    assert all(p["pid"] > 0 for p in listed)
    assert listed[2]["events"][0] == "run_pod_sandbox" and len(listed[2]["events"]) == 14

    probe = json.loads((tmp / "probe.json").read_text())
    assert probe["env"] == {"NRI_PLUGIN_NAME": "probe", "NRI_PLUGIN_IDX": "30", "NRI_PLUGIN_SOCKET": "3"}
    assert probe["fd3"] is True

    hooks = NriHooks(s.address, optional=False)
    token = current_namespace.set("default")
    try:
        sp = spec()
        adj = await hooks.create_container(sp, container_id="c1", name="web")
        apply_adjustment(sp, adj)
        assert "HELLO=world" in sp["process"]["env"]
        assert sp["annotations"]["example.com/by"] == "inject"
        assert sp["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4242, "soft": 4242}]
        await hooks.post_create_container(sp, container_id="c1", name="web", pid=1)
        await hooks.start_container(sp, container_id="c1", name="web", pid=1)
        await hooks.remove_container(sp, container_id="c1", name="web")
    finally:
        current_namespace.reset(token)
        await hooks.close()
    log = (tmp / "logger.log").read_text().splitlines()
    assert "create_container c1 web" in log and "remove_container c1" in log

    table = s.moor("nri", "ls")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["INDEX", "NAME", "PID", "EVENTS"]
    assert "inject" in table.stdout and "create_container" in table.stdout


async def test_external_plugin_error_and_conflict_through_the_proxy(nri_suite: tuple[Suite, Path]) -> None:
    s, tmp = nri_suite

    class Clash(Plugin):
        async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Adjustment:
            if container.name == "boom":
                raise RuntimeError("refusing boom")
            return Adjustment().add_env("HELLO", "mars")

    stub = Stub(Clash(), name="clash", idx="50", socket_path=str(tmp / "run" / "nri.sock"))
    await stub.start()
    hooks = NriHooks(s.address, optional=False)
    try:
        ls = json.loads(s.moor("--json", "nri", "ls").stdout)
        assert [p["name"] for p in ls][-1] == "clash"
        with pytest.raises(errdefs.FailedPrecondition, match='plugins "10-inject" and "50-clash" both tried to set environment variable HELLO'):
            await hooks.create_container(spec(), container_id="c2", name="web")
        with pytest.raises(errdefs.Unknown, match='plugin "50-clash" failed to handle CreateContainer: refusing boom'):
            await hooks.create_container(spec(), container_id="c3", name="boom")
    finally:
        stub.close()
        await hooks.close()


async def test_hooks_are_optional_without_the_nri_process(tmp_path: Path) -> None:
    from moorage.registry import builtin_names

    disabled = {n: {"enabled": False} for n in builtin_names() if n != "proxy"}
    s = Suite(tmp_path, config=disabled)
    try:
        s.start("proxy")
        hooks = NriHooks(s.address)
        adj = await hooks.create_container(spec(), container_id="c1")
        assert adj == api.ContainerAdjustment()
        await hooks.close()
        strict = NriHooks(s.address, optional=False)
        with pytest.raises((errdefs.Unavailable, errdefs.NotImplemented)):
            await strict.create_container(spec(), container_id="c1")
        await strict.close()
    finally:
        s.close()


async def test_pod_hooks_for_the_sandbox_service(nri_suite: tuple[Suite, Path]) -> None:
    from moorage.annotations import SANDBOX_NAME, SANDBOX_NAMESPACE, SANDBOX_UID
    from moorage.nri.client import NriPodHooks
    from moorage.services.sandbox.contract import PodMeta

    s, tmp = nri_suite

    class Net:
        ips = ("10.88.0.5",)
        netns_path = "/var/run/netns/moorage-sb1"

    got: list[api.PodSandbox] = []

    class Pods(Plugin):
        async def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
            got.append(pod)

        async def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
            got.append(pod)

    stub = Stub(Pods(), name="pods", idx="60", socket_path=str(tmp / "run" / "nri.sock"))
    await stub.start()
    hooks = NriPodHooks(s.address, optional=False)
    token = current_namespace.set("k8s.io")
    try:
        await hooks.run("sb1", Net(), PodMeta())  # no CRI pod: its id and containerd namespace
        await hooks.stop("sb1", Net(), PodMeta())
        await hooks.remove("sb1", Net(), PodMeta())
        cri_pod = PodMeta({SANDBOX_NAME: "web", SANDBOX_NAMESPACE: "prod", SANDBOX_UID: "u-1", "note": "hi"},
                          {"app": "web"})
        await hooks.run("sb2", Net(), cri_pod)
        await hooks.close()  # nothing kept in memory: a new client (a restarted service) sends the same
        hooks = NriPodHooks(s.address, optional=False)
        await hooks.remove("sb2", Net(), cri_pod)
    finally:
        current_namespace.reset(token)
        stub.close()
        await hooks.close()
    assert [(p.id, p.name, p.namespace, p.uid, list(p.ips)) for p in got] == \
        [("sb1", "sb1", "k8s.io", "", ["10.88.0.5"])] * 2 + [("sb2", "web", "prod", "u-1", ["10.88.0.5"])] * 2
    assert got[0].linux.namespaces[0].path == "/var/run/netns/moorage-sb1"
    assert dict(got[3].labels) == {"app": "web"} and got[3].annotations["note"] == "hi"
    assert got[3] == got[2]
    log = (tmp / "logger.log").read_text().splitlines()
    assert "run_pod_sandbox sb1" in log and "stop_pod_sandbox sb1" in log


def test_moor_nri_cli_imports_no_asyncio_and_reports_unavailable(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys\n"
        "from moorage.cli.main import main\n"
        f"rc = main(['--address', {str(tmp_path / 'none.sock')!r}, 'nri', 'ls'])\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 7, r.stderr
    assert "cannot reach moorage" in r.stderr
    usage = subprocess.run([sys.executable, "-m", "moorage.cli.main", "nri", "frob"], capture_output=True, text=True)
    assert usage.returncode == 2


async def test_plugin_updates_and_evictions_reach_the_tasks_service(tmp_path: Path) -> None:
    """Updates returned with CreateContainer, unsolicited UpdateContainers and evictions go
    to Tasks.Update / Tasks.Kill through the proxy, in the container's namespace."""
    import time

    from moorage.registry import builtin_names

    out = tmp_path / "tasks.jsonl"
    sock = tmp_path / "run" / "nri.sock"
    disabled = {n: {"enabled": False} for n in builtin_names() if n not in ("proxy", "nri")}
    s = Suite(tmp_path, config={**disabled, "faketasks": {"out": str(out)},
                                "nri": {"socket_path": str(sock), "plugin_path": str(tmp_path / "none")}},
              plugins=["tests.nri.faketasks:PROCESS"])

    class Neighbourly(Plugin):
        failed: list[api.ContainerUpdate] = []

        async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Any:
            if container.id != "new":
                return None
            u = api.ContainerUpdate(container_id="old")
            u.linux.resources.memory.limit.value = 1 << 20
            assert self.stub is not None
            gone = api.ContainerUpdate(container_id="missing")
            gone.linux.resources.cpu.shares.value = 2
            self.failed = await self.stub.update_containers([gone], [api.ContainerEviction(container_id="old",
                                                                                           reason="test")])
            return None, [u]

    plugin = Neighbourly()
    try:
        s.start("proxy")
        s.start("faketasks")
        s.start("nri")
        stub = Stub(plugin, name="neighbourly", idx="10", socket_path=str(sock))
        await stub.start()
        hooks = NriHooks(s.address, optional=False)
        token = current_namespace.set("ns1")
        try:
            await hooks.create_container(spec(), container_id="old")
            await hooks.create_container(spec(), container_id="new")
        finally:
            current_namespace.reset(token)
            await hooks.close()
            stub.close()
        assert [u.container_id for u in plugin.failed] == ["missing"]
        deadline = time.monotonic() + 10
        while True:
            lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
            if len(lines) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        by_op = {e["op"]: e for e in lines}
        # tagged, so the runtime applies it without asking the plugins again (no hook loop)
        assert by_op["update"] == {"op": "update", "id": "old", "ns": "ns1", "origin": ["1"],
                                   "type_url": "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                                   "resources": {"memory": {"limit": 1 << 20}}}
        assert by_op["kill"] == {"op": "kill", "id": "old", "ns": "ns1", "signal": 9, "all": True}
    finally:
        s.close()
