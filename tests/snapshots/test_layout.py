"""containerd 1.6's on-disk layout and mount options, and crash leftovers (reliability §4 19)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.snapshots.contract import Mount
from moorage.services.snapshots.overlay import supports_index
from moorage.services.snapshots.store import LocalSnapshotters


@pytest.fixture
async def sns(tmp_path: Path) -> Any:
    s = LocalSnapshotters(str(tmp_path / "sn"))
    yield s
    s.close()


def _ids(root: Path) -> list[str]:
    return sorted(os.listdir(root / "snapshots"), key=lambda n: (len(n), n))


async def test_overlay_layout_and_mounts(sns: Any, tmp_path: Path) -> None:
    o = sns.get("overlayfs")
    root = tmp_path / "sn" / "overlayfs"
    snaps = root / "snapshots"
    assert (root / "metadata.db").exists()
    m = await o.prepare("a")
    assert m == [Mount("bind", str(snaps / "1" / "fs"), ("rw", "rbind"))]
    assert sorted(os.listdir(snaps / "1")) == ["fs", "work"]
    await o.commit("A", "a")
    assert await o.view("v1", "A") == [Mount("bind", str(snaps / "1" / "fs"), ("ro", "rbind"))]
    assert os.listdir(snaps / "2") == ["fs"]  # views have no work dir
    await o.prepare("b", "A")
    await o.commit("B", "b")
    index = ("index=off",) if supports_index() else ()
    assert await o.prepare("c", "B") == [
        Mount("overlay", "overlay", (*index, f"workdir={snaps}/4/work", f"upperdir={snaps}/4/fs",
                                      f"lowerdir={snaps}/3/fs:{snaps}/1/fs"))
    ]
    assert await o.view("v2", "B") == [
        Mount("overlay", "overlay", (*index, f"lowerdir={snaps}/3/fs:{snaps}/1/fs"))
    ]
    assert await o.view("v0") == [Mount("bind", str(snaps / "6" / "fs"), ("ro", "rbind"))]
    assert os.stat(root).st_mode & 0o777 == 0o700


async def test_native_layout(sns: Any, tmp_path: Path) -> None:
    n = sns.get("native")
    snaps = tmp_path / "sn" / "native" / "snapshots"
    assert await n.prepare("a") == [Mount("bind", str(snaps / "1"), ("rw", "rbind"))]
    (snaps / "1" / "f").write_text("x")
    os.symlink("f", snaps / "1" / "l")
    await n.commit("A", "a")
    assert await n.view("v", "A") == [Mount("bind", str(snaps / "2"), ("ro", "rbind"))]
    assert (snaps / "2" / "f").read_text() == "x" and os.readlink(snaps / "2" / "l") == "f"


async def test_leftovers_are_cleaned(sns: Any, tmp_path: Path) -> None:
    o = sns.get("overlayfs")
    snaps = tmp_path / "sn" / "overlayfs" / "snapshots"
    await o.prepare("live")
    for name in ("rm-7", "new-abc", "42"):  # crash after the metadata change, before the rmtree
        (snaps / name / "fs").mkdir(parents=True)
    await o.cleanup()
    assert _ids(tmp_path / "sn" / "overlayfs") == ["1"]
    (snaps / "rm-9").mkdir()
    sns.close()
    again = LocalSnapshotters(str(tmp_path / "sn"))  # and at start
    try:
        assert _ids(tmp_path / "sn" / "overlayfs") == ["1"]
        assert (await again.get("overlayfs").stat("live")).name == "live"
    finally:
        again.close()


async def test_names(sns: Any) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="snapshotter argument missing"):
        sns.get("")
    with pytest.raises(errdefs.InvalidArgument, match="snapshotter not loaded"):
        sns.get("btrfs")
    with pytest.raises(errdefs.InvalidArgument):
        await sns.get("overlayfs").prepare("")
    assert sns.names() == ["overlayfs", "native"]


async def test_namespace_usage(sns: Any) -> None:
    await sns.get("native").prepare("held")
    assert await sns.namespace_usage("snaptest") == ["snapshot native/held"]
    assert await sns.namespace_usage("other") == []
