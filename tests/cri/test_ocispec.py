"""The CRI's spec rules without a suite: command/args over the image, users, capabilities,
namespaces joined through the pause, the oom_score_adj clamp, privileged gating."""

from __future__ import annotations

import pytest

from moorage.errdefs import InvalidArgument, PermissionDenied
from moorage.services.cri import ocispec
from moorage.services.cri.contract import (
    ContainerConfig,
    ContainerMetadata,
    Mount,
    MountPropagation,
    NamespaceMode,
    NamespaceOptions,
    PodConfig,
    PodMetadata,
    Resources,
    SecurityContext,
)
from moorage.services.runtime.spec import ImageConfig

INFO = {"netns_path": "/var/run/netns/p", "ips": "10.0.0.2", "hostname": "web", "hostname_path": "/p/hostname",
        "hosts_path": "/p/hosts", "resolv_conf_path": "/p/resolv.conf"}
POD = PodConfig(PodMetadata("web", "uid1", "default"), hostname="web", sysctls={"net.ipv4.ip_forward": "1"})
IMAGE = ImageConfig(entrypoint=("/entry",), cmd=("serve",), env=("A=1",), user="")


def _spec(config: ContainerConfig, pod: PodConfig = POD, allow: bool = False) -> dict:  # type: ignore[type-arg]
    return ocispec.container_spec("k8s.io", "c1", "p1", pod, config, IMAGE, "img", INFO, 4242, cgroup="/k/c1",
                                  clamp=ocispec.OomClamp(True, 0), allow_privileged=allow)


def _cfg(**kw: object) -> ContainerConfig:
    return ContainerConfig(ContainerMetadata("c"), "img", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("command,args,want", [
    ((), (), ["/entry", "serve"]),
    (("/bin/x",), (), ["/bin/x"]),
    ((), ("a", "b"), ["/entry", "a", "b"]),
    (("/bin/x",), ("y",), ["/bin/x", "y"]),
])
def test_command_replaces_entrypoint_and_args_replace_cmd(command: tuple[str, ...], args: tuple[str, ...],
                                                          want: list[str]) -> None:
    assert ocispec.process_args(_cfg(command=command, args=args), IMAGE) == want


def test_no_command_at_all_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        ocispec.process_args(_cfg(), ImageConfig())


def test_capabilities_all_then_named() -> None:
    assert ocispec.capabilities(["CAP_CHOWN", "CAP_KILL"], ["NET_ADMIN"], ["KILL"]) == ["CAP_CHOWN", "CAP_NET_ADMIN"]
    assert ocispec.capabilities(["CAP_CHOWN"], ["SYS_TIME"], ["ALL"]) == ["CAP_SYS_TIME"]
    assert set(ocispec.capabilities([], ["ALL"], ["CAP_SYS_ADMIN"])) == set(ocispec.ALL_CAPS) - {"CAP_SYS_ADMIN"}


def test_namespaces_joined_through_the_pause() -> None:
    spec = _spec(_cfg(security=SecurityContext(namespaces=NamespaceOptions(pid=NamespaceMode.POD))))
    ns = {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}
    assert ns == {"network": "/var/run/netns/p", "pid": "/proc/4242/ns/pid", "ipc": "/proc/4242/ns/ipc",
                  "uts": "/proc/4242/ns/uts", "mount": ""}
    assert "hostname" not in spec
    own = _spec(_cfg(security=SecurityContext(namespaces=NamespaceOptions(pid=NamespaceMode.CONTAINER,
                                                                          ipc=NamespaceMode.NODE))))
    ns = {n["type"]: n.get("path", "") for n in own["linux"]["namespaces"]}
    assert ns["pid"] == "" and "ipc" not in ns
    assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == "p1"
    assert spec["annotations"]["io.containerd.runc.v2.group"] == "p1"
    assert spec["linux"]["cgroupsPath"] == "/k/c1"


def test_users_env_mounts_and_resources() -> None:
    spec = _spec(_cfg(envs=(("B", "2"),), mounts=(Mount("/data", "/tmp", True, MountPropagation.HOST_TO_CONTAINER),),
                      resources=Resources(memory_limit_in_bytes=1 << 20, cpu_quota=5000, cpu_period=10000,
                                          oom_score_adj=-500),
                      security=SecurityContext(run_as_user=7, run_as_group=8, supplemental_groups=(9,),
                                               readonly_rootfs=True, no_new_privs=True)))
    proc = spec["process"]
    assert proc["user"] == {"uid": 7, "gid": 8, "additionalGids": [9]}
    assert "A=1" in proc["env"] and "B=2" in proc["env"]
    assert proc["oomScoreAdj"] == 0  # clamped to ours
    assert proc["noNewPrivileges"] is True and spec["root"]["readonly"] is True
    data = next(m for m in spec["mounts"] if m["destination"] == "/data")
    assert data["type"] == "bind" and "rslave" in data["options"] and "ro" in data["options"]
    assert spec["linux"]["rootfsPropagation"] == "rslave"
    shared = _spec(_cfg(mounts=(Mount("/a", "/tmp", False, MountPropagation.BIDIRECTIONAL),
                                Mount("/b", "/tmp", True, MountPropagation.HOST_TO_CONTAINER))))
    assert shared["linux"]["rootfsPropagation"] == "rshared"
    assert "rootfsPropagation" not in _spec(_cfg(mounts=(Mount("/c", "/tmp"),)))["linux"]
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 1 << 20} and res["cpu"] == {"quota": 5000, "period": 10000}


