"""moor: fast start (no asyncio), usage errors, exit codes scripts can rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.cli.context import EXIT, exit_code


def moor(*args: str, address: str = "/nonexistent/moorage.sock") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moorage.cli.main", "--address", address, *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "argv", [["version"], ["services"], ["namespaces", "ls"], ["events"], ["--json", "services"]]
)
def test_moor_never_imports_asyncio(argv: list[str], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "moorage.cli.main", "--address", str(tmp_path / "none"), *argv],
        capture_output=True, text=True, timeout=60,
    )
    modules = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "ttrpc.blocking" in modules
    assert not {m for m in modules if m.split(".")[0] in ("asyncio", "uvloop")}
    assert out.returncode == EXIT["unavailable"]


def test_suite_not_running_is_exit_7_with_a_hint() -> None:
    out = moor("services")
    assert out.returncode == 7
    assert out.stderr.startswith("moor: cannot reach moorage at /nonexistent/moorage.sock")


@pytest.mark.parametrize(
    "argv",
    [[], ["nosuchcommand"], ["--namespace"], ["--bogus", "services"], ["namespaces", "frobnicate"]],
)
def test_usage_errors_are_exit_2(argv: list[str]) -> None:
    out = moor(*argv)
    if argv[:1] == ["namespaces"]:
        assert out.returncode in (EXIT["usage"], EXIT["unavailable"])
    else:
        assert out.returncode == EXIT["usage"], out.stderr


def test_help_is_exit_0() -> None:
    out = moor("--help")
    assert out.returncode == 0 and "services" in out.stdout


def test_exit_codes_by_kind() -> None:
    assert exit_code(errdefs.NotFound("x")) == 3
    assert exit_code(errdefs.AlreadyExists("x")) == 4
    assert exit_code(errdefs.InvalidArgument("x")) == 5
    assert exit_code(errdefs.Conflict("x")) == 6
    assert exit_code(errdefs.Unavailable("x")) == 7
    assert exit_code(errdefs.NotImplemented("x")) == 10
    assert exit_code(RuntimeError("x")) == 1
