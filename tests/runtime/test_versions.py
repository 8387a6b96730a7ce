"""The OCI runtime version policy (reliability.md §1e): `--version` judged against breakouts.

The host's runc is Debian 12's (1.1.5 with the CVE-2024-21626 backport, without the 2025
masked-path fixes): it runs, with a warning, unless refuse_unpatched_runtimes is set. A fake
`runc` printing an upstream 1.1.5 is refused outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.errdefs import FailedPrecondition
from moorage.services.runtime.versions import Release, RuntimePolicy, judge, oci_binary
from suite import Suite

from .helpers import TASKS, Rt

HOST_RUNC = shutil.which("runc")
HOST_OUTPUT = subprocess.run([HOST_RUNC, "--version"], capture_output=True,
                             text=True).stdout if HOST_RUNC else ""
DEBIAN_12_RUNC = "commit: 1.1.5+ds1-1+deb12u" in HOST_OUTPUT
needs_debian_runc = pytest.mark.skipif(not DEBIAN_12_RUNC,
                                       reason="needs Debian 12's runc 1.1.5+ds1-1+deb12uN")
UNPATCHED = ("CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881")


def fake_runc(folder: Path, version: str, commit: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "runc"
    lines = [f"runc version {version}"] + ([f"commit: {commit}"] if commit else [])
    path.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines) + "exit 0\n")
    path.chmod(0o755)
    return path


# ---- parsing and judging ---------------------------------------------------------------

@pytest.mark.parametrize("output, refused, unpatched", [
    ("runc version 1.1.5\ncommit: v1.1.5-0-gf19387a6\n", ["CVE-2024-21626"], UNPATCHED),
    ("runc version 1.1.11\n", ["CVE-2024-21626"], UNPATCHED),
    ("runc version 1.1.12\ncommit: v1.1.12-0-g51d5e946\n", [], UNPATCHED),
    ("runc version 1.2.7\n", [], UNPATCHED),
    ("runc version 1.2.8\n", [], ()),
    ("runc version 1.3.2\n", [], UNPATCHED),
    ("runc version 1.3.3\n", [], ()),
    ("runc version 1.4.0-rc.2\n", [], UNPATCHED),
    ("runc version 1.4.0-rc.3\n", [], ()),
    ("runc version 1.4.0\n", [], ()),
    ("runc version 1.6.0\n", [], ()),
    ("runc version 1.0.0-rc92\n", ["CVE-2021-30465"], UNPATCHED),  # before 21626's leak
    ("runc version 1.0.0-rc95\n", ["CVE-2024-21626"], UNPATCHED),
    # Debian: the package version as the commit; deb12u1 and later carry CVE-2024-21626
    ("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n", [], UNPATCHED),
    ("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u3\n", [], UNPATCHED),
    ("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1\n", ["CVE-2024-21626"], UNPATCHED),
    # a build string that does not belong to the printed version proves nothing
    ("runc version 1.1.5\ncommit: 1.1.5+ds1-1+deb12u1\n", ["CVE-2024-21626"], UNPATCHED),
    ("crun version 1.8.1\ncommit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\n", [],
     ("CVE-2026-88264", "CVE-2026-88265")),
    ("crun version 0.10.4\n", ["CVE-2019-18837"], ("CVE-2026-88264", "CVE-2026-88265")),
    ("crun version 1.30\n", [], ()),
    ("youki version 0.3.3\n", [], ()),
    ("", [], ()),
])
def test_judge(output: str, refused: list[str], unpatched: tuple[str, ...]) -> None:
    v = judge("/bin/x", output)
    assert [a.cve for a in v.refused] == refused
    assert tuple(a.cve for a in v.unpatched) == tuple(unpatched)
    assert bool(v.refusal(False)) == bool(refused)
    assert bool(v.refusal(True)) == bool(refused or unpatched)


def test_release_order() -> None:
    order = ["0.10.5", "1.0.0-rc3", "1.0.0-rc93", "1.0.0", "1.1.12", "1.4.0-rc.2", "1.4.0-rc.3",
             "1.4.0", "1.8.1", "1.29.1", "1.30"]
    parsed = [Release.parse(v) for v in order]
    assert all(p is not None for p in parsed)
    assert sorted(parsed) == parsed  # type: ignore[type-var]
    assert Release.parse("1.1.5+ds1") == Release.parse("1.1.5")
    assert Release.parse("not-a-version") is None


def test_refusal_names_binary_version_and_cve() -> None:
    v = judge("/opt/runc", "runc version 1.1.5\ncommit: v1.1.5-0-gf19387a6\n")
    msg = v.refusal(False)
    assert "/opt/runc" in msg and "runc 1.1.5" in msg and "CVE-2024-21626" in msg
    assert "1.1.12" in msg


def test_oci_binary() -> None:
    from moorage.api.containerd.types.runc.options import oci_pb2
    from moorage.services.runtime.contract import AnyValue

    opts = AnyValue("containerd.runc.v1.Options",
                    oci_pb2.Options(binary_name="/usr/bin/crun").SerializeToString())
    assert oci_binary("io.containerd.runc.v2", None) == "runc"
    assert oci_binary("io.containerd.runc.v2", opts) == "/usr/bin/crun"
    assert oci_binary("/usr/bin/containerd-shim-runc-v2", opts) == "/usr/bin/crun"
    assert oci_binary("io.containerd.runsc.v1", opts) is None


@needs_debian_runc
def test_host_runc_is_unpatched_not_refused() -> None:
    v = judge(HOST_RUNC or "runc", HOST_OUTPUT)
    assert v.backported == ("CVE-2024-21626",)
    assert not v.refused and tuple(a.cve for a in v.unpatched) == UNPATCHED
    assert "1.1.5+ds1-1+deb12u" in v.note()


def test_policy_runs_the_binary_once_and_again_when_it_changes(tmp_path: Path) -> None:
    runc = fake_runc(tmp_path / "bin", "1.1.5")
    policy = RuntimePolicy(logging.getLogger("test"))

    async def go() -> None:
        with pytest.raises(FailedPrecondition, match="CVE-2024-21626"):
            await policy.check(str(runc))
        runc.unlink()
        fake_runc(tmp_path / "bin", "1.2.8")  # an upgrade: another file
        await policy.check(str(runc))
        assert policy.notes() == []
        os.utime(runc, ns=(time.time_ns(), time.time_ns() + 10**9))
        runc.write_text(runc.read_text().replace("1.2.8", "1.2.7"))
        with pytest.raises(FailedPrecondition):
            await RuntimePolicy(logging.getLogger("t"), refuse_unpatched=True).check(str(runc))
        await policy.check(str(runc))  # unpatched: allowed, noted
        assert len(policy.notes()) == 1 and "CVE-2025-31133" in policy.notes()[0]
        assert await policy.verdict(str(tmp_path / "missing")) is None

    asyncio.run(go())


# ---- through the runtime ---------------------------------------------------------------

@pytest.fixture
def ns() -> str:
    return "t" + secrets.token_hex(4)


@contextlib.contextmanager
def runtime(tmp_path: Path, ns: str, path_first: Path | None = None,
            **settings: object) -> Iterator[tuple[Suite, Rt]]:
    """The proxy and the runtime (``[runtime]`` = ``settings``), ``path_first`` first on its
    PATH, and a client in namespace ``ns``."""
    s = Suite(tmp_path / "s", config={"runtime": settings} if settings else None)
    if path_first is not None:
        s.extra_env["PATH"] = f"{path_first}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        s.start("proxy")
        s.start("runtime")
        api = Rt(s.address, ns)
        try:
            yield s, api
        finally:
            api.cleanup()
            api.close()
    finally:
        s.close()


def _wait_log(s: Suite, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = s.procs["runtime"].output()
        if needle in out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


@pytest.mark.root
def test_old_runc_refused(tmp_path: Path, ns: str, rootfs: Path) -> None:
    """A fake upstream runc 1.1.5 first on the runtime's PATH: judged at start, refused."""
    runc = fake_runc(tmp_path / "fakebin", "1.1.5", "v1.1.5-0-gf19387a6")
    with runtime(tmp_path, ns, runc.parent) as (s, api):
        assert "tasks refused" in _wait_log(s, "tasks refused")  # before any task
        api.container("c1", ["true"])
        with pytest.raises(FailedPrecondition) as e:
            api.create("c1", rootfs)
        msg = str(e.value)
        assert str(runc) in msg and "runc 1.1.5" in msg and "CVE-2024-21626" in msg
        listed = api.call(TASKS, "List", tpb.ListTasksRequest(), tpb.ListTasksResponse)
        assert not listed.tasks  # nothing was started


