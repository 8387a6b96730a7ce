"""The RuntimeService's decode and encode (protobuf <-> contract) and NetworkReady, without a suite."""

from __future__ import annotations

from pathlib import Path

from moorage.api.k8s.cri.v1 import api_pb2 as api
from moorage.services.cri import api as wire
from moorage.services.cri.contract import (
    Container,
    ContainerState,
    MountPropagation,
    NamespaceMode,
    Pod,
    PodState,
)


def test_pod_config_decoded() -> None:
    m = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="web", uid="u1", namespace="ns", attempt=2), hostname="web",
        log_directory="/var/log/pods/x", dns_config=api.DNSConfig(servers=["1.1.1.1"], options=["ndots:5"]),
        port_mappings=[api.PortMapping(protocol=api.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")],
        labels={"a": "b"}, annotations={"c": "d"},
        linux=api.LinuxPodSandboxConfig(cgroup_parent="/kubepods/pod1", sysctls={"kernel.shm_rmid_forced": "1"},
                                        security_context=api.LinuxSandboxSecurityContext(
                                            namespace_options=api.NamespaceOption(network=api.NODE, pid=api.POD),
                                            run_as_user=api.Int64Value(value=0))))
    cfg = wire.pod_config(m)
    assert cfg.metadata.reserved_name() == "web_ns_u1_2"
    assert cfg.dns is not None and cfg.dns.servers == ("1.1.1.1",) and cfg.dns.options == ("ndots:5",)
    (pm,) = cfg.port_mappings
    assert (pm.protocol, pm.container_port, pm.host_port, pm.host_ip) == ("udp", 53, 5353, "127.0.0.1")
    assert cfg.namespaces.network == NamespaceMode.NODE and cfg.namespaces.pid == NamespaceMode.POD
    assert cfg.run_as_user == 0 and cfg.run_as_group is None
    assert cfg.cgroup_parent == "/kubepods/pod1" and cfg.sysctls == {"kernel.shm_rmid_forced": "1"}
    assert wire.pod_config(api.PodSandboxConfig(metadata=m.metadata)).dns is None


def test_container_config_decoded() -> None:
    m = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="app", attempt=1), image=api.ImageSpec(image="busybox"),
        command=["sh"], args=["-c", "true"], working_dir="/w", envs=[api.KeyValue(key="A", value=b"1")],
        mounts=[api.Mount(container_path="/d", host_path="/h", readonly=True,
                          propagation=api.PROPAGATION_BIDIRECTIONAL)],
        log_path="app/1.log", stdin=True, stdin_once=True,
        linux=api.LinuxContainerConfig(
            resources=api.LinuxContainerResources(memory_limit_in_bytes=1 << 20, oom_score_adj=100),
            security_context=api.LinuxContainerSecurityContext(
                capabilities=api.Capability(add_capabilities=["NET_ADMIN"]), run_as_username="nobody",
                masked_paths=["/proc/kcore"], seccomp_profile_path="localhost//p.json")))
    c = wire.container_config(m)
    assert (c.command, c.args, c.working_dir, c.envs) == (("sh",), ("-c", "true"), "/w", (("A", "1"),))
    assert c.mounts[0].propagation == MountPropagation.BIDIRECTIONAL and c.mounts[0].readonly
    assert c.resources is not None and c.resources.memory_limit_in_bytes == 1 << 20
    sc = c.security
    assert sc.add_capabilities == ("NET_ADMIN",) and sc.run_as_username == "nobody" and sc.run_as_user is None
    assert sc.masked_paths == ("/proc/kcore",) and sc.readonly_paths is None
    assert sc.seccomp == "localhost//p.json"
    assert c.stdin and c.stdin_once and wire.container_config(api.ContainerConfig()).resources is None
    assert wire.container_config(api.ContainerConfig(stop_signal=api.SIGNAL_SIGUSR1)).stop_signal == "SIGUSR1"
    assert wire.container_config(api.ContainerConfig()).stop_signal == ""


def test_status_encoded() -> None:
    cfg = wire.container_config(api.ContainerConfig(metadata=api.ContainerMetadata(name="app"),
                                                    image=api.ImageSpec(image="busybox"), labels={"l": "v"}))
    c = Container("c1", "p1", cfg, "docker.io/library/busybox:latest", "sha256:abc", ContainerState.EXITED,
                  created_at=1, started_at=2, finished_at=3, exit_code=137, reason="OOMKilled", log_path="/l/0.log",
                  image_digest="docker.io/library/busybox@sha256:def")
    st = wire.container_status_pb(c)
    assert (st.state, st.exit_code, st.reason, st.log_path) == (api.CONTAINER_EXITED, 137, "OOMKilled", "/l/0.log")
    assert st.image_ref == "docker.io/library/busybox@sha256:def" and st.image_id == "sha256:abc"
    assert st.image.image == "docker.io/library/busybox:latest" and st.labels["l"] == "v"
    listed = wire.container_pb(c)
    assert listed.image_ref == "sha256:abc" and listed.pod_sandbox_id == "p1"
    pod = Pod("p1", wire.pod_config(api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="w", uid="u",
                                                                                          namespace="n"))),
              PodState.READY, 5, ip="10.0.0.2", additional_ips=("fd00::2",))
    ps = wire.pod_status_pb(pod)
    assert ps.network.ip == "10.0.0.2" and [i.ip for i in ps.network.additional_ips] == ["fd00::2"]
    assert ps.state == api.SANDBOX_READY and ps.metadata.name == "w"


def test_network_ready_needs_a_cni_network(tmp_path: Path) -> None:
    ok, why = wire.cni_ready(str(tmp_path))
    assert not ok and str(tmp_path) in why
    (tmp_path / "10-net.conflist").write_text("{}")
    assert wire.cni_ready(str(tmp_path)) == (True, "")
