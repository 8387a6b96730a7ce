"""The streaming server behind the real CRI: Exec, Attach and PortForward called through
the proxy's gRPC door of a full suite (H1's `cri` fixture: pods with CNI networking), their
URLs then used by the Go SPDY client as kubectl would. Root."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.api.k8s.cri.v1 import api_pb2 as api

from .conftest import CriSuite, wait_until
from .test_streaming import client_binary

pytestmark = [pytest.mark.root, pytest.mark.interop, pytest.mark.slow]

BB = "/bin/busybox"


def run_client(tmp: Path, mode: str, url: str, *flags: str, input: bytes = b"") -> tuple[
        dict[str, Any], bytes, bytes]:
    status = tmp / "status.json"
    p = subprocess.run([str(client_binary()), mode, *flags, "-status", str(status), url],
                       input=input, capture_output=True, timeout=60)
    assert p.returncode in (0, 3), p.stderr
    return json.loads(status.read_text()), p.stdout, p.stderr


@pytest.fixture
def pod(pods: CriSuite) -> Iterator[tuple[CriSuite, str, api.PodSandboxConfig]]:
    pod_id, cfg = pods.run_pod("streaming")
    yield pods, pod_id, cfg


def test_exec_attach_and_port_forward_through_the_cri(
        pod: tuple[CriSuite, str, api.PodSandboxConfig], tmp_path: Path) -> None:
    cri, pod_id, cfg = pod
    loop = 'while read l; do echo "got $l"; done'
    c = cri.create(pod_id, cfg, cri.container_config(
        "talk", cri.images.busybox, BB, "sh", "-c", loop, stdin=True))
    cri.rt("StartContainer", api.StartContainerRequest(container_id=c))

    url = cri.rt("Exec", api.ExecRequest(container_id=c, cmd=[BB, "sh", "-c", f"{BB} cat; exit 9"],
                                         stdin=True, stdout=True, stderr=True)).url
    doc, out, _ = run_client(tmp_path, "exec", url, "-stdin", "-stderr", input=b"via cri\n")
    st = json.loads(doc["error"])
    assert out == b"via cri\n" and st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "9"}]

    url = cri.rt("Attach", api.AttachRequest(container_id=c, stdin=True, stdout=True)).url
    server = cri.rt("Exec", api.ExecRequest(
        container_id=c, cmd=[BB, "sh", "-c", f"echo served | {BB} nc -l -p 8080"],
        stdout=True)).url
    # attach: stdin in, output back; the client leaving ends neither the container nor stdin
    proc = subprocess.Popen([str(client_binary()), "attach", "-stdin", "-status",
                             str(tmp_path / "attach.json"), url],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"got hello\n"
    proc.kill()
    proc.wait()
    assert cri.status(c).state == api.CONTAINER_RUNNING

    # port forward into the pod's network namespace (nc listens there, started by an exec)
    exec_server = subprocess.Popen([str(client_binary()), "exec", "-status",
                                    str(tmp_path / "nc.json"), server], stdout=subprocess.PIPE)
    try:
        def forwarded() -> bytes:
            u = cri.rt("PortForward", api.PortForwardRequest(pod_sandbox_id=pod_id,
                                                             port=[8080])).url
            doc, out, _ = run_client(tmp_path, "portforward", u, "-port", "8080")
            return out if not doc["error"] else b""  # refused until nc listens

        assert wait_until(forwarded, 30, "the forwarded connection") == b"served\n"
    finally:
        exec_server.kill()
        exec_server.wait()


def test_port_forward_to_a_host_network_pod(pods: CriSuite, tmp_path: Path) -> None:
    """A NODE-network pod has no namespace of its own: the forward reaches the host's
    127.0.0.1 (here a listener of this test)."""
    import socket
    import threading

    opts = api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
        namespace_options=api.NamespaceOption(network=api.NODE)))
    pod_id, _ = pods.run_pod("hostnet-pf", pods.pod_config("hostnet-pf", linux=opts))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        c, _ = srv.accept()
        c.sendall(b"from the host\n")
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        url = pods.rt("PortForward", api.PortForwardRequest(pod_sandbox_id=pod_id,
                                                            port=[port])).url
        doc, out, _ = run_client(tmp_path, "portforward", url, "-port", str(port))
        assert doc["error"] == "" and out == b"from the host\n"
    finally:
        srv.close()
