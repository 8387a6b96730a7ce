"""The Go peer (tests/interop/gopeer), built by `make gopeer` into .build/ttrpc-gopeer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ttrpc"))

GOPEER = ROOT / ".build" / "ttrpc-gopeer"


def gopeer_binary() -> Path:
    """The Go peer, built through the Makefile if it is missing or stale."""
    sources = list((ROOT / "tests" / "interop" / "gopeer").glob("*.go"))
    stale = not GOPEER.exists() or any(s.stat().st_mtime > GOPEER.stat().st_mtime for s in sources)
    if stale:
        if shutil.which("go") is None:
            pytest.skip("go is not installed (make deps installs golang-go)")
        subprocess.run(["make", "-s", "gopeer"], cwd=ROOT, check=True)
    return GOPEER


@pytest.fixture(scope="session")
def gopeer() -> Path:
    return gopeer_binary()


@pytest.fixture
def go_server(gopeer: Path, tmp_path: Path) -> Iterator[str]:
    """A Go ttrpc 1.1.1 server for moorage.test.v1.Echo; yields its socket path."""
    sock = str(tmp_path / "go.sock")
    proc = subprocess.Popen([str(gopeer), "server", "-addr", sock], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)
        if os.path.exists(sock):
            os.unlink(sock)
