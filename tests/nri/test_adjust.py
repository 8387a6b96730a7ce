"""Merging plugins' adjustments (ownership, removal, conflicts) and applying them to a spec."""

from __future__ import annotations

from typing import Any

import pytest

from moorage import errdefs
from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.adjust import Result, apply_adjustment, resources_from_oci, resources_to_oci
from moorage.nri.convert import container_from_spec
from moorage.nri.stub import Adjustment


def spec() -> dict[str, Any]:
    return {
        "process": {"args": ["sh"], "env": ["PATH=/bin", "KEEP=1", "DROP=x"],
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/data", "type": "bind", "source": "/old", "options": ["rbind"]}],
        "annotations": {"keep": "1", "drop": "2"},
        "linux": {"resources": {"memory": {"limit": 100}, "devices": [{"allow": False, "access": "rwm"}]},
                  "sysctl": {"net.a": "1"}},
    }


def test_apply_every_supported_field() -> None:
    adj = (
        Adjustment()
        .add_env("NEW", "v").remove_env("DROP").add_env("KEEP", "2")
        .add_annotation("new", "a").remove_annotation("drop")
        .add_mount("/data", "/new", options=["rbind", "ro"]).add_mount("/extra", "/x")
        .remove_mount("/proc")
        .add_rlimit("RLIMIT_NOFILE", 4096, 2048).add_rlimit("RLIMIT_NPROC", 10, 10)
        .add_device("/dev/fuse", "c", 10, 229, file_mode=0o666)
        .set_memory_limit(1 << 20).set_cpu_shares(512).set_pids_limit(64)
        .set_oom_score_adj(500).set_cgroups_path("/moorage/x")
        .add_hook("prestart", "/bin/hook", args=["hook", "a"], timeout=5)
        .add_sysctl("net.b", "2")
        .set_args(["echo", "hi"])
    ).message
    s = apply_adjustment(spec(), adj)
    p = s["process"]
    assert p["env"] == ["PATH=/bin", "NEW=v", "KEEP=2"]
    assert p["args"] == ["echo", "hi"]
    assert {r["type"]: (r["hard"], r["soft"]) for r in p["rlimits"]} == {
        "RLIMIT_NOFILE": (4096, 2048), "RLIMIT_NPROC": (10, 10)}
    assert p["oomScoreAdj"] == 500
    assert s["annotations"] == {"keep": "1", "new": "a"}
    assert [(m["destination"], m["source"]) for m in s["mounts"]] == [("/data", "/new"), ("/extra", "/x")]
    lin = s["linux"]
    assert lin["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}]
    assert lin["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
    assert lin["resources"]["memory"] == {"limit": 1 << 20}
    assert lin["resources"]["cpu"] == {"shares": 512}
    assert lin["resources"]["pids"] == {"limit": 64}
    assert lin["cgroupsPath"] == "/moorage/x"
    assert lin["sysctl"] == {"net.a": "1", "net.b": "2"}
    assert s["hooks"] == {"prestart": [{"path": "/bin/hook", "args": ["hook", "a"], "timeout": 5}]}


def test_empty_adjustment_leaves_spec_alone() -> None:
    assert apply_adjustment(spec(), api.ContainerAdjustment()) == spec()


def test_args_override_marker_is_stripped() -> None:
    s = apply_adjustment(spec(), Adjustment().set_args(["a"], override=True).message)
    assert s["process"]["args"] == ["a"]


def merged(*replies: tuple[str, Adjustment]) -> Result:
    r = Result(container_from_spec(spec(), "c1"))
    for plugin, adj in replies:
        r.add_adjustment(plugin, adj.message)
    return r


def test_merge_in_order_and_container_sees_earlier_plugins() -> None:
    r = merged(("10-a", Adjustment().add_env("A", "1").add_annotation("x", "1")),
               ("20-b", Adjustment().add_env("B", "2").remove_annotation("drop")))
    assert [(kv.key, kv.value) for kv in r.adjust.env] == [("A", "1"), ("B", "2")]
    assert dict(r.adjust.annotations) == {"x": "1", "-drop": ""}
    assert r.container is not None
    assert "A=1" in r.container.env and "B=2" in r.container.env
    assert "drop" not in r.container.annotations


@pytest.mark.parametrize(
    ("first", "second", "what"),
    [
        (Adjustment().add_env("X", "1"), Adjustment().add_env("X", "2"), "environment variable X"),
        (Adjustment().add_env("X", "1"), Adjustment().remove_env("X"), "environment variable X"),
        (Adjustment().add_annotation("k", "1"), Adjustment().add_annotation("k", "1"), "annotation k"),
        (Adjustment().add_mount("/m", "/a"), Adjustment().add_mount("/m", "/b"), "mount /m"),
        (Adjustment().add_sysctl("net.x", "1"), Adjustment().add_sysctl("net.x", "2"), "sysctl net.x"),
        (Adjustment().add_device("/dev/d", "c", 1, 2), Adjustment().remove_device("/dev/d"), "device /dev/d"),
        (Adjustment().add_rlimit("RLIMIT_NOFILE", 1, 1), Adjustment().add_rlimit("RLIMIT_NOFILE", 2, 2),
         "rlimit RLIMIT_NOFILE"),
        (Adjustment().set_memory_limit(1), Adjustment().set_memory_limit(2), "memory limit"),
        (Adjustment().set_oom_score_adj(1), Adjustment().set_oom_score_adj(2), "OOM score adjustment"),
        (Adjustment().set_args(["a"]), Adjustment().set_args(["b"]), "args"),
    ],
)
def test_conflict_names_both_plugins(first: Adjustment, second: Adjustment, what: str) -> None:
    with pytest.raises(errdefs.Conflict) as err:
        merged(("10-first", first), ("20-second", second))
    assert str(err.value) == f'plugins "10-first" and "20-second" both tried to set {what}'


def test_same_plugin_may_remove_and_readd() -> None:
    r = merged(("10-a", Adjustment().remove_env("KEEP").add_env("KEEP", "new")))
    assert [(kv.key, kv.value) for kv in r.adjust.env] == [("KEEP", "new")]
    s = apply_adjustment(spec(), r.adjust)
    assert s["process"]["env"] == ["PATH=/bin", "DROP=x", "KEEP=new"]


def test_args_override_takes_ownership() -> None:
    r = merged(("10-a", Adjustment().set_args(["a"])), ("20-b", Adjustment().set_args(["b"], override=True)))
    assert list(r.adjust.args) == ["b"]


def test_hooks_accumulate_without_conflict() -> None:
    r = merged(("10-a", Adjustment().add_hook("poststop", "/a")), ("20-b", Adjustment().add_hook("poststop", "/b")))
    assert [h.path for h in r.adjust.hooks.poststop] == ["/a", "/b"]


def test_unsupported_adjustments_fail_naming_the_plugin() -> None:
    adj = Adjustment()
    adj.message.linux.seccomp_policy.default_action = "SCMP_ACT_ALLOW"
    with pytest.raises(errdefs.NotImplemented, match='plugin .10-a. adjusts linux.seccomp_policy'):
        merged(("10-a", adj))
    cdi = Adjustment()
    cdi.message.CDI_devices.add(name="vendor.com/gpu=0")
    with pytest.raises(errdefs.NotImplemented, match="CDI"):
        merged(("10-a", cdi))


def test_updates_merge_and_conflict() -> None:
    r = Result()
    u1 = api.ContainerUpdate(container_id="x", ignore_failure=True)
    u1.linux.resources.memory.limit.value = 5
    u2 = api.ContainerUpdate(container_id="x", ignore_failure=False)
    u2.linux.resources.cpu.shares.value = 7
    r.add_updates("10-a", [u1])
    r.add_updates("20-b", [u2])
    assert r.updates["x"].linux.resources.memory.limit.value == 5
    assert r.updates["x"].linux.resources.cpu.shares.value == 7
    assert r.updates["x"].ignore_failure is False
    with pytest.raises(errdefs.Conflict, match='plugins "10-a" and "30-c" both tried to set memory limit'):
        r.add_updates("30-c", [u1])
    with pytest.raises(errdefs.InvalidArgument, match="being created"):
        Result().add_updates("10-a", [u1], creating="x")


def test_resources_roundtrip_oci() -> None:
    oci = {"memory": {"limit": 10, "swap": 20, "disableOOMKiller": True}, "cpu": {"shares": 2, "quota": 3,
           "period": 4, "cpus": "0-1", "mems": "0"}, "pids": {"limit": 9}, "unified": {"a": "b"},
           "hugepageLimits": [{"pageSize": "2MB", "limit": 1}],
           "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]}
    assert resources_to_oci(resources_from_oci(oci)) == oci


def test_container_from_spec() -> None:
    c = container_from_spec(spec(), "c1", name="web", labels={"l": "v"}, state="running", pid=42)
    assert (c.id, c.name, c.pid, c.state) == ("c1", "web", 42, api.CONTAINER_RUNNING)
    assert list(c.args) == ["sh"] and "KEEP=1" in c.env
    assert [m.destination for m in c.mounts] == ["/proc", "/data"]
    assert c.rlimits[0].type == "RLIMIT_NOFILE"
    assert c.linux.resources.memory.limit.value == 100
    assert dict(c.labels) == {"l": "v"} and c.annotations["keep"] == "1"