@pytest.mark.root
def test_old_runc_by_binary_name_refused(tmp_path: Path, ns: str, rootfs: Path) -> None:
    """A binary first used by a container's options is judged then."""
    runc = fake_runc(tmp_path / "other", "1.1.11")
    with runtime(tmp_path, ns) as (s, api):
        api.container("c1", ["true"], binary_name=str(runc))
        with pytest.raises(FailedPrecondition, match="CVE-2024-21626"):
            api.create("c1", rootfs)


@pytest.mark.root
@needs_debian_runc
def test_host_runc_runs_with_a_warning(tmp_path: Path, ns: str, rootfs: Path) -> None:
    with runtime(tmp_path, ns) as (s, api):
        api.run("c1", rootfs, ["true"])
        assert api.wait("c1") == 0
        api.delete("c1")
        out = _wait_log(s, "CVE-2025-52881")
        listed = s.moor("services")
    # the runtime stays healthy, with the note where operators look
    row = next(line for line in listed.stdout.splitlines() if ".tasks.v1.Tasks" in line)
    assert " ok [" in row and str(HOST_RUNC) in row and all(c in row for c in UNPATCHED), row
    warning = next(line for line in out.splitlines() if "CVE-2025-31133" in line)
    assert "WARNING" in warning and str(HOST_RUNC) in warning
    assert "1.1.5+ds1-1+deb12u" in warning and all(c in warning for c in UNPATCHED)
    assert "refuse_unpatched_runtimes" in warning


