"""The OCI spec builder: containerd's default spec, the image config on top, untrusted input."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from moorage.errdefs import InvalidArgument
from moorage.services.runtime import rootfs as rfs
from moorage.services.runtime import spec as sp
from moorage.services.runtime.contract import Mount


def test_default_spec_is_containerd_16s() -> None:
    s = sp.default_spec("ns1", "c1")
    assert s["root"] == {"path": "rootfs"}
    assert s["process"]["cwd"] == "/"
    assert s["process"]["noNewPrivileges"] is True
    assert s["process"]["user"] == {"uid": 0, "gid": 0}
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    caps = s["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == list(sp.DEFAULT_CAPS)
    assert "CAP_SYS_ADMIN" not in caps["bounding"] and len(caps["bounding"]) == 14
    assert [n["type"] for n in s["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert s["linux"]["cgroupsPath"] == "/ns1/c1"
    assert "/proc/kcore" in s["linux"]["maskedPaths"] and "/proc/sys" in s["linux"]["readonlyPaths"]
    assert s["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    dests = [m["destination"] for m in s["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run"]
    assert "ro" in s["mounts"][5]["options"]  # /sys read-only


def test_default_spec_objects_are_fresh() -> None:
    a = sp.default_spec("n", "a")
    a["process"]["env"].append("X=1")
    a["mounts"][0]["options"].append("y")
    b = sp.default_spec("n", "b")
    assert "X=1" not in b["process"]["env"] and "y" not in b["mounts"][0]["options"]


def test_image_config_applied() -> None:
    img = sp.ImageConfig.from_json({"config": {
        "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["PATH=/x", "A=1"],
        "WorkingDir": "/data", "User": "", "Labels": {"containerd.io/restart.loguri": "binary:///bin/sh"},
    }})
    s = sp.build_spec("n", "c", img)
    assert s["process"]["args"] == ["/bin/sh", "-c", "echo hi"]
    assert s["process"]["env"] == ["PATH=/x", "A=1"]
    assert s["process"]["cwd"] == "/data"
    assert "restart" not in json.dumps(s)  # image labels never reach the spec


def test_overrides_win() -> None:
    img = sp.ImageConfig(entrypoint=("/ep",), cmd=("a",), env=("A=1", "B=2"), working_dir="/w")
    s = sp.build_spec("n", "c", img, sp.Overrides(args=("b", "c"), env=("B=3", "C=4"),
                                                  workdir="/o", hostname="h", memory=1 << 20,
                                                  cpus=0.5))
    assert s["process"]["args"] == ["/ep", "b", "c"]
    assert s["process"]["env"][-3:] == ["A=1", "B=3", "C=4"]
    assert s["process"]["cwd"] == "/o" and s["hostname"] == "h"
    assert s["linux"]["resources"]["memory"] == {"limit": 1 << 20}
    assert s["linux"]["resources"]["cpu"] == {"quota": 50000, "period": 100000}


@pytest.mark.parametrize("cwd", ["/proc/self/fd/7", "/proc", "/proc/", "//proc/1/cwd", "/proc/./self/cwd",
                                 "/proc/thread-self/fd/3"])
def test_working_dir_under_proc_is_refused(cwd: str) -> None:
    """CVE-2024-21626: a cwd of /proc/self/fd/N reaches a host directory fd leaked into runc."""
    img = sp.ImageConfig(entrypoint=("/ep",), working_dir=cwd)
    with pytest.raises(InvalidArgument, match="working directory .* must not be under /proc"):
        sp.build_spec("n", "c", img)
    with pytest.raises(InvalidArgument, match="under /proc"):
        sp.build_spec("n", "c", sp.ImageConfig(entrypoint=("/ep",)), sp.Overrides(workdir=cwd))
    spec = sp.build_spec("n", "c", sp.ImageConfig(entrypoint=("/ep",)))
    with pytest.raises(InvalidArgument, match="under /proc"):
        sp.process_spec(spec, ["sh"], cwd=cwd)
    assert sp.process_spec(spec, ["sh"], cwd="/procfs/x")["cwd"] == "/procfs/x"


def test_no_command_is_an_error() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        sp.build_spec("n", "c", sp.ImageConfig())


@pytest.mark.parametrize("vols", [[""], ["/../.."], ["/proc/.."], ["relative"], ["/"], ["/proc"],
                                  ["/sys/kernel"], ["/dev/x"], ["/a/../../etc"]])
def test_image_volumes_never_name_a_host_path(vols: list[str]) -> None:
    """CVE-2022-23648: odd Volumes entries are rejected, never turned into host binds."""
    img = sp.ImageConfig.from_json({"config": {"Cmd": ["x"], "Volumes": {v: {} for v in vols}}})
    with pytest.raises(InvalidArgument):
        sp.build_spec("n", "c", img)


def test_image_volumes_are_fresh_tmpfs() -> None:
    img = sp.ImageConfig.from_json({"config": {"Cmd": ["x"], "Volumes": {"/data": {}, "/data/": {}}}})
    s = sp.build_spec("n", "c", img)
    vols = [m for m in s["mounts"] if m["destination"] == "/data"]
    assert len(vols) == 1 and vols[0]["type"] == "tmpfs" and vols[0]["source"] == "tmpfs"
    assert not any(m["type"] == "bind" for m in s["mounts"])


@pytest.mark.parametrize("user", ["2147483648", "-1", "4294967296", "0:2147483648", "1:-5",
                                  "99999999999", "a:b:c", "x\0y"])
def test_user_out_of_range_never_becomes_root(user: str) -> None:
    """CVE-2024-40635: ids above 2**31-1 (or negative) are rejected, never wrapped to 0."""
    with pytest.raises(InvalidArgument):
        sp.resolve_user(user, None)


def test_numeric_users() -> None:
    assert sp.resolve_user("1000", None) == {"uid": 1000, "gid": 0}
    assert sp.resolve_user("1000:1000", None) == {"uid": 1000, "gid": 1000}
    assert sp.resolve_user("2147483647:0", None) == {"uid": 2147483647, "gid": 0}


def test_named_users_resolved_in_the_rootfs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n")
    (tmp_path / "etc/group").write_text("app:x:1001:\nextra:x:2000:app\nother:x:3000:\n")
    read = rfs.reader([Mount("bind", str(tmp_path), "", ("rbind",))])
    assert sp.resolve_user("app", read) == {"uid": 1000, "gid": 1001, "additionalGids": [2000]}
    assert sp.resolve_user("app:other", read)["gid"] == 3000
    with pytest.raises(InvalidArgument, match="no user"):
        sp.resolve_user("ghost", read)


def test_rootfs_reads_stay_inside(tmp_path: Path) -> None:
    """A symlinked /etc/passwd pointing at the host resolves inside the layer."""
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (tmp_path / "secret").write_text("app:x:0:0::/:/bin/sh\n")
    (layer / "etc/passwd").symlink_to(tmp_path / "secret")
    read = rfs.reader([Mount("bind", str(layer), "", ("rbind",))])
    assert read("etc/passwd") is None
    with pytest.raises(InvalidArgument):
        sp.resolve_user("app", read)


def test_overlay_layers_topmost_first(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d, uid in ((lower, 1), (upper, 2)):
        (d / "etc").mkdir(parents=True)
        (d / "etc/passwd").write_text(f"u:x:{uid}:0::/:/bin/sh\n")
    m = Mount("overlay", "overlay", "", (f"lowerdir={lower}", f"upperdir={upper}", "workdir=/w"))
    assert sp.resolve_user("u", rfs.reader([m]))["uid"] == 2


def test_parallel_builds_do_not_share_state() -> None:
    """CVE-2021-21334: 50 concurrent creates from one image config, distinct env each."""
    img = sp.ImageConfig(cmd=("x",), env=("SHARED=1",))

    def one(i: int) -> list[str]:
        s = sp.build_spec("n", f"c{i}", img, sp.Overrides(env=(f"MINE={i}",)))
        return list(s["process"]["env"])

    with ThreadPoolExecutor(8) as pool:
        envs = list(pool.map(one, range(50)))
    for i, env in enumerate(envs):
        assert [e for e in env if e.startswith("MINE=")] == [f"MINE={i}"]
    assert img.env == ("SHARED=1",)


def test_parse_mount_and_memory() -> None:
    m = sp.parse_mount("type=bind,src=/host,dst=/in,ro")
    assert m == {"destination": "/in", "type": "bind", "source": "/host", "options": ["rbind", "ro"]}
    with pytest.raises(InvalidArgument):
        sp.parse_mount("type=bind,src=rel,dst=/in")
    with pytest.raises(InvalidArgument):
        sp.parse_mount("type=bind,src=/h,dst=/a/../b")
    assert sp.parse_memory("512m") == 512 << 20 and sp.parse_memory("1g") == 1 << 30
    with pytest.raises(InvalidArgument):
        sp.parse_memory("-1")


def test_image_config_types_checked() -> None:
    with pytest.raises(InvalidArgument):
        sp.ImageConfig.from_json({"config": {"Cmd": "not a list"}})
    with pytest.raises(InvalidArgument):
        sp.ImageConfig.from_json({"config": {"Env": [1, 2]}})
    with pytest.raises(InvalidArgument):
        sp.build_spec("n", "c", sp.ImageConfig(cmd=("x",), env=("=bad",)))
