"""``moor content ...`` against a real proxy + content suite (subprocesses, blocking client)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

suite_mod = pytest.importorskip("suite")


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = Path(__import__("tempfile").mkdtemp(prefix="moorage-", dir="/tmp"))
    from moorage.registry import builtin_names

    only_content = {n: {"enabled": False} for n in builtin_names() if n not in ("proxy", "content")}
    s = suite_mod.Suite(tmp, config=only_content)
    s.start("proxy")
    s.start("content")
    yield s
    s.close()


def moor(s: Any, *args: str, stdin: bytes | None = None, ns: str = "cli") -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "moorage.cli.main", "--address", s.address, "--namespace", ns, *args]
    return subprocess.run(cmd, env=s.env(), input=stdin, capture_output=True, timeout=60)


def test_ingest_ls_get_label_rm(s: Any) -> None:
    data = os.urandom(3 * (1 << 20) + 11)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    r = moor(s, "content", "ingest", "--expected-size", str(len(data)), "--expected-digest", d, "blob-1", stdin=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == d
    r = moor(s, "content", "get", d)
    assert r.returncode == 0 and r.stdout == data
    assert d in moor(s, "content", "ls", "-q").stdout.decode().split()
    r = moor(s, "content", "label", d, "a=1", "b=2")
    assert r.returncode == 0, r.stderr
    listed = json.loads(moor(s, "--json", "content", "ls").stdout)
    assert listed[0]["digest"] == d and listed[0]["labels"] == {"a": "1", "b": "2"}
    assert listed[0]["size"] == len(data)
    moor(s, "content", "label", d, "a=")
    assert json.loads(moor(s, "--json", "content", "ls").stdout)[0]["labels"] == {"b": "2"}
    assert moor(s, "content", "ls", "-q", ns="other").stdout == b""
    assert moor(s, "content", "rm", d).returncode == 0
    r = moor(s, "content", "get", d)
    assert r.returncode == 3 and b"not found" in r.stderr


def test_ingest_failure_then_resume_and_active(s: Any) -> None:
    data = os.urandom(2 << 20)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    r = moor(s, "content", "ingest", "--expected-size", str(len(data)), "--expected-digest", d, "res", stdin=data[: 1 << 20], ns="cli2")
    assert r.returncode == 6, r.stderr  # failed precondition: short of the declared size
    active = json.loads(moor(s, "--json", "content", "active", ns="cli2").stdout)
    assert [(a["ref"], a["offset"], a["total"]) for a in active] == [("res", 1 << 20, 2 << 20)]
    r = moor(s, "content", "ingest", "--expected-size", str(len(data)), "--expected-digest", d, "res", stdin=data, ns="cli2")
    assert r.returncode == 0, r.stderr
    assert moor(s, "content", "active", "-q", ns="cli2").stdout == b""
    r = moor(s, "content", "ingest", "--expected-digest", d, "again", stdin=data, ns="cli2")
    assert r.returncode == 4  # already exists


def test_bad_input_exit_codes(s: Any) -> None:
    assert moor(s, "content", "get", "sha256:../../x").returncode == 5
    assert moor(s, "content", "rm", "sha256:" + "A" * 64).returncode == 5
    assert moor(s, "content", "ingest", "a/../b", stdin=b"x").returncode == 5
    assert moor(s, "content", "abort", "nope").returncode == 3
    assert moor(s, "content", "bogus").returncode == 2


@pytest.mark.parametrize("argv", [["content", "ls", "-q"], ["content", "ingest", "imports"], ["content", "active"],
                                  ["content", "label", "sha256:" + "0" * 64], ["leases", "ls"], ["images", "ls"],
                                  ["snapshots", "ls"], ["namespaces", "ls"], ["namespaces", "label", "cli", "a=1"],
                                  ["services"]])
def test_cli_imports_no_asyncio_nor_protobuf(s: Any, argv: list[str]) -> None:
    """Each command's whole run (request built, reply read), not only its module's import."""
    code = (
        "import sys; sys.argv = ['moor', '--address', %r, *%r];"
        "import moorage.cli.main as m\n"
        "try:\n m.main()\n"
        "except SystemExit:\n pass\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('asyncio', 'uvloop', 'google')"
        " or n.endswith('_pb2')), file=sys.stderr)"
    ) % (s.address, argv)
    r = subprocess.run([sys.executable, "-c", code], env=s.env(), input=b"x", capture_output=True, timeout=60)
    assert r.stderr.decode().strip().splitlines()[-1] == "[]", r.stderr


def test_ingest_shows_progress_on_a_terminal(s: Any) -> None:
    import pty

    data = os.urandom(5 << 20)
    master, slave = pty.openpty()
    try:
        cmd = [sys.executable, "-m", "moorage.cli.main", "--address", s.address, "--namespace", "tty",
               "content", "ingest", "--expected-size", str(len(data)), "tty-ref"]
        r = subprocess.run(cmd, env=s.env(), input=data, stdout=subprocess.PIPE, stderr=slave, timeout=60)
        os.close(slave)
        slave = -1
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert r.returncode == 0
    assert b"tty-ref: 5.0 MiB/5.0 MiB" in shown
    # not a terminal: no progress at all
    r = moor(s, "content", "ingest", "plain-ref", stdin=data[1:], ns="tty")
    assert r.returncode == 0 and r.stderr == b""


def test_namespace_with_content_cannot_be_removed(s: Any) -> None:
    assert moor(s, "namespaces", "create", "nsrm", ns="nsrm").returncode == 0
    r = moor(s, "content", "ingest", "one", stdin=b"held by nsrm", ns="nsrm")
    assert r.returncode == 0, r.stderr
    d = r.stdout.decode().strip()
    r = moor(s, "namespaces", "rm", "nsrm", ns="nsrm")
    assert r.returncode != 0 and b"content" in r.stderr, r.stderr
    assert moor(s, "content", "rm", d, ns="nsrm").returncode == 0
    r = moor(s, "namespaces", "rm", "nsrm", ns="nsrm")
    assert r.returncode == 0, r.stderr
