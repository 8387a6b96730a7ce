"""`[runtime] shim_prestart`: a shim started ahead serves the next task (root)."""

from __future__ import annotations

import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from suite import Suite

from .helpers import Rt, shims_of, wait_until

pytestmark = [pytest.mark.root]


@pytest.fixture
def prt(tmp_path: Path) -> Iterator[Suite]:
    s = Suite(tmp_path, config={"runtime": {"shim_prestart": True}})
    try:
        s.start("proxy")
        s.start("runtime")
        yield s
    finally:
        s.close()


def warm(ns: str) -> list[int]:
    import os

    out = []
    for pid in shims_of(ns):
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        if argv[argv.index(b"-id") + 1].startswith(b"shim-"):
            out.append(pid)
    return out


def test_prestarted_shim_serves_the_next_task(prt: Suite, rootfs: Path, tmp_path: Path) -> None:
    ns = "p" + secrets.token_hex(4)
    api = Rt(prt.address, ns)
    other = tmp_path / "rootfs2"
    shutil.copytree(rootfs, other, symlinks=True)
    try:
        api.run("c1", rootfs, ["true"])
        assert api.wait("c1") == 0
        api.delete("c1")
        wait_until(lambda: len(warm(ns)) == 1, what="a shim is started ahead")
        (pre,) = warm(ns)
        api.run("c2", other, ["sleep", "1000"])
        assert shims_of(ns, "c2") == []  # no `start` for c2: the pre-started shim serves it
        assert pre in shims_of(ns)
        # the runtime dies and comes back: c2 is reconnected in its pre-started shim
        prt.kill("runtime", signal.SIGKILL)
        prt.start("runtime")
        api2 = Rt(prt.address, ns)
        assert api2.get("c2").status == 2
        api2.kill("c2", signal.SIGKILL)
        assert api2.wait("c2") == 137
        api2.delete("c2")
        wait_until(lambda: pre not in shims_of(ns), what="the shim exits with its task")
        api2.remove("c2")
        api2.remove("c1")
        api2.close()
        prt.stop("runtime")  # on SIGTERM the runtime shuts its waiting shims down
        wait_until(lambda: shims_of(ns) == [], what="no shim left after the runtime stops")
    finally:
        api.close()
