"""The whole suite under `moorage up`: `moor pull` from a real registry, then `moor run`
of the pulled image (transfer -> content/snapshots -> runtime)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from . import registry as regfix

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_pull_then_run(plain_registry: regfix.Registry, layout: Path) -> None:
    suite = pytest.importorskip("suite")
    pytest.importorskip("moorage.services.runtime.process")
    ref = regfix.push(layout, plain_registry, "up/app")
    tmp = Path(tempfile.mkdtemp(prefix="moorage-up-", dir="/tmp"))
    s = suite.Suite(tmp)
    try:
        s.up()
        r = s.moor("pull", ref)
        assert r.returncode == 0, r.stderr
        r = s.moor("run", "--rm", "--name", "pulled", ref, "/bin/sh", "-c", "cat /etc/moorage/two | wc -l")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "1000"
    finally:
        s.close()
        with open("/proc/self/mounts") as f:
            for line in f:
                if str(tmp) in line.split()[1]:
                    subprocess.run(["umount", "-l", line.split()[1]], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