def test_run_as_group_without_user_and_privileged_gating() -> None:
    with pytest.raises(InvalidArgument, match="without user"):
        _spec(_cfg(security=SecurityContext(run_as_group=5)))
    with pytest.raises(PermissionDenied):
        _spec(_cfg(security=SecurityContext(privileged=True)))
    with pytest.raises(InvalidArgument, match="non-privileged sandbox"):
        _spec(_cfg(security=SecurityContext(privileged=True)), allow=True)
    priv_pod = PodConfig(PodMetadata("p", "u", "n"), privileged=True)
    spec = _spec(_cfg(security=SecurityContext(privileged=True)), pod=priv_pod, allow=True)
    assert set(spec["process"]["capabilities"]["bounding"]) == set(ocispec.ALL_CAPS)
    assert "maskedPaths" not in spec["linux"]


def test_pause_spec_clamps_oom_and_keeps_sysctls() -> None:
    spec = ocispec.pause_spec("k8s.io", "p1", POD, ImageConfig(entrypoint=("/pause",)), INFO, cgroup="/k/p1",
                              clamp=ocispec.OomClamp(True, 0), allow_privileged=False)
    assert spec["process"]["oomScoreAdj"] == 0
    assert ocispec.pause_spec("k8s.io", "p1", POD, ImageConfig(entrypoint=("/pause",)), INFO, cgroup="/k/p1",
                              clamp=ocispec.OomClamp(False, 0), allow_privileged=False)["process"]["oomScoreAdj"] == -998
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert spec["hostname"] == "web" and spec["process"]["args"] == ["/pause"]
    ns = {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}
    assert ns["network"] == "/var/run/netns/p" and ns["pid"] == "" and ns["ipc"] == "" and ns["uts"] == ""
    with pytest.raises(PermissionDenied):
        ocispec.pause_spec("k8s.io", "p1", PodConfig(PodMetadata("p", "u", "n"), privileged=True), ImageConfig(),
                           INFO, cgroup="/k/p1", clamp=ocispec.OomClamp(True, 0), allow_privileged=False)


