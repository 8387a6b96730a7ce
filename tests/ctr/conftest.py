"""Debian's real ``ctr`` (containerd 1.6) against a whole suite (``moorage up``), over the
gRPC front door ``<state>/moorage.sock``.

``ctr_suite``: the suite, once per session. ``ctr(*args)``: run ctr against it.
``image``: the busybox OCI archive of tests/runtime/ociimage.py, imported once with
``ctr images import`` (name :data:`IMAGE`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.ociimage import build_archive
from suite import Suite

CTR = shutil.which("ctr")
IMAGE = "docker.io/library/busybox:latest"

Ctr = Callable[..., subprocess.CompletedProcess[str]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the whole suite: interop and root, skipped without ctr or root."""
    for item in items:
        if "ctr_suite" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.interop)
            item.add_marker(pytest.mark.root)
            if CTR is None:
                item.add_marker(pytest.mark.skip(reason="ctr (containerd) is not installed"))
            elif os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root"))


@pytest.fixture(scope="session")
def ctr_suite() -> Iterator[Suite]:
    tmp = Path(tempfile.mkdtemp(prefix="moorage-ctr-", dir="/tmp"))
    # the NRI socket and plugins of the test's own, not the host's /var/run/nri, /opt/nri
    nri = {"socket_path": str(tmp / "nri" / "nri.sock"), "plugin_path": str(tmp / "nri-plugins")}
    s = Suite(tmp, config={"nri": nri})
    try:
        s.up(timeout=60)
        yield s
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def grpc_address(ctr_suite: Suite) -> str:
    return str(ctr_suite.state / "moorage.sock")


@pytest.fixture(scope="session")
def ctr(grpc_address: str) -> Ctr:
    def run(*args: str, namespace: str = "default", input: str | bytes | None = None,
            timeout: float = 60, text: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CONTAINERD_NAMESPACE"}
        assert CTR is not None
        return subprocess.run(
            [CTR, "-a", grpc_address, "-n", namespace, *args],
            input=input, capture_output=True, text=text, timeout=timeout, env=env,
        )

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a ctr run that must have succeeded (its stderr in the failure)."""
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr}{result.stdout}"
    return result.stdout


@pytest.fixture(scope="session")
def archive() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moorage-ctr-image-"))
    try:
        yield build_archive(d / "busybox.tar")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def image(ctr: Ctr, archive: Path) -> str:
    out = ok(ctr("images", "import", str(archive)))
    assert f"unpacking {IMAGE}" in out and "done" in out
    return IMAGE
