"""The snapshotter conformance suite, after containerd's snapshots/testsuite.

Every test takes ``sn`` (conftest.py): overlayfs and native, each local, over a real unix
socket and through the proxy. Only the contract is used; files are written and checked
through the returned mounts (root: mounting).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.snapshots import mounts as mountlib
from moorage.services.snapshots.contract import Info, Kind, Mount

from .conftest import OTHER, using

pytestmark = pytest.mark.root


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount]) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="snapmnt-") as target:
        mountlib.mount_all(mounts, target)
        try:
            yield target
        finally:
            mountlib.unmount_all(target)


def write(mounts: Sequence[Mount], files: dict[str, bytes]) -> None:
    with mounted(mounts) as root:
        for name, data in files.items():
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)


def tree(mounts: Sequence[Mount]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with mounted(mounts) as root:
        for dirpath, _, files in os.walk(root):
            for name in files:
                p = os.path.join(dirpath, name)
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = f.read()
    return out


async def committed(sn: Any, name: str, files: dict[str, bytes], parent: str = "") -> None:
    mounts = await sn.prepare(f"{name}-active", parent)
    write(mounts, files)
    await sn.commit(name, f"{name}-active")


async def test_prepare_commit_stat(sn: Any) -> None:
    mounts = await sn.prepare("a-active", "", {"l1": "v1"})
    assert mounts and mounts[0].type in ("bind", "overlay")
    info = await sn.stat("a-active")
    assert (info.name, info.kind, info.parent, dict(info.labels)) == ("a-active", Kind.ACTIVE, "", {"l1": "v1"})
    assert info.created_at > 0 and info.updated_at >= info.created_at
    write(mounts, {"hello": b"world"})
    await sn.commit("a", "a-active", {"c": "1"})
    info = await sn.stat("a")
    assert (info.kind, info.parent, dict(info.labels)) == (Kind.COMMITTED, "", {"c": "1"})
    with pytest.raises(errdefs.NotFound):
        await sn.stat("a-active")


async def test_layers_stack(sn: Any) -> None:
    await committed(sn, "l1", {"a": b"1", "d/x": b"x"})
    await committed(sn, "l2", {"b": b"2", "a": b"1b"}, "l1")
    mounts = await sn.prepare("top", "l2")
    assert tree(mounts) == {"a": b"1b", "b": b"2", "d/x": b"x"}
    write(mounts, {"c": b"3"})
    assert tree(mounts)["c"] == b"3"
    assert (await sn.stat("top")).parent == "l2"
    assert (await sn.stat("l2")).parent == "l1"
    view = await sn.view("v", "l2")
    assert tree(view) == {"a": b"1b", "b": b"2", "d/x": b"x"}
    assert (await sn.stat("v")).kind == Kind.VIEW
    with pytest.raises(OSError):
        write(view, {"nope": b""})
    assert await sn.mounts("top") == mounts


async def test_view_without_parent_is_empty_and_read_only(sn: Any) -> None:
    view = await sn.view("empty-view")
    assert tree(view) == {}
    assert "ro" in view[0].options


async def test_duplicate_keys(sn: Any) -> None:
    await committed(sn, "base", {"f": b""})
    await sn.prepare("k", "base")
    with pytest.raises(errdefs.AlreadyExists):
        await sn.prepare("k", "base")
    with pytest.raises(errdefs.AlreadyExists):
        await sn.view("k")
    with pytest.raises(errdefs.AlreadyExists):
        await sn.prepare("base")
    await sn.prepare("k2")
    with pytest.raises(errdefs.AlreadyExists):
        await sn.commit("base", "k2")
    assert (await sn.stat("k2")).kind == Kind.ACTIVE


async def test_missing_and_bad_parents(sn: Any) -> None:
    with pytest.raises(errdefs.NotFound):
        await sn.prepare("x", "no-such-parent")
    with pytest.raises(errdefs.NotFound):
        await sn.view("y", "no-such-parent")
    await sn.prepare("active-parent")
    with pytest.raises(errdefs.InvalidArgument):
        await sn.prepare("z", "active-parent")
    with pytest.raises(errdefs.NotFound):
        await sn.stat("x")


async def test_commit_rules(sn: Any) -> None:
    await sn.view("v")
    with pytest.raises(errdefs.FailedPrecondition):
        await sn.commit("c", "v")
    with pytest.raises(errdefs.NotFound):
        await sn.commit("c", "missing")
    await committed(sn, "c1", {})
    with pytest.raises(errdefs.NotFound):
        await sn.commit("c2", "c1-active")


async def test_remove(sn: Any) -> None:
    await committed(sn, "p", {"f": b"1"})
    await sn.prepare("child", "p")
    with pytest.raises(errdefs.FailedPrecondition):
        await sn.remove("p")
    await sn.remove("child")
    await sn.remove("p")
    with pytest.raises(errdefs.NotFound):
        await sn.stat("p")
    with pytest.raises(errdefs.NotFound):
        await sn.remove("p")


async def test_update_labels(sn: Any) -> None:
    await sn.prepare("u", "", {"a": "1", "b": "2"})
    info = await sn.update(Info("u", Kind.ACTIVE, labels={"a": "10", "c": "3"}), ["labels.a"])
    assert dict(info.labels) == {"a": "10", "b": "2"}
    info = await sn.update(Info("u", Kind.ACTIVE, labels={}), ["labels.b"])
    assert dict(info.labels) == {"a": "10"}
    info = await sn.update(Info("u", Kind.ACTIVE, labels={"z": "9"}), ["labels"])
    assert dict(info.labels) == {"z": "9"}
    info = await sn.update(Info("u", Kind.ACTIVE, labels={"y": "8"}))
    assert dict(info.labels) == {"y": "8"}
    with pytest.raises(errdefs.InvalidArgument):
        await sn.update(Info("u", Kind.ACTIVE, parent="x"), ["parent"])
    with pytest.raises(errdefs.NotFound):
        await sn.update(Info("nope", Kind.ACTIVE), ["labels"])
    with pytest.raises(errdefs.InvalidArgument):
        await sn.update(Info("u", Kind.ACTIVE, labels={"k": "v" * 5000}), ["labels"])
    assert (await sn.stat("u")).updated_at >= (await sn.stat("u")).created_at


async def test_walk_filters(sn: Any) -> None:
    await committed(sn, "w1", {}, "")
    await sn.prepare("w2", "w1", {"role": "top", "containerd.io/gc.root": "x"})
    await sn.view("w3", "w1", {"role": "view"})

    async def names(*filters: str) -> list[str]:
        return sorted([i.name async for i in sn.walk(list(filters))])

    assert await names() == ["w1", "w2", "w3"]
    assert await names("kind==Committed") == ["w1"]
    assert await names("kind==Active", "kind==View") == ["w2", "w3"]
    assert await names("parent==w1") == ["w2", "w3"]
    assert await names("labels.role==top") == ["w2"]
    assert await names('labels."containerd.io/gc.root"') == ["w2"]
    assert await names("name~=^w[12]$") == ["w1", "w2"]
    with pytest.raises(errdefs.InvalidArgument):
        await names("labels.role==")


async def test_usage(sn: Any) -> None:
    mounts = await sn.prepare("big-active")
    write(mounts, {"f": b"x" * (1 << 20), "d/g": b"y" * 4096})
    usage = await sn.usage("big-active")
    assert usage.size >= (1 << 20) + 4096 and usage.inodes >= 4
    await sn.commit("big", "big-active")
    assert await sn.usage("big") == usage
    child = await sn.prepare("small", "big")
    write(child, {"h": b"z"})
    small = await sn.usage("small")
    assert small.inodes >= 1
    if sn.name == "overlayfs":  # usage excludes parents; native holds a full copy
        assert small.size < (1 << 20)


async def test_namespaces_are_separate(sn: Any) -> None:
    await committed(sn, "shared-name", {"a": b"1"})
    with using(OTHER):
        with pytest.raises(errdefs.NotFound):
            await sn.stat("shared-name")
        with pytest.raises(errdefs.NotFound):
            await sn.prepare("x", "shared-name")
        await sn.prepare("shared-name")
        assert [i.name async for i in sn.walk()] == ["shared-name"]
        await sn.remove("shared-name")
    assert (await sn.stat("shared-name")).kind == Kind.COMMITTED
    with using(None):
        with pytest.raises(errdefs.FailedPrecondition):
            await sn.stat("shared-name")


async def test_cleanup_keeps_live_snapshots(sn: Any) -> None:
    await committed(sn, "keep", {"k": b"1"})
    await sn.cleanup()
    view = await sn.view("keep-view", "keep")
    assert tree(view) == {"k": b"1"}


async def test_snapshotter_names(snapshotters: Any) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="snapshotter argument missing"):
        await snapshotters.get("").stat("x")
    with pytest.raises(errdefs.InvalidArgument, match="snapshotter not loaded"):
        await snapshotters.get("zfs").stat("x")
