"""A Kubernetes pod through the CRI: moorage vs containerd 1.6's CRI plugin, same machine,
same run, same client, same images, same CNI plugins, same runc shim.

    .venv/bin/python bench/cri.py [--runs 10] [--warmup 2] [--server-cpus 1] [--client-cpus 0]
                                  [--skip-containerd] [--skip-moorage] [--keep]

Measured per side, with a grpcio client on the side's CRI socket (what kubelet does):
- pod start: RunPodSandbox + CreateContainer (busybox, ``/bin/busybox sleep 3600``) + StartContainer;
- teardown: StopContainer (timeout 0) + RemoveContainer + StopPodSandbox + RemovePodSandbox.
Runs are interleaved, alternating which side goes first; medians are reported with their
ratio moorage / containerd (goal, issue 11: <= 1.0).

Setup, all under one temp dir and undone at the end:
- a docker-registry on loopback holding our static pause (tests/cri/pause.c) as
  ``pause:3.9`` and busybox-static as ``library/busybox:latest``; both sides reach it
  through a certs.d of hosts.toml mirrors, so the names are the real ones
  (``registry.k8s.io/pause:3.9``, ``docker.io/library/busybox:latest``) and nothing leaves
  the machine. Both images are pulled (PullImage) before timing.
- a CNI conf dir per side (bridge + host-local + portmap, loopback), its own bridge and /24.
- containerd: ``containerd`` started as a child of this bench with a private config (root,
  state and sockets under the temp dir, CRI enabled, ``restrict_oom_score_adj = true``
  because this VM lacks CAP_SYS_RESOURCE, cgroupfs runc, the mirrors via ``config_path``)
  and stopped at the end. The containerd systemd service is never touched.
- moorage: ``moorage serve`` of proxy, content, snapshots, transfer, sandbox, runtime and
  cri under the temp root; kubelet's socket is the proxy's gRPC door.
Both servers (and every process they start: shims, runc, CNI plugins) run under
``taskset -c SERVER_CPUS``; this client runs on CLIENT_CPUS. Needs root.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from bench import anchor  # noqa: E402  (bench/anchor.py: the containerd 1.6 compared against)
from cri.testimages import PAUSE_TAG, build_busybox, build_pause  # noqa: E402
from suite import Suite  # noqa: E402
from transfer import registry as regfix  # noqa: E402

CNI_BIN = "/usr/lib/cni"
PAUSE = f"registry.k8s.io/pause:{PAUSE_TAG}"
BUSYBOX = "docker.io/library/busybox:latest"
POD_NAMESPACE = "bench"

# containerd's CRI plugin section (bench/anchor.py writes the rest of its config)
CRI_CONFIG = """\
sandbox_image = "{pause}"
restrict_oom_score_adj = true
stream_server_address = "127.0.0.1"
stream_server_port = "0"
enable_selinux = false
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{certs_d}"
"""


def taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def conflist(name: str, bridge: str, subnet: str, ipam_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(ipam_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def cni_dir(base: Path, name: str, bridge: str, subnet: str) -> Path:
    conf = base / "net.d"
    conf.mkdir(parents=True)
    (base / "ipam").mkdir()
    (conf / f"10-{name}.conflist").write_text(json.dumps(conflist(name, bridge, subnet, base / "ipam")))
    return conf


def mirrors(certs_d: Path, registry: str) -> None:
    """hosts.toml for registry.k8s.io and docker.io pointing at the local registry."""
    for host, server in (("registry.k8s.io", "https://registry.k8s.io"), ("docker.io", "https://registry-1.docker.io")):
        d = certs_d / host
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text(
            f'server = "{server}"\n\n[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n')


class CriClient:
    """The CRI calls of a pod's life over a blocking grpcio channel."""

    def __init__(self, socket: Path) -> None:
        import grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        from moorage.api.k8s.cri.v1 import api_pb2

        self.pb = api_pb2
        self.recording = False
        self.timings: dict[str, list[float]] = {}

    def call(self, service: str, method: str, request: Any, response: Any, timeout: float = 120.0) -> Any:
        fn = self.channel.unary_unary(f"/runtime.v1.{service}/{method}",
                                      request_serializer=type(request).SerializeToString,
                                      response_deserializer=response.FromString)
        t = time.perf_counter()
        out = fn(request, timeout=timeout)
        if self.recording:
            self.timings.setdefault(method, []).append(time.perf_counter() - t)
        return out

    def wait_ready(self, alive: Callable[[], bool], timeout: float = 60.0) -> str:
        pb = self.pb
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = self.call("RuntimeService", "Version", pb.VersionRequest(), pb.VersionResponse, timeout=5)
                return f"{v.runtime_name} {v.runtime_version}"
            except self.grpc.RpcError:
                if not alive() or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def pull(self, ref: str) -> str:
        pb = self.pb
        r = self.call("ImageService", "PullImage", pb.PullImageRequest(image=pb.ImageSpec(image=ref)),
                      pb.PullImageResponse)
        return str(r.image_ref)

    def pod_config(self, logs: Path) -> Any:
        pb = self.pb
        uid = secrets.token_hex(8)
        log_dir = logs / uid
        log_dir.mkdir(parents=True)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"bench-{uid}", uid=uid, namespace=POD_NAMESPACE, attempt=0),
            hostname=f"bench-{uid[:8]}", log_directory=str(log_dir),
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))

    def start_pod(self, config: Any) -> tuple[str, str]:
        pb = self.pb
        pod = self.call("RuntimeService", "RunPodSandbox", pb.RunPodSandboxRequest(config=config),
                        pb.RunPodSandboxResponse).pod_sandbox_id
        ccfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="sleeper", attempt=0),
                                  image=pb.ImageSpec(image=BUSYBOX), command=["/bin/busybox", "sleep", "3600"],
                                  log_path="sleeper.log", linux=pb.LinuxContainerConfig())
        cid = self.call("RuntimeService", "CreateContainer",
                        pb.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=config),
                        pb.CreateContainerResponse).container_id
        self.call("RuntimeService", "StartContainer", pb.StartContainerRequest(container_id=cid),
                  pb.StartContainerResponse)
        return pod, cid

    def teardown(self, pod: str, cid: str) -> None:
        pb = self.pb
        self.call("RuntimeService", "StopContainer", pb.StopContainerRequest(container_id=cid, timeout=0),
                  pb.StopContainerResponse)
        self.call("RuntimeService", "RemoveContainer", pb.RemoveContainerRequest(container_id=cid),
                  pb.RemoveContainerResponse)
        self.call("RuntimeService", "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod),
                  pb.StopPodSandboxResponse)
        self.call("RuntimeService", "RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                  pb.RemovePodSandboxResponse)

    def remove_all(self) -> None:
        """Best effort: stop and remove every pod (a failed run must not leave one behind)."""
        pb = self.pb
        try:
            pods = self.call("RuntimeService", "ListPodSandbox", pb.ListPodSandboxRequest(),
                             pb.ListPodSandboxResponse, timeout=30).items
        except self.grpc.RpcError:
            return
        for pod in pods:
            for method, req, resp in (("StopPodSandbox", pb.StopPodSandboxRequest, pb.StopPodSandboxResponse),
                                      ("RemovePodSandbox", pb.RemovePodSandboxRequest, pb.RemovePodSandboxResponse)):
                try:
                    self.call("RuntimeService", method, req(pod_sandbox_id=pod.id), resp, timeout=60)
                except self.grpc.RpcError:
                    pass

    def pods_left(self) -> int:
        pb = self.pb
        return len(self.call("RuntimeService", "ListPodSandbox", pb.ListPodSandboxRequest(),
                             pb.ListPodSandboxResponse).items)

    def close(self) -> None:
        self.channel.close()


class Side:
    """One CRI server under test."""

    def output(self) -> str:
        return ""

    name = ""
    socket: Path
    alive: Callable[[], bool]

    def __init__(self, base: Path) -> None:
        self.base = base
        self.logs = base / "pods"
        self.logs.mkdir(parents=True)
        self.start_s: list[float] = []
        self.teardown_s: list[float] = []
        self.version = ""
        self.client: CriClient | None = None

    def connect(self) -> CriClient:
        self.client = CriClient(self.socket)
        self.version = self.client.wait_ready(self.alive)
        return self.client

    def once(self, record: bool) -> None:
        assert self.client is not None
        cfg = self.client.pod_config(self.logs)
        self.client.recording = record
        t0 = time.perf_counter()
        pod, cid = self.client.start_pod(cfg)
        t1 = time.perf_counter()
        self.client.teardown(pod, cid)
        t2 = time.perf_counter()
        self.client.recording = False
        if record:
            self.start_s.append(t1 - t0)
            self.teardown_s.append(t2 - t1)

    def close(self) -> None:
        if self.client is not None:
            self.client.remove_all()
            self.client.close()


class Containerd(Side):
    name = "containerd"

    def __init__(self, base: Path, cpus: str, certs_d: Path) -> None:
        super().__init__(base)
        conf_dir = cni_dir(base / "cni", "ctrd-cri-bench", "ccri0", "10.252.1.0/24")
        cri = CRI_CONFIG.format(pause=PAUSE, cni_bin=CNI_BIN, cni_conf=conf_dir, certs_d=certs_d)
        self.daemon = anchor.Containerd(base=base, wrapper=taskset(cpus), stop_timeout=30,
                                        disabled=[p for p in anchor.DISABLED if p != anchor.CRI],
                                        plugins={anchor.CRI: cri})
        self.socket = self.daemon.sock
        self.alive = self.daemon.alive
        self.daemon.start()

    def output(self) -> str:
        return self.daemon.log_tail(3000)

    def close(self) -> None:
        super().close()
        self.daemon.stop()
        subprocess.run(["ip", "link", "del", "ccri0"], capture_output=True)


class PinnedSuite(Suite):
    def __init__(self, *args: Any, cpus: str = "", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cpus = cpus

    def command(self, *args: str) -> list[str]:
        return [*taskset(self.cpus), *super().command(*args)]


class Moorage(Side):
    name = "moorage"
    PROCESSES = ("proxy", "content", "snapshots", "transfer", "sandbox", "runtime", "cri")

    def __init__(self, base: Path, cpus: str, certs_d: Path) -> None:
        super().__init__(base)
        conf_dir = cni_dir(base / "cni", "moorage-cri-bench", "mcri0", "10.252.0.0/24")
        config: dict[str, dict[str, Any]] = {
            "transfer": {"hosts_dir": str(certs_d)},
            "sandbox": {"cni_conf_dir": str(conf_dir), "cni_bin_dirs": [CNI_BIN], "netns_prefix": "mcri-"},
            "cri": {"sandbox_image": PAUSE, "cni_conf_dir": str(conf_dir)},
        }
        self.suite = PinnedSuite(base / "suite", config=config, suite={"log_level": "warning"}, cpus=cpus)
        self.socket = self.suite.state / "moorage.sock"
        try:
            for name in self.PROCESSES:
                self.suite.start(name)
        except BaseException:
            self.suite.close()
            raise
        self.alive = lambda: all(p.popen.poll() is None for p in self.suite.procs.values())

    def output(self) -> str:
        return "\n".join(f"== {n}\n{p.output()[-1500:]}" for n, p in self.suite.procs.items())

    def close(self) -> None:
        super().close()
        self.suite.close()
        subprocess.run(["ip", "link", "del", "mcri0"], capture_output=True)


def ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 1) if xs else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--server-cpus", default="1" if (os.cpu_count() or 1) > 1 else "")
    ap.add_argument("--client-cpus", default="0" if (os.cpu_count() or 1) > 1 else "")
    ap.add_argument("--skip-containerd", action="store_true")
    ap.add_argument("--skip-moorage", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) for a look after")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/cri.py needs root (pods, network namespaces, mounts)", file=sys.stderr)
        return 1
    if args.client_cpus and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})

    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-cri-", dir="/tmp"))
    result: dict[str, Any] = {"bench": "cri", "runs": args.runs, "server_cpus": args.server_cpus,
                              "client_cpus": args.client_cpus}
    sides: list[Side] = []
    errors: dict[str, str] = {}
    reg = None
    try:
        reg = regfix.start_registry(tmp / "registry", "plain")
        regfix.push(build_pause(tmp / "img-pause"), reg, "pause", tag=PAUSE_TAG, src_tag=PAUSE_TAG)
        regfix.push(build_busybox(tmp / "img-busybox"), reg, "library/busybox")
        certs_d = tmp / "certs.d"
        mirrors(certs_d, reg.host)

        makers: list[tuple[str, Callable[[], Side]]] = []
        if not args.skip_moorage:
            makers.append(("moorage", lambda: Moorage(tmp / "moorage", args.server_cpus, certs_d)))
        if not args.skip_containerd and shutil.which("containerd"):
            makers.append(("containerd", lambda: Containerd(tmp / "containerd", args.server_cpus, certs_d)))
        for name, make in makers:
            side: Side | None = None
            try:
                side = make()
                client = side.connect()
                for ref in (PAUSE, BUSYBOX):
                    client.pull(ref)
                side.once(record=False)  # the side works end to end
                sides.append(side)
            except Exception as exc:  # noqa: BLE001 - report and measure the other side
                detail = side.output() if side is not None else ""
                errors[name] = f"{type(exc).__name__}: {exc}"[-500:]
                print(f"  {name}: not measured: {type(exc).__name__}: {str(exc)[-3000:]}\n{detail[-2000:]}",
                      file=sys.stderr)
                if side is not None:
                    side.close()
        for side in sides:
            result[f"{side.name}_version"] = side.version

        failed: set[str] = set()
        for i in range(args.warmup - 1 + args.runs):
            order = sides if i % 2 == 0 else list(reversed(sides))
            for side in order:
                if side.name in failed:
                    continue
                try:
                    side.once(record=i >= args.warmup - 1)
                except Exception as exc:  # noqa: BLE001 - report it, keep measuring the other side
                    failed.add(side.name)
                    errors[side.name] = f"run {i}: {type(exc).__name__}: {exc}"[-500:]
                    print(f"  {side.name}: failed in run {i}: {str(exc)[-2000:]}\n{side.output()[-3000:]}",
                          file=sys.stderr)
        for side in sides:
            assert side.client is not None
            try:
                result[f"{side.name}_pods_left"] = side.client.pods_left()
            except Exception as exc:  # noqa: BLE001 - a side that failed may be gone
                result[f"{side.name}_pods_left"] = f"unknown: {type(exc).__name__}"
            result[f"{side.name}_pod_start_ms"] = ms(side.start_s)
            result[f"{side.name}_teardown_ms"] = ms(side.teardown_s)
            result[f"{side.name}_calls_ms"] = {m: ms(v) for m, v in side.client.timings.items()}
            if side.start_s:
                result[f"{side.name}_pod_start_min_ms"] = round(min(side.start_s) * 1000, 1)
                result[f"{side.name}_pod_start_max_ms"] = round(max(side.start_s) * 1000, 1)
    finally:
        for side in sides:
            side.close()
        if reg is not None:
            reg.stop()
        anchor.unmount_under(tmp)
        if args.keep:
            print(f"  kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if errors:
        result["not_measured"] = errors
    for what in ("pod_start", "teardown"):
        m, c = result.get(f"moorage_{what}_ms"), result.get(f"containerd_{what}_ms")
        if m and c:
            result[f"ratio_{what}"] = round(m / c, 2)
    result["loadavg_1m"] = float(open("/proc/loadavg").read().split()[0])
    ratio = result.get("ratio_pod_start")
    result["goal_ratio_le_1"] = bool(ratio is not None and ratio <= 1.0)
    for what, label in (("pod_start", "pod start (RunPodSandbox+CreateContainer+StartContainer)"),
                        ("teardown", "teardown (StopContainer+RemoveContainer+StopPodSandbox+RemovePodSandbox)")):
        m, c = result.get(f"moorage_{what}_ms"), result.get(f"containerd_{what}_ms")
        line = f"  {label}: moorage {m if m else '-'} ms, containerd {c if c else '-'} ms"
        if f"ratio_{what}" in result:
            line += f", ratio {result[f'ratio_{what}']}"
        print(line + (" (goal <= 1.0)" if what == "pod_start" else ""))
    for name in ("moorage", "containerd"):
        calls = result.get(f"{name}_calls_ms")
        if calls:
            print(f"  {name} per call (median ms): " + ", ".join(f"{m} {v}" for m, v in calls.items()))
    print(f"  medians of {args.runs} interleaved runs; servers on CPUs {args.server_cpus or 'all'}, "
          f"client on {args.client_cpus or 'all'}; load average {result['loadavg_1m']}")
    print(json.dumps(result))
    measured = [n for n in ("moorage", "containerd") if result.get(f"{n}_pod_start_ms")]
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
