"""A regular install has the proxy's C relay: the wheel pip builds (offline) from the
project's sdist holds ``moorage.proxy._relay``, compiled by setup.py's ``cffi_modules``, and
the proxy installed from that wheel loads it. Without a C compiler the wheel is built all the
same, without the relay (the proxy's splice serves alone)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".build", ".layout", "build", "tests", "bench", "*.egg-info", "__pycache__",
    ".mypy_cache", ".pytest_cache", ".hypothesis", "_relay*.so")
PROBE = """\
import importlib
from moorage.proxy import relay
print(relay.available(), relay.__file__, importlib.import_module("moorage.proxy._relay").__file__)
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def build_wheel(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[Path, list[str]]:
    """An sdist of the project, then a wheel from it, offline: the wheel and its names."""
    src = tmp_path / "src"
    shutil.copytree(TOP, src, ignore=NOT_SOURCE)
    dist = tmp_path / "dist"
    run(sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})", cwd=src)
    (sdist,) = dist.glob("moorage-*.tar.gz")  # the C sources and relay.h with it
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", wheels, sdist, cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("moorage-*.whl")
    return wheel, zipfile.ZipFile(wheel).namelist()


def relays(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("moorage/proxy/_relay") and n.endswith(".so")]


@pytest.mark.slow
def test_without_a_c_compiler_the_wheel_is_built_without_the_relay(tmp_path: Path) -> None:
    wheel, names = build_wheel(tmp_path, env={**os.environ, "CC": "/bin/false"})
    assert not relays(names)
    assert "moorage/proxy/splice.py" in names


@pytest.mark.slow
def test_the_wheel_holds_the_relay_and_its_proxy_uses_it(tmp_path: Path) -> None:
    wheel, names = build_wheel(tmp_path)
    assert relays(names), names

    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site, wheel,
        cwd=tmp_path)
    # -S: no .pth files, so not this checkout's editable install; the venv's site-packages
    # only behind the wheel's, for cffi
    libs = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *libs])}
    env.pop("MOORAGE_RELAY_EXT", None)
    available, module, ext = run(sys.executable, "-S", "-c", PROBE, env=env, cwd=tmp_path).split()
    assert available == "True"
    assert Path(module).is_relative_to(site) and Path(ext).is_relative_to(site)
