"""moor's number flags that end in an integer field (a uint32 signal or timeout, an int64 size
or timeout_nano) are checked where they are parsed, before anything is sent: a value the
field cannot hold is an InvalidArgument naming the flag and the value (exit 5; the global
--timeout, read before any command, a usage error), never a wrapped one on the wire."""

from __future__ import annotations

import pytest

from moorage.cli import main as moor
from moorage.cli.context import EXIT
from services.runtime.cli import _signum

NOWHERE = "/nonexistent/moorage.sock"  # a flag that passes reaches the connect: exit 7


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = moor.main(["--address", NOWHERE, *argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "flag", "value"), [
    (["kill", "-s", "4294967305", "c"], "--signal", "4294967305"),  # was sent as 9
    (["kill", "-s", "4294967296", "c"], "--signal", "4294967296"),
    (["kill", "-s", "0", "c"], "--signal", "'0'"),
    (["kill", "--signal=SIG_DFL", "c"], "--signal", "SIG_DFL"),
    (["kill", "-s", "\u0663", "c"], "--signal", "\u0663"),  # a digit to str.isdigit, not to ctr
    (["sandbox", "stop", "--timeout", "-1", "s"], "--timeout", "-1"),  # was 4294967295 s
    (["sandbox", "stop", "--timeout", "4294967296", "s"], "--timeout", "4294967296"),
    (["content", "ingest", "--expected-size", "-1", "ref"], "--expected-size", "-1"),
    (["content", "ingest", "--expected-size=9223372036854775808", "ref"], "--expected-size", "9223372036854775808"),
    (["stop", "-t", "inf", "c"], "--time", "inf"),  # was OverflowError
    (["stop", "-t", "1e12", "c"], "--time", "1000000000000"),  # timeout_nano wrapped
    (["stop", "-t", "nan", "c"], "--time", "nan"),
])
def test_out_of_range_is_invalid_argument_before_connecting(
        capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, value: str) -> None:
    rc, err = run(capsys, *argv)
    assert rc == EXIT["invalid_argument"], err
    assert err.startswith(f"moor: {flag}: ") and value in err, err


@pytest.mark.parametrize("timeout", ["-1", "inf", "nan", "1e10", "9e9"])
def test_global_timeout_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str], timeout: str) -> None:
    rc, err = run(capsys, "--timeout", timeout, "version")
    assert rc == EXIT["usage"] and f"--timeout {timeout!r}" in err, err


@pytest.mark.parametrize("argv", [
    ["kill", "-s", "4294967295", "c"], ["kill", "-s", "1", "c"], ["kill", "-s", "rtmin", "c"],
    ["sandbox", "stop", "--timeout", "0", "s"], ["sandbox", "stop", "--timeout", "4294967295", "s"],
    ["content", "ingest", "--expected-size", "9223372036854775807", "ref"], ["stop", "-t", "-1", "c"],
    ["stop", "-t", "8999999999", "c"], ["--timeout", "0", "version"], ["--timeout", "8999999999.5", "version"]])
def test_the_ends_of_each_range_are_sent(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, err = run(capsys, *argv)
    assert rc == EXIT["unavailable"], err


def test_signals_by_name_or_number() -> None:
    assert [_signum(s) for s in ("9", "kill", "SIGTERM", "hup", "4294967295", "SigUsr1")] == [9, 9, 15, 1, (1 << 32) - 1, 10]
    assert _signum("RTMIN") == _signum("SIGRTMIN") > 31
