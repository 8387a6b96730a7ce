"""Fixtures for the runtime tests: a busybox rootfs directory and a running proxy + runtime."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from suite import Suite

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "echo", "true", "false", "cat", "sleep", "ls", "id", "env", "pwd", "hostname",
           "kill", "ps", "grep", "head", "wc", "stat", "mkdir", "touch", "test", "stty", "tty")
NS = "default"
MD = {"containerd-namespace-ttrpc": NS}


def make_rootfs(path: Path) -> Path:
    """A minimal rootfs: busybox-static and its applets, passwd/group with a few users."""
    for d in ("bin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "data"):
        (path / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for a in APPLETS:
        link = path / "bin" / a
        if not link.exists():
            os.symlink("busybox", link)
    (path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/:/bin/false\n")
    (path / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    return path


@pytest.fixture(scope="session")
def rootfs_template() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moorage-rootfs-"))
    try:
        yield make_rootfs(d / "rootfs")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rootfs(tmp_path: Path, rootfs_template: Path) -> Path:
    """A private copy per test (the container writes into it)."""
    dst = tmp_path / "rootfs"
    shutil.copytree(rootfs_template, dst, symlinks=True)
    return dst


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Suite]:
    """The proxy and the runtime, running under this test's tmp dir."""
    s = Suite(tmp_path)
    try:
        s.start("proxy")
        s.start("runtime")
        yield s
    finally:
        s.close()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