def test_runtime_default_seccomp_follows_capabilities() -> None:
    from moorage.services.cri.seccomp import default_profile

    spec = _spec(_cfg(security=SecurityContext(seccomp="runtime/default")))
    sec = spec["linux"]["seccomp"]
    assert sec["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = sec["syscalls"][0]["names"]
    assert {"mount", "unshare", "setns", "keyctl", "ptrace", "reboot", "init_module", "bpf"} <= set(denied)
    assert any(r["names"] == ["clone"] for r in sec["syscalls"])
    admin = default_profile(["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"])
    assert "mount" not in admin["syscalls"][0]["names"] and "ptrace" not in admin["syscalls"][0]["names"]
    assert "keyctl" in admin["syscalls"][0]["names"]
    assert not any(r["names"] == ["clone"] for r in admin["syscalls"])
    assert "seccomp" not in _spec(_cfg(security=SecurityContext(seccomp="unconfined")))["linux"]


def test_devices_from_the_host() -> None:
    from moorage.services.cri.contract import Device

    spec = _spec(_cfg(devices=(Device("/dev/xnull", "/dev/null", "rw"),)))
    (dev,) = spec["linux"]["devices"]
    assert (dev["path"], dev["type"], dev["major"], dev["minor"]) == ("/dev/xnull", "c", 1, 3)
    assert spec["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                         "access": "rw"}
    with pytest.raises(InvalidArgument, match="not a device"):
        _spec(_cfg(devices=(Device("/dev/x", "/etc/hostname"),)))
    with pytest.raises(InvalidArgument, match="permissions"):
        _spec(_cfg(devices=(Device("/dev/x", "/dev/null", "rwx"),)))


def _pause(pod: PodConfig, **kw: object) -> dict:  # type: ignore[type-arg]
    return ocispec.pause_spec("k8s.io", "p1", pod, ImageConfig(entrypoint=("/pause",)), INFO, cgroup="/k/p1",
                              clamp=ocispec.OomClamp(True, 0), allow_privileged=False, **kw)  # type: ignore[arg-type]


def _pod(sysctls: dict[str, str], network: NamespaceMode = NamespaceMode.POD,
         ipc: NamespaceMode = NamespaceMode.POD) -> PodConfig:
    return PodConfig(PodMetadata("web", "uid1", "default"), sysctls=sysctls,
                     namespaces=NamespaceOptions(network=network, ipc=ipc))


@pytest.mark.parametrize("sysctls,network,ipc,match", [
    # CVE-2022-0811: a second key=value smuggled in the value
    ({"kernel.shm_rmid_forced": "1+kernel.core_pattern=|/tmp/x"}, "pod", "pod", "'kernel.shm_rmid_forced': value"),
    ({"net.ipv4.ip_forward": "1=2"}, "pod", "pod", "'net.ipv4.ip_forward': value"),
    ({"net.ipv4.ip_forward": "1\nkernel.core_pattern=x"}, "pod", "pod", "value"),
    ({"net.ipv4.ip_forward": "1\0"}, "pod", "pod", "value"),
    ({"kernel.core_pattern": "|/tmp/x"}, "pod", "pod", "'kernel.core_pattern' is not in a namespace"),
    ({"kernel.hostname": "x"}, "pod", "pod", "'kernel.hostname' is not in a namespace"),
    ({"vm.overcommit_memory": "1"}, "pod", "pod", "'vm.overcommit_memory' is not in a namespace"),
    ({"kernel.shm_next_id": "1"}, "pod", "pod", "not in a namespace"),
    ({"net.ipv4.ip_forward": "1"}, "node", "pod", "'net.ipv4.ip_forward' is not allowed in the host's network"),
    ({"kernel.shmmax": "1"}, "pod", "node", "'kernel.shmmax' is not allowed in the host's IPC"),
    ({"fs.mqueue.msg_max": "1"}, "pod", "node", "'fs.mqueue.msg_max' is not allowed in the host's IPC"),
    ({"net..x": "1"}, "pod", "pod", "not a valid sysctl name"),
    ({"net.ipv4/../../x": "1"}, "pod", "pod", "not a valid sysctl name"),
    ({"Net.ipv4.ip_forward": "1"}, "pod", "pod", "not a valid sysctl name"),
    ({"net." + "a" * 250: "1"}, "pod", "pod", "not a valid sysctl name"),
    ({"": "1"}, "pod", "pod", "not a valid sysctl name"),
])
def test_pod_sysctls_are_checked(sysctls: dict[str, str], network: str, ipc: str, match: str) -> None:
    mode = {"pod": NamespaceMode.POD, "node": NamespaceMode.NODE}
    pod = _pod(sysctls, mode[network], mode[ipc])
    with pytest.raises(InvalidArgument, match=match):
        ocispec.check_sysctls(pod)
    with pytest.raises(InvalidArgument, match=match):
        _pause(pod)


def test_namespaced_pod_sysctls_pass() -> None:
    ok = {"net.ipv4.ip_forward": "1", "net.ipv4.ping_group_range": "0 2147483647", "kernel.sem": "250 32000 32 128",
          "kernel.shm_rmid_forced": "1", "kernel.msgmax": "8192", "fs.mqueue.msg_max": "10",
          "net.ipv4.conf.eth0/100.forwarding": "1"}
    assert _pause(_pod(ok))["linux"]["sysctl"] == ok
    assert _pause(_pod({"kernel.sem": "1 2 3 4"}, network=NamespaceMode.NODE))["linux"]["sysctl"] == {
        "kernel.sem": "1 2 3 4"}
    assert _pause(_pod({"net.core.somaxconn": "1024"}, ipc=NamespaceMode.NODE))["linux"]["sysctl"] == {
        "net.core.somaxconn": "1024"}


GROUP = "io.containerd.runc.v2.group"
HOSTILE = {GROUP: "VICTIM-POD-ID", "io.kubernetes.cri.sandbox-id": "VICTIM-POD-ID",
           "io.kubernetes.cri.container-type": "sandbox", "org.systemd.property.CPUQuota": "1%",
           "example.com/ok": "1", "example.com/deep/no": "2", "other": "3"}


def test_user_annotations_never_choose_the_shim_group_or_the_cri_keys() -> None:
    """H8 F2 (CVE-2024-3154 class): a CRI annotation naming another pod's shim group must not
    move the container there; with no allow-list no user annotation reaches the spec at all."""
    from moorage.services.runtime.shim import group_of

    pod = PodConfig(PodMetadata("web", "uid1", "default"), annotations=HOSTILE)
    cfg = _cfg(annotations=HOSTILE)
    spec = _spec(cfg, pod=pod)
    notes = spec["annotations"]
    assert group_of(notes, "c1") == "p1"
    assert notes[GROUP] == "p1" and notes["io.kubernetes.cri.sandbox-id"] == "p1"
    assert notes["io.kubernetes.cri.container-type"] == "container"
    assert not (set(HOSTILE) - {GROUP, "io.kubernetes.cri.sandbox-id", "io.kubernetes.cri.container-type"}) & set(notes)
    pause = _pause(pod)["annotations"]
    assert pause[GROUP] == "p1" and pause["io.kubernetes.cri.container-type"] == "sandbox"
    assert "example.com/ok" not in pause and "other" not in pause
    # allow everything: what is allowed passes, the group and the CRI's keys still win
    wide = ocispec.container_spec("k8s.io", "c1", "p1", pod, cfg, IMAGE, "img", INFO, 4242, cgroup="/k/c1",
                                  clamp=ocispec.OomClamp(True, 0), allow_privileged=False,
                                  pod_annotations=("*",), container_annotations=("*", "*/*", "*/*/*"))["annotations"]
    assert group_of(wide, "c1") == "p1" and wide[GROUP] == "p1"
    assert wide["io.kubernetes.cri.sandbox-id"] == "p1" and wide["io.kubernetes.cri.container-type"] == "container"
    assert wide["org.systemd.property.CPUQuota"] == "1%" and wide["example.com/deep/no"] == "2"
    pause = _pause(pod, pod_annotations=("*",))["annotations"]
    assert pause[GROUP] == "p1" and pause["io.kubernetes.cri.sandbox-id"] == "p1" and pause["other"] == "3"


def test_annotation_allow_lists_match_like_containerd() -> None:
    """Go path.Match on the key: `*` does not cross `/`; pod annotations reach the pause and
    the containers, container annotations only their container."""
    pod = PodConfig(PodMetadata("web", "uid1", "default"), annotations={"example.com/ok": "pod", "pod.x": "1"})
    cfg = _cfg(annotations={"example.com/ok": "ctr", "example.com/deep/no": "2", "ctr.y": "1", "other": "3"})
    notes = ocispec.container_spec("k8s.io", "c1", "p1", pod, cfg, IMAGE, "img", INFO, 4242, cgroup="/k/c1",
                                   clamp=ocispec.OomClamp(True, 0), allow_privileged=False,
                                   pod_annotations=("pod.*",),
                                   container_annotations=("example.com/*", "ctr.?"))["annotations"]
    assert {k: notes[k] for k in notes if not k.startswith(("io.kubernetes.cri.", "io.containerd."))} == {
        "pod.x": "1", "example.com/ok": "ctr", "ctr.y": "1"}
    assert ocispec.passthrough_annotations({"a/b": "1", "ab": "2", "a[": "3"}, ("a?", "a\\[")) == {"ab": "2", "a[": "3"}


def test_annotation_allow_lists_in_the_config() -> None:
    from moorage.services.cri.config import CriConfig

    cfg = CriConfig(pod_annotations={"": ("io.example.*",)}, container_annotations={"runc": ("example.com/*",)})
    assert cfg.pod_annotations[""] == ("io.example.*",)
    assert CriConfig().pod_annotations == {} and CriConfig().container_annotations == {}
    with pytest.raises(ValueError, match="no runtime handler 'kata'"):
        CriConfig(container_annotations={"kata": ("x",)})
    with pytest.raises(ValueError, match=r"pod_annotations.runc: bad annotation pattern '\['"):
        CriConfig(pod_annotations={"runc": ("[",)})
