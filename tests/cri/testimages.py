"""The images the CRI tests and bench/cri.py pull from a local registry (no network).

- ``pause``: our own static pause (tests/cri/pause.c, built with gcc), entrypoint
  ``/pause``, user ``65535:65535`` like Kubernetes' pause; pushed as ``<reg>/pause:3.9``.
- ``busybox``: busybox-static (tests/transfer/registry.build_image), ``/bin/sh``; pushed
  as ``<reg>/busybox:latest``, and with a config user: ``<reg>/busybox:uid`` (``1000:1000``)
  and ``<reg>/busybox:user`` (``nobody``).

    images = push_test_images(registry, workdir)   # a TestImages of references
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from transfer import registry as regfix

HERE = Path(__file__).resolve().parent
PAUSE_SOURCE = HERE / "pause.c"
PAUSE_TAG = "3.9"
PAUSE_USER = "65535:65535"


def _run(*args: object) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def _host_arch() -> str:
    from moorage.services.transfer.oci import host_platform

    return str(host_platform().architecture)


def compile_pause(out: Path) -> Path:
    """gcc -static the pause program into ``out``."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc) to build the pause image")
    _run(cc, "-static", "-Os", "-s", "-o", out, PAUSE_SOURCE)
    return out


def build_pause(workdir: Path) -> Path:
    """An OCI layout at ``workdir/layout`` holding the pause image (tag ``3.9``)."""
    layout, bundle = workdir / "layout", workdir / "bundle"
    for d in (layout, bundle):
        if d.exists():
            shutil.rmtree(d)
    workdir.mkdir(parents=True, exist_ok=True)
    binary = compile_pause(workdir / "pause")
    ref = f"{layout}:{PAUSE_TAG}"
    _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", ref)
    _run("umoci", "config", "--image", ref, "--config.entrypoint", "/pause", "--config.user", PAUSE_USER,
         "--config.workingdir", "/", "--os", "linux", "--architecture", _host_arch())
    _run("umoci", "unpack", "--image", ref, bundle)
    shutil.copy(binary, bundle / "rootfs" / "pause")
    (bundle / "rootfs" / "pause").chmod(0o755)
    _run("umoci", "repack", "--image", ref, bundle)
    shutil.rmtree(bundle)
    _run("umoci", "gc", "--layout", layout)
    return layout


def build_busybox(workdir: Path) -> Path:
    """busybox layout with tags ``latest``, ``uid`` (user 1000:1000), ``user`` (nobody)."""
    layout = regfix.build_image(workdir, [{"etc/moorage-cri": b"cri\n"}])
    for tag, user in (("uid", "1000:1000"), ("user", "nobody")):
        _run("umoci", "config", "--image", f"{layout}:latest", "--config.user", user, "--tag", tag)
    return layout


@dataclass(frozen=True)
class TestImages:
    """References (``127.0.0.1:PORT/...``) of the pushed images."""

    pause: str
    busybox: str
    busybox_uid: str
    busybox_user: str

    __test__ = False


def push_test_images(reg: regfix.Registry, workdir: Path) -> TestImages:
    """Build and push every test image to ``reg``."""
    pause = regfix.push(build_pause(workdir / "pause"), reg, "pause", tag=PAUSE_TAG, src_tag=PAUSE_TAG)
    box = build_busybox(workdir / "busybox")
    return TestImages(
        pause=pause,
        busybox=regfix.push(box, reg, "busybox"),
        busybox_uid=regfix.push(box, reg, "busybox", tag="uid", src_tag="uid"),
        busybox_user=regfix.push(box, reg, "busybox", tag="user", src_tag="user"),
    )
