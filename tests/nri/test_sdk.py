"""The plugin SDK's pure parts and the sample plugins' hooks, called directly."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.plugins.device import DeviceInjector
from moorage.nri.plugins.inject import Injector
from moorage.nri.plugins.ulimit import Ulimit
from moorage.nri.stub import Adjustment, Plugin, _PluginService, handled_events, identity, parse_events


class Two(Plugin):
    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None: ...
    async def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None: ...


def test_event_mask_from_overridden_hooks() -> None:
    assert handled_events(Two()) == (1 << 3) | (1 << 10)
    assert parse_events(["create_container", "Remove-Container"]) == (1 << 3) | (1 << 10)
    with pytest.raises(ValueError, match="unknown event"):
        parse_events(["nope"])


def test_identity_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NRI_PLUGIN_NAME", raising=False)
    monkeypatch.delenv("NRI_PLUGIN_IDX", raising=False)
    assert identity("x", "05") == ("x", "05")
    assert identity(None, None, argv0="/opt/nri/plugins/10-logger") == ("logger", "10")
    monkeypatch.setenv("NRI_PLUGIN_NAME", "envname")
    monkeypatch.setenv("NRI_PLUGIN_IDX", "42")
    assert identity(None, None, argv0="/usr/bin/whatever") == ("envname", "42")
    monkeypatch.delenv("NRI_PLUGIN_IDX")
    with pytest.raises(ValueError, match="index"):
        identity(None, None, argv0="/usr/bin/whatever")


async def test_configure_may_narrow_but_not_widen() -> None:
    class Narrow(Two):
        wanted: Any = ["remove_container"]

        async def configure(self, config: str, runtime_name: str, runtime_version: str) -> Any:
            return self.wanted

    from moorage.nri.stub import Stub

    plugin = Narrow()
    stub = Stub(plugin, name="n", idx="10")
    svc = _PluginService(stub)
    resp = await svc.Configure(api.ConfigureRequest(config="c", runtime_name="containerd"), None)  # type: ignore[arg-type]
    assert resp.events == 1 << 10
    plugin.wanted = ["run_pod_sandbox"]
    with pytest.raises(ValueError, match="without a hook"):
        await svc.Configure(api.ConfigureRequest(), None)  # type: ignore[arg-type]


async def test_split_synchronize_is_accumulated() -> None:
    got: list[int] = []

    class Sync(Two):
        async def synchronize(self, pods: Any, containers: Any) -> None:
            got.append(len(containers))

    from moorage.nri.stub import Stub

    svc = _PluginService(Stub(Sync(), name="s", idx="10"))
    r1 = await svc.Synchronize(api.SynchronizeRequest(containers=[api.Container(id="a")], more=True), None)  # type: ignore[arg-type]
    r2 = await svc.Synchronize(api.SynchronizeRequest(containers=[api.Container(id="b")]), None)  # type: ignore[arg-type]
    assert r1.more is True and r2.more is False and got == [2]


POD = api.PodSandbox(id="p", annotations={"ulimits.noderesource.dev/container.web": json.dumps(
    [{"type": "nofile", "soft": 100, "hard": 200}])})


async def test_inject_plugin() -> None:
    p = Injector({"A": "1"}, {})
    await p.configure('[env]\nB = "2"\n[annotations]\n"x/y" = "z"\n', "moorage", "1")
    adj = await p.create_container(POD, api.Container(id="c"))
    assert [(kv.key, kv.value) for kv in adj.message.env] == [("A", "1"), ("B", "2")]
    assert dict(adj.message.annotations) == {"x/y": "z"}


async def test_ulimit_plugin_config_and_annotation() -> None:
    p = Ulimit()
    await p.configure("[rlimits]\nnofile = { soft = 10, hard = 20 }\nNPROC = { hard = 5 }\n", "moorage", "1")
    adj = await p.create_container(api.PodSandbox(), api.Container(id="c", name="db"))
    assert adj is not None
    assert [(r.type, r.hard, r.soft) for r in adj.message.rlimits] == [("RLIMIT_NOFILE", 20, 10), ("RLIMIT_NPROC", 5, 5)]
    adj = await p.create_container(POD, api.Container(id="c", name="web"))
    assert adj is not None
    assert ("RLIMIT_NOFILE", 200, 100) in [(r.type, r.hard, r.soft) for r in adj.message.rlimits]
    assert await Ulimit().create_container(api.PodSandbox(), api.Container()) is None


async def test_device_plugin_reads_the_host_node() -> None:
    p = DeviceInjector()
    await p.configure('[[devices]]\npath = "/dev/null"\n', "moorage", "1")
    adj = await p.create_container(api.PodSandbox(), api.Container(id="c"))
    assert adj is not None
    d = adj.message.linux.devices[0]
    st = os.stat("/dev/null")
    assert (d.path, d.type, d.major, d.minor) == ("/dev/null", "c", os.major(st.st_rdev), os.minor(st.st_rdev))
    with pytest.raises(ValueError, match="under /dev"):
        await p.configure('[[devices]]\npath = "/etc/passwd"\n', "moorage", "1")


def test_adjustment_builder_rejects_unknown_hook_kind() -> None:
    with pytest.raises(ValueError):
        Adjustment().add_hook("preboot", "/x")
