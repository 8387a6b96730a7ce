"""deploy/: systemd units that `systemd-analyze verify` accepts, the supervisor template."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from moorage import registry
from moorage.config import load_suite
from moorage.daemon import programs, render_supervisor

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)


def test_one_unit_per_builtin_process() -> None:
    names = {p.name for p in UNITS.glob("*.service")}
    assert names == {f"moorage-{n}.service" for n in registry.builtin_names()}
    target = (UNITS / "moorage.target").read_text()
    for n in registry.builtin_names():
        assert f"moorage-{n}.service" in target


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_shape(unit: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / unit)
    svc = parser["Service"]
    assert svc["Type"] == "notify"
    assert svc["Restart"] == "on-failure"
    name = unit.removeprefix("moorage-").removesuffix(".service")
    assert svc["ExecStart"].split()[1:3] == ["serve", name]
    if name != "proxy":
        assert "moorage-proxy.service" in parser["Unit"]["After"]
        assert "moorage-proxy.service" not in parser["Unit"].get("Requires", "")  # outlive a proxy restart


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or SYSTEM_UNITS is None, reason="systemd not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # PID 1 is not systemd here: verify against a scratch root that holds the distro's
    # units (for default dependencies), ours, and an executable at ExecStart's path.
    assert SYSTEM_UNITS is not None
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS.iterdir():
        shutil.copy(unit, etc / unit.name)
    exe = root / "usr/local/bin/moorage"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    units = sorted(p.name for p in UNITS.iterdir())
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}", *units],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.strip() == "", out.stderr


def test_supervisor_config_has_a_program_per_replica(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[suite]\nroot = "{tmp_path}/r"\nstate = "{tmp_path}/s"\nplugins = ["skeleton.echo:PROCESS"]\n'
        "[echo]\nreplicas = 3\n[content]\nenabled = false\n"
    )
    loaded = load_suite(conf)
    progs = programs(loaded)
    assert progs[0] == ("proxy", "proxy", None)
    assert [p for p, n, _ in progs if n == "echo"] == ["echo-1", "echo-2", "echo-3"]
    assert all(n != "content" for _, n, _ in progs)
    text = render_supervisor(loaded, tmp_path / "run", tmp_path / "notify.sock")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser["supervisord"]["nodaemon"] == "true"
    for program, name, replica in progs:
        sec = parser[f"program:{program}"]
        assert sec["autorestart"] == "true"
        assert f"serve {name}" in sec["command"]
        assert ("--replica" in sec["command"]) == (replica is not None)
    assert parser["program:proxy"]["priority"] < parser["program:echo-1"]["priority"]
