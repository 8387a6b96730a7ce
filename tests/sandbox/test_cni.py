"""The CNI runner against small fake plugins (no root): config injection, chaining, DEL
order and error handling, deadlines that kill the plugin's whole process group."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.services.sandbox.cni import Attachment, Cni, load_conflist, parse_conflist, result_ips
from moorage.services.sandbox.contract import PodConfig, PortMapping, DNSConfig

RECORDER = r'''
import json, os, subprocess, sys, time
conf = json.loads(sys.stdin.read())
cmd = os.environ["CNI_COMMAND"]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"type": conf["type"], "cmd": cmd, "conf": conf,
        "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")}}) + "\n")
mode = conf.get("mode", "ok")
if mode == "fail" and cmd in conf.get("fail_on", [cmd]):
    print(json.dumps({"code": 7, "msg": "told to fail", "details": conf["type"]})); sys.exit(1)
if mode == "garbage" and cmd == "ADD":
    print("not json"); sys.exit(0)
if mode == "hang" and cmd == "ADD":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_LOG"] + ".child", "w") as f:
        f.write(str(child.pid))
    time.sleep(600)
if cmd == "ADD":
    prev = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}
    idx = len(prev["interfaces"])
    prev["interfaces"].append({"name": conf["type"], "sandbox": os.environ["CNI_NETNS"] if conf.get("in_sandbox") else ""})
    if conf.get("ip"):
        prev["ips"].append({"address": conf["ip"], "interface": idx})
    print(json.dumps(prev))
'''


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("one", "two", "three"):
        p = d / name
        p.write_text(f"#!{sys.executable}\n{RECORDER}")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    return d


def calls(tmp_path: Path) -> list[dict]:  # type: ignore[type-arg]
    path = tmp_path / "calls.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def net(*plugins: dict) -> object:  # type: ignore[type-arg]
    return parse_conflist(json.dumps({"cniVersion": "1.0.0", "name": "fake", "plugins": list(plugins)}))


ATT = Attachment("c0ffee", "/var/run/netns/x", "eth0", (("K8S_POD_NAME", "p"),), {"portMappings": [{"hostPort": 1}], "bandwidth": {}})


async def test_add_chains_results_and_injects_config(bindir: Path, tmp_path: Path) -> None:
    cni = Cni([str(tmp_path / "empty"), str(bindir)])
    n = net({"type": "one", "in_sandbox": True, "ip": "10.1.0.5/24"}, {"type": "two", "capabilities": {"portMappings": True}})
    result = await cni.add(n, ATT, 10)  # type: ignore[arg-type]
    assert result_ips(result) == ["10.1.0.5"]
    one, two = calls(tmp_path)
    assert one["conf"]["name"] == "fake" and one["conf"]["cniVersion"] == "1.0.0"
    assert "prevResult" not in one["conf"] and "runtimeConfig" not in one["conf"]
    assert two["conf"]["prevResult"]["interfaces"][0]["name"] == "one"
    assert two["conf"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    env = one["env"]
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_CONTAINERID"] == "c0ffee" and env["CNI_NETNS"] == "/var/run/netns/x"
    assert env["CNI_IFNAME"] == "eth0" and env["CNI_ARGS"] == "K8S_POD_NAME=p"
    assert env["CNI_PATH"] == f"{tmp_path / 'empty'}:{bindir}"


async def test_del_reverse_best_effort(bindir: Path, tmp_path: Path) -> None:
    cni = Cni([str(bindir)])
    n = net({"type": "one"}, {"type": "two", "mode": "fail", "fail_on": ["DEL"]}, {"type": "three"})
    with pytest.raises(errdefs.Unavailable, match="told to fail"):
        await cni.delete(n, Attachment("c", ""), None, 10)  # type: ignore[arg-type]
    assert [c["type"] for c in calls(tmp_path)] == ["three", "two", "one"]
    assert all(c["env"]["CNI_NETNS"] == "" and "prevResult" not in c["conf"] for c in calls(tmp_path))


async def test_plugin_errors(bindir: Path, tmp_path: Path) -> None:
    cni = Cni([str(bindir)])
    with pytest.raises(errdefs.Unavailable) as info:
        await cni.add(net({"type": "one", "mode": "fail"}), ATT, 10)  # type: ignore[arg-type]
    assert info.value.cni_code == 7 and "one" in str(info.value)  # type: ignore[attr-defined]
    with pytest.raises(errdefs.Unavailable, match="unparsable"):
        await cni.add(net({"type": "one", "mode": "garbage"}), ATT, 10)  # type: ignore[arg-type]
    with pytest.raises(errdefs.FailedPrecondition, match="not found"):
        await cni.add(net({"type": "nosuch"}), ATT, 10)  # type: ignore[arg-type]


async def test_deadline_kills_plugin_and_its_children(bindir: Path, tmp_path: Path) -> None:
    cni = Cni([str(bindir)])
    started = time.monotonic()
    with pytest.raises(errdefs.DeadlineExceeded):
        await cni.add(net({"type": "one", "mode": "hang"}), ATT, 1.0)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5
    child = int((tmp_path / "calls.log.child").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # killed with the group; reaped by init
        try:
            os.kill(child, 0)
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the plugin's child survived the deadline")


def test_conflist_loading(tmp_path: Path) -> None:
    with pytest.raises(errdefs.FailedPrecondition):
        load_conflist(str(tmp_path / "none"))
    (tmp_path / "05-broken.conflist").write_text("{")
    (tmp_path / "10-single.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "b0"}))
    (tmp_path / "20-list.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "list", "plugins": [{"type": "x"}]}))
    (tmp_path / "README").write_text("ignored")
    loaded = load_conflist(str(tmp_path))
    assert loaded.name == "single" and loaded.cni_version == "0.4.0"
    assert loaded.plugins == ({"type": "bridge", "bridge": "b0"},)
    for bad in ('{"name": "n", "plugins": []}', '{"plugins": [{"type": "x"}]}', '{"name": "n", "plugins": [{"type": "../x"}]}', "[]"):
        with pytest.raises(errdefs.InvalidArgument):
            parse_conflist(bad)


def test_result_ips_versions() -> None:
    v1 = {"interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/ns"}], "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.0.2/24", "interface": 1}, {"address": "fd00::2/64", "interface": 1}]}
    assert result_ips(v1) == ["10.0.0.2", "fd00::2"]
    v03 = {"ips": [{"version": "4", "address": "10.9.0.3/16"}]}
    assert result_ips(v03) == ["10.9.0.3"]
    assert result_ips(None) == [] and result_ips({}) == []


def test_pod_config_round_trip_and_ports() -> None:
    pod = PodConfig("h", DNSConfig(("1.1.1.1",), ("a.b",), ("ndots:2",)), (PortMapping(80, 8080), PortMapping(53, 53, "udp", "127.0.0.1")), False, (("A", "b"),))
    assert PodConfig.from_json(pod.to_json()) == pod
    assert PortMapping.parse("8080:80") == PortMapping(8080, 80)
    assert PortMapping.parse("127.0.0.1:53:53/UDP") == PortMapping(53, 53, "udp", "127.0.0.1")
    for bad in ("80", "0:80", "80:70000", "a:b", "1:2/icmp", "1:2:3:4"):
        with pytest.raises(ValueError):
            PortMapping.parse(bad)
    with pytest.raises(ValueError):
        PodConfig.from_json(b'{"port_mappings": [{"hostPort": 0, "containerPort": 1}]}')


def test_plugins_under_uvloop_including_one_that_ignores_stdin(bindir: Path, tmp_path: Path) -> None:
    """The service runs on uvloop: the chain works there too, and a plugin that exits
    without reading its configuration (uvloop's subprocess stdin transport used to fail
    such a call) still answers its result, or its error, like any other."""
    uvloop = pytest.importorskip("uvloop")
    quick = bindir / "quick"
    quick.write_text("#!/bin/sh\necho '{\"cniVersion\": \"1.0.0\", \"interfaces\": [], \"ips\": []}'\n")
    quick.chmod(0o755)
    failing = bindir / "quickfail"
    failing.write_text("#!/bin/sh\necho '{\"code\": 5, \"msg\": \"no\"}'\nexit 1\n")
    failing.chmod(0o755)
    cni = Cni([str(bindir)])
    big = {"type": "quick", "padding": "x" * (1 << 20)}  # more than a pipe buffer of config

    async def run() -> None:
        for _ in range(10):  # the exit races the write of stdin: try it a few times
            assert await cni.add(net({"type": "quick"}), ATT, 10) == {"cniVersion": "1.0.0", "interfaces": [], "ips": []}  # type: ignore[arg-type]
        result = await cni.add(net({"type": "one", "in_sandbox": True, "ip": "10.1.0.7/24"}, big), ATT, 10)  # type: ignore[arg-type]
        assert result == {"cniVersion": "1.0.0", "interfaces": [], "ips": []}
        with pytest.raises(errdefs.Unavailable) as info:
            await cni.add(net({"type": "quickfail", "padding": "x" * (1 << 20)}), ATT, 10)  # type: ignore[arg-type]
        assert info.value.cni_code == 5  # type: ignore[attr-defined]
        await cni.delete(net({"type": "one"}, big), ATT, None, 10)  # type: ignore[arg-type]

    uvloop.run(run())
    assert [(c["type"], c["cmd"]) for c in calls(tmp_path)] == [("one", "ADD"), ("one", "DEL")]