@pytest.mark.root
@needs_debian_runc
def test_host_runc_refused_when_configured(tmp_path: Path, ns: str, rootfs: Path) -> None:
    with runtime(tmp_path, ns, refuse_unpatched_runtimes=True) as (s, api):
        api.container("c1", ["true"])
        with pytest.raises(FailedPrecondition) as e:
            api.create("c1", rootfs)
    msg = str(e.value)
    assert str(HOST_RUNC) in msg and "1.1.5+ds1" in msg
    assert all(c in msg for c in UNPATCHED) and "CVE-2024-21626" not in msg


def test_config_default_lists_the_key(tmp_path: Path) -> None:
    out = Suite(tmp_path).run("config", "default")
    assert out.returncode == 0, out.stderr
    section = out.stdout.split("[runtime]", 1)[1].split("\n[", 1)[0]
    assert "refuse_unpatched_runtimes = false" in section


def test_close_cancels_a_probe_and_kills_its_process(tmp_path: Path) -> None:
    """A runtime that stops while a ``--version`` probe runs leaves no task and no process."""
    pidfile = tmp_path / "pid"
    slow = tmp_path / "bin" / "runc"
    slow.parent.mkdir()
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    slow.chmod(0o755)
    policy = RuntimePolicy(logging.getLogger("test"))

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"
        except FileNotFoundError:
            return True

    async def go() -> None:
        probe = asyncio.ensure_future(policy.verdict(str(slow)))
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text().strip()):  # the probe runs
            assert time.monotonic() < deadline and not probe.done()
            await asyncio.sleep(0.01)
        pid = int(pidfile.read_text())
        policy.close()
        with pytest.raises(asyncio.CancelledError):
            await probe
        while not gone(pid):
            assert time.monotonic() < deadline, "the probe's process lives on"
            await asyncio.sleep(0.01)

    asyncio.run(go())
