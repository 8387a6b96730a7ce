"""``moor snapshots`` against a real suite (proxy + snapshots), as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from moorage.services.snapshots import mounts as mountlib

pytestmark = pytest.mark.root

MOOR = os.path.join(os.path.dirname(sys.executable), "moor")


@pytest.fixture
async def suite() -> AsyncIterator[Any]:
    from tests.suite import running

    async with running(["snapshots"]) as s:
        yield s


def moor(suite: Any, *args: str, code: int = 0) -> str:
    proc = subprocess.run([MOOR, "--address", str(suite.address), "-n", "clitest", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


async def test_snapshot_commands(suite: Any) -> None:
    moor(suite, "snapshots", "prepare", "base-active")
    out = moor(suite, "snapshots", "mounts", "/mnt/x", "base-active")
    assert out.startswith("mount -t bind ") and "/mnt/x" in out and "rw,rbind" in out
    with tempfile.TemporaryDirectory() as target:
        moor(suite, "snapshots", "mount", target, "base-active")
        try:
            with open(os.path.join(target, "hello"), "w") as f:
                f.write("hi")
        finally:
            mountlib.unmount_all(target)
    moor(suite, "snapshots", "commit", "base", "base-active")
    moor(suite, "snapshots", "prepare", "child", "base")
    moor(suite, "snapshots", "view", "v", "base")
    table = moor(suite, "snapshots", "ls")
    assert table.split("\n")[0].split() == ["KEY", "PARENT", "KIND"]
    assert {tuple(line.split()) for line in table.strip().split("\n")[1:]} == {
        ("base", "Committed"), ("child", "base", "Active"), ("v", "base", "View")
    }
    assert json.loads(moor(suite, "--json", "snapshots", "ls", "kind==Active"))[0]["key"] == "child"
    tree = moor(suite, "snapshots", "tree")
    assert tree.split("\n")[0] == "base" and "\\_ child" in tree
    assert moor(suite, "snapshots", "label", "base", "a=1", "b=2").strip() == "a=1,b=2"
    assert moor(suite, "snapshots", "label", "base", "a=").strip() == "b=2"
    usage = json.loads(moor(suite, "--json", "snapshots", "usage", "base"))
    assert usage[0]["inodes"] >= 2
    mounts = json.loads(moor(suite, "--json", "snapshots", "mounts", "/t", "child"))
    assert mounts[0]["type"] == "overlay"
    moor(suite, "snapshots", "rm", "base", code=6)
    moor(suite, "snapshots", "rm", "nope", code=3)
    moor(suite, "snapshots", "prepare", "child", code=4)
    moor(suite, "snapshots", "--snapshotter", "zfs", "ls", code=5)
    moor(suite, "snapshots", "rm", "child", "v")
    moor(suite, "snapshots", "rm", "base")
    assert moor(suite, "snapshots", "ls").strip() == "KEY    PARENT    KIND"
    out = moor(suite, "snapshots", "--snapshotter", "native", "prepare", "--mounts", "n")
    assert "mount -t bind" in out


def test_cli_imports_no_asyncio() -> None:
    code = "import sys, moorage.services.snapshots.cli as c; assert 'asyncio' not in sys.modules, 'asyncio'"
    subprocess.run([sys.executable, "-c", code], check=True)
