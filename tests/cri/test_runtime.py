"""The CRI RuntimeService end to end through the proxy's gRPC door, with real networking:
a pod with two containers, ExecSync, the CRI log file, the pod's IP reachable from the
host, everything stopped and removed with nothing left behind; then the errors kubelet
expects for bad input, and the CRI's idempotence rules."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from moorage.api.k8s.cri.v1 import api_pb2 as api

from .conftest import CriSuite, wait_until

pytestmark = pytest.mark.root

LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d) (stdout|stderr) [PF] .*$")
BUSYBOX = "/bin/busybox"


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined, no-any-return]


def _details(exc: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return str(exc.value.details())  # type: ignore[attr-defined]


def test_version_status_and_runtime_config(cri: CriSuite) -> None:
    v = cri.rt("Version", api.VersionRequest())
    assert v.runtime_name == "moorage" and v.runtime_api_version == "v1" and v.version
    conds = {c.type: c.status for c in cri.rt("Status", api.StatusRequest()).status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}
    assert [h.name for h in cri.rt("Status", api.StatusRequest()).runtime_handlers] == ["", "runc"]
    rc = cri.rt("RuntimeConfig", api.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == api.CGROUPFS


def test_pod_lifecycle_end_to_end(pods: CriSuite) -> None:
    cri = pods
    cfg = cri.pod_config("web", dns_config=api.DNSConfig(servers=["10.96.0.10"], searches=["svc.local"],
                                                           options=["ndots:5"]))
    pod_id, cfg = cri.run_pod("web", cfg)
    st = cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert st.state == api.SANDBOX_READY
    assert st.metadata.name == "web" and st.labels["app"] == "web" and st.annotations["note"] == "cri-test"
    ip = st.network.ip
    prefix = cri.net.subnet.rsplit(".", 1)[0] + "."
    assert ip.startswith(prefix), (ip, cri.net.subnet)
    assert [p.id for p in cri.rt("ListPodSandbox", api.ListPodSandboxRequest(
        filter=api.PodSandboxFilter(label_selector={"app": "web"}))).items] == [pod_id]

    image_id = cri.pull(cri.images.busybox)
    web = cri.create(pod_id, cfg, cri.container_config(
        "httpd", cri.images.busybox, BUSYBOX, "sh", "-c",
        f"echo hello; echo oops >&2; exec {BUSYBOX} httpd -f -p 8080 -h /etc"))
    idle = cri.create(pod_id, cfg, cri.container_config("idle", image_id, BUSYBOX, "sleep", "1000",
                                                        envs=[api.KeyValue(key="GREETING", value=b"hi")]))
    assert cri.status(web).state == api.CONTAINER_CREATED
    for c in (web, idle):
        cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    st_web = cri.status(web)
    assert st_web.state == api.CONTAINER_RUNNING and st_web.image_id == image_id and st_web.started_at > 0
    repo = cri.images.busybox.rsplit(":", 1)[0]
    assert st_web.image.image == cri.images.busybox and st_web.image_ref.startswith(repo + "@sha256:")
    assert st_web.log_path == str(Path(cfg.log_directory) / "httpd/0.log")

    # ExecSync: output, exit code, the pod's hostname, DNS config and environment
    r = cri.exec_sync(idle, BUSYBOX, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
    assert cri.exec_sync(idle, BUSYBOX, "hostname").stdout == b"web\n"
    resolv = cri.exec_sync(idle, BUSYBOX, "cat", "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.96.0.10" in resolv and "search svc.local" in resolv
    assert b"GREETING=hi" in cri.exec_sync(idle, BUSYBOX, "env").stdout
    # the two containers share the pod's network namespace: idle reaches httpd on localhost
    got = cri.exec_sync(idle, BUSYBOX, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/moorage-cri")
    assert got.stdout == b"cri\n", got

    # the CRI log file kubelet asked for
    log = Path(st_web.log_path)
    lines = wait_until(lambda: log.exists() and len(log.read_bytes().splitlines()) >= 2 and log.read_bytes().splitlines(),
                       what="two log lines")
    assert all(LOG_LINE.match(ln) for ln in lines), lines
    assert {ln.split(b" ", 1)[1] for ln in lines} >= {b"stdout F hello", b"stderr F oops"}

    # the pod's IP answers from the host
    with urllib.request.urlopen(f"http://{ip}:8080/moorage-cri", timeout=10) as resp:
        assert resp.read() == b"cri\n"

    listed = cri.rt("ListContainers", api.ListContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=pod_id)))
    assert {c.id for c in listed.containers} == {web, idle}
    stats = cri.rt("ListContainerStats", api.ListContainerStatsRequest(
        filter=api.ContainerStatsFilter(pod_sandbox_id=pod_id))).stats
    assert {s.attributes.id for s in stats} == {web, idle}
    assert all(s.cpu.timestamp > 0 and s.memory.timestamp > 0 and s.memory.working_set_bytes.value > 0
               for s in stats)
    cri.exec_sync(idle, BUSYBOX, "dd", "if=/dev/zero", "of=/blob", "bs=1024", "count=512")
    one = cri.rt("ContainerStats", api.ContainerStatsRequest(container_id=idle)).stats
    assert one.writable_layer.used_bytes.value >= 512 * 1024 and one.writable_layer.inodes_used.value >= 1

    # the numbers are the shim's (Tasks.Metrics, as `moor stats` shows them): CPU burnt by an
    # exec shows up, and the idle container then reads as its shim measures it
    cri.exec_sync(idle, BUSYBOX, "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
    two = cri.rt("ContainerStats", api.ContainerStatsRequest(container_id=idle)).stats
    cpu, mem = two.cpu.usage_core_nano_seconds.value, two.memory
    assert cpu >= one.cpu.usage_core_nano_seconds.value + 50_000_000, (one.cpu, two.cpu)
    assert mem.usage_bytes.value >= mem.working_set_bytes.value > 0 and mem.rss_bytes.value > 0
    assert mem.page_faults.value > 0
    (shim,) = json.loads(cri.suite.moor("-n", "k8s.io", "--json", "stats", idle).stdout)
    assert 0 <= shim["cpu_ns"] - cpu < 50_000_000, (shim, two.cpu)
    assert shim["memory"] > 0 and abs(shim["memory"] - mem.usage_bytes.value) < 4 << 20, (shim, mem)

    # stop the container (SIGTERM: httpd shares the pod's PID namespace, so it is not pid 1) and the pod
    cri.rt("StopContainer", api.StopContainerRequest(container_id=web, timeout=30))
    st_web = cri.status(web)
    assert st_web.state == api.CONTAINER_EXITED and st_web.exit_code == 143 and st_web.finished_at > 0
    assert st_web.reason == "Error"
    cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert cri.status(idle).state == api.CONTAINER_EXITED
    st = cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert st.state == api.SANDBOX_NOTREADY
    cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_id))  # twice: still fine
    cri.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    assert not cri.rt("ListPodSandbox", api.ListPodSandboxRequest()).items
    assert not cri.rt("ListContainers", api.ListContainersRequest()).containers
    assert cri.net.namespaces() == [] and cri.net.allocations() == [] and cri.net.bridge_ports() == []
    assert cri.shims([pod_id, web, idle]) == []
    assert cri.mounts() == []
    state, root = cri.suite.state / "cri", cri.suite.root / "cri"
    assert list((state / "io").iterdir()) == [] and list((state / "exec").iterdir()) == []
    assert list((root / "pods").iterdir()) == [] and list((root / "containers").iterdir()) == []
    assert log.exists()  # kubelet owns the log directory


def test_container_exit_code_and_reason(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("exits")
    stubborn = cri.create(pod_id, cfg, cri.container_config(
        "stubborn", cri.images.busybox, BUSYBOX, "sh", "-c", f"trap '' TERM; echo ready; {BUSYBOX} sleep 1000 & wait"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=stubborn))
    log = Path(cri.status(stubborn).log_path)
    wait_until(lambda: log.exists() and b"ready" in log.read_bytes(), what="the trap set")
    cri.rt("StopContainer", api.StopContainerRequest(container_id=stubborn, timeout=1))  # TERM ignored: killed
    st = cri.status(stubborn)
    assert (st.state, st.exit_code, st.reason) == (api.CONTAINER_EXITED, 137, "Error")
    cri.rt("StopContainer", api.StopContainerRequest(container_id=stubborn, timeout=1))  # again: fine

    polite = cri.create(pod_id, cfg, cri.container_config(
        "polite", cri.images.busybox, BUSYBOX, "sh", "-c",
        f"trap 'exit 0' USR1; echo ready; while :; do {BUSYBOX} sleep 0.05; done", stop_signal=api.SIGNAL_SIGUSR1))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=polite))
    log = Path(cri.status(polite).log_path)
    wait_until(lambda: log.exists() and b"ready" in log.read_bytes(), what="the trap set")
    cri.rt("StopContainer", api.StopContainerRequest(container_id=polite, timeout=60))  # its stop signal
    st = cri.status(polite)
    assert (st.state, st.exit_code, st.reason) == (api.CONTAINER_EXITED, 0, "Completed")
    c = cri.create(pod_id, cfg, cri.container_config("fail", cri.images.busybox, BUSYBOX, "sh", "-c", "exit 7"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    st = wait_until(lambda: (s := cri.status(c)).state == api.CONTAINER_EXITED and s, what="exit")
    assert (st.exit_code, st.reason) == (7, "Error")
    cri.rt("RemoveContainer", api.RemoveContainerRequest(container_id=c))
    with pytest.raises(grpc.RpcError) as exc:
        cri.status(c)
    assert _code(exc) == grpc.StatusCode.NOT_FOUND


def test_bad_input_and_idempotence(pods: CriSuite) -> None:
    cri = pods
    unknown = "0" * 64
    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=unknown))
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("CreateContainer", api.CreateContainerRequest(
            pod_sandbox_id=unknown, config=cri.container_config("x", cri.images.busybox, BUSYBOX, "true")))
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    # stop and remove of what does not exist are not errors (the CRI's idempotence rule)
    cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=unknown))
    cri.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=unknown))
    cri.rt("StopContainer", api.StopContainerRequest(container_id=unknown, timeout=1))
    cri.rt("RemoveContainer", api.RemoveContainerRequest(container_id=unknown))

    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("RunPodSandbox", api.RunPodSandboxRequest(config=cri.pod_config("h"), runtime_handler="nope"))
    assert _code(exc) == grpc.StatusCode.NOT_FOUND and "nope" in _details(exc)

    pod_id, cfg = cri.run_pod("dup")
    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("RunPodSandbox", api.RunPodSandboxRequest(config=cfg))
    assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS
    assert f'is reserved for "{pod_id}"' in _details(exc)

    missing = cri.images.busybox.rsplit(":", 1)[0] + ":absent"
    with pytest.raises(grpc.RpcError) as exc:
        cri.create(pod_id, cfg, cri.container_config("nope", missing, BUSYBOX, "true"))
    assert _code(exc) == grpc.StatusCode.NOT_FOUND and "absent" in _details(exc)

    cri.pull(cri.images.busybox)
    first = cri.create(pod_id, cfg, cri.container_config("twin", cri.images.busybox, BUSYBOX, "true"))
    with pytest.raises(grpc.RpcError) as exc:
        cri.create(pod_id, cfg, cri.container_config("twin", cri.images.busybox, BUSYBOX, "true"))
    assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS and first in _details(exc)
    cri.rt("RemoveContainer", api.RemoveContainerRequest(container_id=first))
    cri.rt("RemoveContainer", api.RemoveContainerRequest(container_id=first))  # twice: fine
    cri.create(pod_id, cfg, cri.container_config("twin", cri.images.busybox, BUSYBOX, "true"))  # name released

    sc = api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
        run_as_group=api.Int64Value(value=1000)))
    with pytest.raises(grpc.RpcError) as exc:
        cri.create(pod_id, cfg, cri.container_config("group", cri.images.busybox, BUSYBOX, "true", linux=sc))
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT and "without user" in _details(exc)

    priv = api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(privileged=True))
    with pytest.raises(grpc.RpcError) as exc:
        cri.create(pod_id, cfg, cri.container_config("priv", cri.images.busybox, BUSYBOX, "true", linux=priv))
    assert _code(exc) == grpc.StatusCode.PERMISSION_DENIED


def test_exec_sync_timeout_kills_the_process(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("slow")
    c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    with pytest.raises(grpc.RpcError) as exc:
        cri.exec_sync(c, BUSYBOX, "sh", "-c", f"echo started > /mark; exec {BUSYBOX} sleep 300", timeout=3)
    assert _code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cri.exec_sync(c, BUSYBOX, "cat", "/mark").stdout == b"started\n"
    ps = cri.exec_sync(c, BUSYBOX, "ps", "-o", "args").stdout.decode()
    assert "sleep 300" not in ps, ps
    with pytest.raises(grpc.RpcError) as exc:  # no such program: the runtime's error, nothing left
        cri.exec_sync(c, "/no/such/program")
    assert "no/such/program" in _details(exc)
    assert list((cri.suite.state / "cri" / "exec").iterdir()) == []


def test_run_as_user_capabilities_and_readonly_rootfs(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("secure")
    host = cri.work / "shared"
    host.mkdir(exist_ok=True)
    (host / "note").write_text("from the host\n")
    sc = api.LinuxContainerSecurityContext(
        run_as_user=api.Int64Value(value=1234), run_as_group=api.Int64Value(value=5678), readonly_rootfs=True,
        capabilities=api.Capability(drop_capabilities=["ALL"], add_capabilities=["NET_BIND_SERVICE"]))
    c = cri.create(pod_id, cfg, cri.container_config(
        "sec", cri.images.busybox, BUSYBOX, "sleep", "1000", working_dir="/data",
        mounts=[api.Mount(container_path="/data", host_path=str(host), readonly=True)],
        devices=[api.Device(container_path="/dev/xnull", host_path="/dev/null", permissions="rw")],
        linux=api.LinuxContainerConfig(security_context=sc)))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    assert cri.exec_sync(c, BUSYBOX, "id", "-u").stdout == b"1234\n"
    assert cri.exec_sync(c, BUSYBOX, "id", "-g").stdout == b"5678\n"
    status = cri.exec_sync(c, BUSYBOX, "cat", "/proc/self/status").stdout.decode()
    cap_bnd = int(re.search(r"CapBnd:\s+([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
    assert cap_bnd == 1 << 10  # CAP_NET_BIND_SERVICE only
    assert cri.exec_sync(c, BUSYBOX, "touch", "/newfile").exit_code != 0
    assert cri.exec_sync(c, BUSYBOX, "cat", "note").stdout == b"from the host\n"  # working dir /data
    assert cri.exec_sync(c, BUSYBOX, "sh", "-c", "echo x > /dev/xnull").exit_code == 0  # a host device
    mounts = cri.exec_sync(c, BUSYBOX, "cat", "/proc/mounts").stdout.decode().splitlines()
    assert [m.split()[3].split(",")[0] for m in mounts if m.split()[1] == "/data"] == ["ro"]


def test_oom_killed_reason_and_update_resources(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("oom")
    limit = api.LinuxContainerConfig(resources=api.LinuxContainerResources(memory_limit_in_bytes=32 << 20))
    hog = cri.create(pod_id, cfg, cri.container_config(
        "hog", cri.images.busybox, BUSYBOX, "sh", "-c", f"{BUSYBOX} dd if=/dev/zero of=/dev/null bs=128M count=1",
        linux=limit))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=hog))
    st = wait_until(lambda: (s := cri.status(hog)).state == api.CONTAINER_EXITED and s, what="the OOM kill")
    assert (st.exit_code, st.reason) == (137, "OOMKilled")

    idle = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000",
                                                        linux=limit))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=idle))
    cri.rt("UpdateContainerResources", api.UpdateContainerResourcesRequest(
        container_id=idle, linux=api.LinuxContainerResources(memory_limit_in_bytes=64 << 20)))
    assert cri.status(idle).resources.linux.memory_limit_in_bytes == 64 << 20
    info = json.loads(cri.rt("ContainerStatus", api.ContainerStatusRequest(container_id=idle, verbose=True))
                      .info["info"])
    v1 = Path("/sys/fs/cgroup/memory") / info["cgroup"].lstrip("/") / "memory.limit_in_bytes"
    v2 = Path("/sys/fs/cgroup") / info["cgroup"].lstrip("/") / "memory.max"
    assert int((v1 if v1.exists() else v2).read_text()) == 64 << 20


def test_reopen_log_after_rotation_and_pod_stats(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("logs")
    c = cri.create(pod_id, cfg, cri.container_config(
        "talker", cri.images.busybox, BUSYBOX, "sh", "-c",
        f"echo first; while [ ! -f /go ]; do {BUSYBOX} sleep 0.05; done; echo second; {BUSYBOX} sleep 1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    log = Path(cri.status(c).log_path)
    wait_until(lambda: log.exists() and b"stdout F first" in log.read_bytes(), what="first line")
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    cri.rt("ReopenContainerLog", api.ReopenContainerLogRequest(container_id=c))
    cri.exec_sync(c, BUSYBOX, "touch", "/go")
    wait_until(lambda: log.exists() and b"stdout F second" in log.read_bytes(), what="second line in the new file")
    assert b"second" not in rotated.read_bytes()

    ps = cri.rt("PodSandboxStats", api.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert ps.attributes.id == pod_id and ps.attributes.metadata.name == "logs"
    assert ps.linux.cpu.timestamp > 0 and ps.linux.memory.working_set_bytes.value > 0
    assert [s.attributes.id for s in ps.linux.containers] == [c]
    listed = cri.rt("ListPodSandboxStats", api.ListPodSandboxStatsRequest(
        filter=api.PodSandboxStatsFilter(id=pod_id))).stats
    assert [s.attributes.id for s in listed] == [pod_id]

    cri.rt("StopContainer", api.StopContainerRequest(container_id=c, timeout=0))
    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("ReopenContainerLog", api.ReopenContainerLogRequest(container_id=c))
    assert _code(exc) == grpc.StatusCode.FAILED_PRECONDITION


def test_containers_survive_a_restart_of_the_cri_process(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("restart")
    c = cri.create(pod_id, cfg, cri.container_config(
        "waiter", cri.images.busybox, BUSYBOX, "sh", "-c",
        f"echo before; while [ ! -f /go ]; do {BUSYBOX} sleep 0.05; done; echo after; exit 5"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    log = Path(cri.status(c).log_path)
    wait_until(lambda: log.exists() and b"before" in log.read_bytes(), what="first line")
    cri.suite.stop("cri")
    cri.suite.start("cri")
    assert cri.status(c).state == api.CONTAINER_RUNNING
    st = cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert st.state == api.SANDBOX_READY
    cri.exec_sync(c, BUSYBOX, "touch", "/go")
    st_c = wait_until(lambda: (s := cri.status(c)).state == api.CONTAINER_EXITED and s, what="the exit")
    assert st_c.exit_code == 5
    assert b"stdout F after" in log.read_bytes()


def test_host_network_pod(pods: CriSuite) -> None:
    cri = pods
    opts = api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
        namespace_options=api.NamespaceOption(network=api.NODE)))
    pod_id, cfg = cri.run_pod("hostnet", cri.pod_config("hostnet", linux=opts))
    c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    import os

    host_netns = os.readlink("/proc/self/ns/net")
    got = cri.exec_sync(c, BUSYBOX, "readlink", "/proc/self/ns/net").stdout.decode().strip()
    assert got == host_netns
    assert cri.net.namespaces() == []


def test_host_port_mapping(pods: CriSuite) -> None:
    cri = pods
    import socket

    with socket.socket() as s:  # a free port on the host
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    cfg = cri.pod_config("ports")
    cfg.port_mappings.add(protocol=api.TCP, container_port=8080, host_port=port)
    pod_id, cfg = cri.run_pod("ports", cfg)
    c = cri.create(pod_id, cfg, cri.container_config(
        "httpd", cri.images.busybox, BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/etc"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    ip = cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
    wait_until(lambda: cri.exec_sync(c, BUSYBOX, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/moorage-cri").stdout,
               what="httpd listening")
    gateway = ip.rsplit(".", 1)[0] + ".1"  # the bridge's address: a local address of the host
    with urllib.request.urlopen(f"http://{gateway}:{port}/moorage-cri", timeout=10) as resp:
        assert resp.read() == b"cri\n"


def test_list_filters(pods: CriSuite) -> None:
    cri = pods
    a, cfg_a = cri.run_pod("fa")
    b, cfg_b = cri.run_pod("fb")
    ca = cri.create(a, cfg_a, cri.container_config("one", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cb = cri.create(b, cfg_b, cri.container_config("two", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=ca))

    def ctrs(**kw: object) -> set[str]:
        req = api.ListContainersRequest(filter=api.ContainerFilter(**kw))  # type: ignore[arg-type]
        return {c.id for c in cri.rt("ListContainers", req).containers}

    assert ctrs(pod_sandbox_id=a) == {ca} and ctrs(pod_sandbox_id=b[:12]) == {cb}
    assert ctrs(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING)) >= {ca}
    assert cb not in ctrs(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))
    assert ctrs(label_selector={"ctr": "two"}) == {cb} and ctrs(id=ca) == {ca}
    assert cri.status(ca[:16]).id == ca  # a unique prefix names the container

    cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=b))

    def pods_(**kw: object) -> set[str]:
        req = api.ListPodSandboxRequest(filter=api.PodSandboxFilter(**kw))  # type: ignore[arg-type]
        return {p.id for p in cri.rt("ListPodSandbox", req).items}

    assert pods_(state=api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY)) == {b}
    assert a in pods_(state=api.PodSandboxStateValue(state=api.SANDBOX_READY))
    assert pods_(label_selector={"app": "fa"}) == {a} and pods_(id=b) == {b}
    with pytest.raises(grpc.RpcError) as exc:
        cri.create(b, cfg_b, cri.container_config("late", cri.images.busybox, BUSYBOX, "true"))
    assert _code(exc) == grpc.StatusCode.FAILED_PRECONDITION

    # a running container is removed by force
    assert cri.status(ca).state == api.CONTAINER_RUNNING and cri.shims([a])
    cri.rt("RemoveContainer", api.RemoveContainerRequest(container_id=ca))
    assert ctrs(pod_sandbox_id=a) == set()
    with pytest.raises(grpc.RpcError) as exc:
        cri.status(ca)
    assert _code(exc) == grpc.StatusCode.NOT_FOUND


def test_failed_run_pod_sandbox_is_undone(pods: CriSuite) -> None:
    cri = pods
    bad = cri.pod_config("broken", linux=api.LinuxPodSandboxConfig(sysctls={"net.ipv4.no_such_knob": "1"}))
    before = {p.id for p in cri.rt("ListPodSandbox", api.ListPodSandboxRequest()).items}
    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("RunPodSandbox", api.RunPodSandboxRequest(config=bad))
    assert "no_such_knob" in _details(exc)
    assert {p.id for p in cri.rt("ListPodSandbox", api.ListPodSandboxRequest()).items} == before
    assert cri.net.namespaces() == [] and cri.net.allocations() == [] and cri.net.bridge_ports() == []
    del bad.linux.sysctls["net.ipv4.no_such_knob"]
    pod_id, _ = cri.run_pod("broken", bad)  # the name was released
    assert cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.state == \
        api.SANDBOX_READY


def test_localhost_seccomp_profile(pods: CriSuite) -> None:
    cri = pods
    profile = cri.work / "no-mkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    pod_id, cfg = cri.run_pod("seccomp")
    sc = api.LinuxContainerSecurityContext(seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref=str(profile)))
    c = cri.create(pod_id, cfg, cri.container_config("confined", cri.images.busybox, BUSYBOX, "sleep", "1000",
                                                     linux=api.LinuxContainerConfig(security_context=sc)))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    r = cri.exec_sync(c, BUSYBOX, "mkdir", "/newdir")
    assert r.exit_code != 0 and b"not permitted" in r.stderr.lower(), r  # SCMP_ACT_ERRNO: EPERM
    assert cri.exec_sync(c, BUSYBOX, "touch", "/newfile").exit_code == 0
    missing = api.LinuxContainerSecurityContext(seccomp=api.SecurityProfile(
        profile_type=api.SecurityProfile.Localhost, localhost_ref=str(cri.work / "absent.json")))
    with pytest.raises(grpc.RpcError) as exc:
        cri.create(pod_id, cfg, cri.container_config("bad", cri.images.busybox, BUSYBOX, "true",
                                                     linux=api.LinuxContainerConfig(security_context=missing)))
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT


def test_exec_attach_port_forward_urls(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("stream")
    c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    with pytest.raises(grpc.RpcError) as exc:  # not started yet
        cri.rt("Exec", api.ExecRequest(container_id=c, cmd=["true"], stdout=True))
    assert _code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    urls = [
        cri.rt("Exec", api.ExecRequest(container_id=c, cmd=["sh"], stdin=True, stdout=True, tty=True)).url,
        cri.rt("Attach", api.AttachRequest(container_id=c, stdout=True, stderr=True)).url,
        cri.rt("PortForward", api.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080])).url,
    ]
    assert [u.split("/")[3] for u in urls] == ["exec", "attach", "portforward"]
    assert all(u.startswith("http://127.0.0.1:") for u in urls), urls
    with pytest.raises(grpc.RpcError) as exc:
        cri.rt("Exec", api.ExecRequest(container_id=c, cmd=["sh"]))  # no stream asked for
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT


def test_nri_plugins_see_the_pod_and_container_lifecycle(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("nri", cri.pod_config("nri", labels={"app": "web"}, annotations={"note": "hi"}))
    c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    pod = f"{pod_id} default/nri"  # the pod's own name and namespace, not the sandbox id
    want = [f"RunPodSandbox {pod}/{cfg.metadata.uid}/web/hi", f"CreateContainer {pod_id} {c} default/nri/idle",
            f"StartContainer {pod_id} {c}", f"StopContainer {pod_id} {c}", f"StopPodSandbox {pod}",
            f"RemoveContainer {pod_id} {c}", f"RemovePodSandbox {pod}"]
    seen = wait_until(lambda: (e := [x for x in cri.nri_events() if x in want]) and len(e) >= len(want) and e,
                      what="every NRI event")
    assert seen == want
    assert not [e for e in cri.nri_events() if f"{pod_id} {pod_id}" in e]  # the pause is no container to plugins


def test_nri_pod_events_name_the_pod_after_a_restart_of_the_sandbox_service(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("nrikept", cri.pod_config("nrikept", labels={"app": "db"}, annotations={"note": "kept"}))
    cri.suite.kill("sandbox")  # SIGKILL: whatever the service held in memory is gone
    cri.suite.start("sandbox")
    cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    pod = f"{pod_id} default/nrikept"
    want = [f"RunPodSandbox {pod}/{cfg.metadata.uid}/db/kept", f"StopPodSandbox {pod}", f"RemovePodSandbox {pod}"]
    seen = wait_until(lambda: (e := [x for x in cri.nri_events() if x.split()[1:2] == [pod_id]]) and len(e) >= 3 and e,
                      what="the pod's NRI events")
    assert seen == want


def test_pod_cgroup_parent_and_its_stats(pods: CriSuite) -> None:
    cri = pods
    parent = f"{cri.cgroup_parent}/pod-burstable"
    pod_id, cfg = cri.run_pod("cg", cri.pod_config("cg", linux=api.LinuxPodSandboxConfig(cgroup_parent=parent)))
    c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    info = json.loads(cri.rt("ContainerStatus", api.ContainerStatusRequest(container_id=c, verbose=True)).info["info"])
    assert info["cgroup"] == f"{parent}/{c}"
    got = cri.exec_sync(c, BUSYBOX, "cat", "/proc/self/cgroup").stdout.decode()
    assert f"{parent}/{c}" in got, got
    st = cri.rt("PodSandboxStats", api.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    ctr = cri.rt("ContainerStats", api.ContainerStatsRequest(container_id=c)).stats
    assert st.linux.memory.usage_bytes.value >= ctr.memory.usage_bytes.value > 0
    assert st.linux.cpu.usage_core_nano_seconds.value >= ctr.cpu.usage_core_nano_seconds.value > 0


def test_runtime_default_seccomp(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("rtdefault")

    def container(name: str, profile: int) -> str:
        sc = api.LinuxContainerSecurityContext(seccomp=api.SecurityProfile(profile_type=profile))  # type: ignore[arg-type]
        c = cri.create(pod_id, cfg, cri.container_config(name, cri.images.busybox, BUSYBOX, "sleep", "1000",
                                                         linux=api.LinuxContainerConfig(security_context=sc)))
        cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
        return c

    def seccomp_mode(c: str) -> str:
        status = cri.exec_sync(c, BUSYBOX, "cat", "/proc/self/status").stdout.decode()
        return re.search(r"Seccomp:\s+(\d)", status).group(1)  # type: ignore[union-attr]

    assert seccomp_mode(container("confined", api.SecurityProfile.RuntimeDefault)) == "2"  # a filter
    assert seccomp_mode(container("free", api.SecurityProfile.Unconfined)) == "0"


def test_a_restart_of_the_runtime_service_keeps_cri_containers(pods: CriSuite) -> None:
    cri = pods
    pod_id, cfg = cri.run_pod("rtrestart")
    c = cri.create(pod_id, cfg, cri.container_config(
        "waiter", cri.images.busybox, BUSYBOX, "sh", "-c",
        f"while [ ! -f /go ]; do {BUSYBOX} sleep 0.05; done; echo done; exit 4"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    cri.suite.stop("runtime")
    cri.suite.start("runtime")
    assert cri.status(c).state == api.CONTAINER_RUNNING
    cri.exec_sync(c, BUSYBOX, "touch", "/go")
    st = wait_until(lambda: (s := cri.status(c)).state == api.CONTAINER_EXITED and s, what="the exit")
    assert st.exit_code == 4
    assert b"stdout F done" in Path(st.log_path).read_bytes()
    cri.rt("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert cri.shims([pod_id, c]) == []



def test_host_to_container_mount_propagation(pods: CriSuite) -> None:
    cri = pods
    host = cri.work / "propagation"
    host.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(host), str(host)], check=True)
    subprocess.run(["mount", "--make-rshared", str(host)], check=True)
    try:
        pod_id, cfg = cri.run_pod("prop")
        c = cri.create(pod_id, cfg, cri.container_config(
            "p", cri.images.busybox, BUSYBOX, "sleep", "1000",
            mounts=[api.Mount(container_path="/data", host_path=str(host),
                              propagation=api.PROPAGATION_HOST_TO_CONTAINER)]))
        cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
        (host / "later").mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(host / "later")], check=True)
        (host / "later" / "file").write_text("mounted after start\n")
        assert cri.exec_sync(c, BUSYBOX, "cat", "/data/later/file").stdout == b"mounted after start\n"
    finally:
        subprocess.run(["umount", "-R", "-l", str(host)], check=False)


def test_concurrent_pods(pods: CriSuite) -> None:
    cri = pods
    from concurrent.futures import ThreadPoolExecutor

    def one(n: int) -> tuple[str, str]:
        cfg = cri.pod_config(f"conc{n}")
        pod_id = cri.rt("RunPodSandbox", api.RunPodSandboxRequest(config=cfg, runtime_handler="runc")).pod_sandbox_id
        cri.pods.append(pod_id)
        c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
        cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
        return pod_id, c

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(one, range(4)))
    ips = {cri.rt("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=p)).status.network.ip for p, _ in made}
    assert len(ips) == 4
    assert all(cri.status(c).state == api.CONTAINER_RUNNING for _, c in made)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda pc: cri.rt("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pc[0])), made))
    assert cri.net.namespaces() == [] and cri.net.allocations() == []
    assert cri.shims([x for pc in made for x in pc]) == []


def test_a_restart_removes_what_no_record_names(pods: CriSuite) -> None:
    cri = pods

    def records() -> str:
        out = ""
        for args in (("containers", "ls"), ("sandbox", "ls")):
            r = cri.suite.moor("--namespace", "k8s.io", "--json", *args)
            assert r.returncode == 0, r
            out += r.stdout
        return out

    pod_id, cfg = cri.run_pod("orphan")
    c = cri.create(pod_id, cfg, cri.container_config("idle", cri.images.busybox, BUSYBOX, "sleep", "1000"))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))
    assert pod_id in records() and c in records()
    cri.suite.stop("cri")
    root = cri.suite.root / "cri"
    (root / "pods" / f"{pod_id}.json").unlink()  # as if the process died before recording them
    (root / "containers" / f"{c}.json").unlink()
    cri.suite.start("cri")
    wait_until(lambda: pod_id not in (r := records()) and c not in r, what="the orphans' records removed")
    assert cri.net.namespaces() == [] and cri.net.allocations() == [] and cri.shims([pod_id, c]) == []
    assert not cri.rt("ListPodSandbox", api.ListPodSandboxRequest(filter=api.PodSandboxFilter(id=pod_id))).items
