"""The stores' batch deletes the collector sweeps with: content's delete_many (records in one
transaction, files after, orphan files removed at start) and a snapshotter's remove_many."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from moorage.namespaces import current_namespace
from moorage.services.content.store import LocalStore
from moorage.services.snapshots.contract import Kind
from moorage.services.snapshots.native import NativeBackend


async def _put(store: LocalStore, data: bytes) -> str:
    w = await store.writer(f"ref-{data.hex()}")
    await w.write(data)
    return await w.commit()


def test_content_delete_many(tmp_path: Path) -> None:
    async def run() -> tuple[LocalStore, dict[str, str]]:
        store = LocalStore(str(tmp_path))
        current_namespace.set("other")
        shared_other = await _put(store, b"shared")
        current_namespace.set("default")
        made = {name: await _put(store, name.encode()) for name in ("a", "b", "shared", "kept")}
        assert made["shared"] == shared_other
        deleted, errors = await store.delete_many(
            [made["a"], made["b"], made["shared"], "sha256:" + "0" * 64, "sha256:../x"])
        assert sorted(deleted) == sorted([made["a"], made["b"], made["shared"]])
        assert list(errors) == ["sha256:../x"]  # malformed: refused; absent: neither
        assert [i.digest async for i in store.walk()] == [made["kept"]]
        current_namespace.set("other")
        assert [i.digest async for i in store.walk()] == [shared_other]
        return store, made

    store, made = asyncio.run(run())
    store.close()  # waits for the background unlinks
    blob = {n: tmp_path / "blobs" / "sha256" / d.split(":")[1] for n, d in made.items()}
    assert not blob["a"].exists() and not blob["b"].exists()
    assert blob["shared"].exists() and blob["kept"].exists()  # another namespace / kept

    # a file with no record (a kill between the transaction and the unlinks) goes at start
    orphan = tmp_path / "blobs" / "sha256" / ("f" * 64)
    orphan.write_bytes(b"orphan")
    LocalStore(str(tmp_path)).close()
    assert not orphan.exists() and blob["kept"].exists() and blob["shared"].exists()


def test_snapshots_remove_many_children_first(tmp_path: Path) -> None:
    b = NativeBackend(str(tmp_path))
    try:
        b.create("ns", "base-active", "", None, Kind.ACTIVE)
        b.commit("ns", "base", "base-active", None)
        b.create("ns", "mid-active", "base", None, Kind.ACTIVE)
        b.commit("ns", "mid", "mid-active", None)
        b.create("ns", "rw", "mid", None, Kind.ACTIVE)
        b.create("ns", "other", "base", None, Kind.ACTIVE)
        # in the order given: rw, then mid (its child gone); base keeps a child (other)
        removed, errors = b.remove_many("ns", ["rw", "mid", "base", "missing"])
        assert removed == ["rw", "mid"]
        assert list(errors) == ["base"]
        assert sorted(b.keys("ns")) == ["base", "other"]
        assert not [n for n in os.listdir(b.snapshots) if n.startswith("rm-")]
    finally:
        b.close()
