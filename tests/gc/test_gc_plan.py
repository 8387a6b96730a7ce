"""The collector's mark and sweep over in-memory services, and its scheduling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.namespaces import namespace
from moorage.proxy import gc
from moorage.proxy.gcschedule import Scheduler, Thresholds
from moorage.proxy.leases import LeaseStore

OLD = datetime(2020, 1, 1, tzinfo=timezone.utc)
CONTENT_REF = "containerd.io/gc.ref.content"


class Fake:
    """One namespace's worth of services, in memory."""

    def __init__(self) -> None:
        self.images: dict[str, tuple[str, dict[str, str]]] = {}
        self.containers: list[tuple[str, str, dict[str, str]]] = []
        self.sandboxes: list[dict[str, str]] = []
        self.blobs: dict[str, tuple[int, datetime, dict[str, str]]] = {}
        self.snaps: dict[str, tuple[str, int, dict[str, str]]] = {}
        self.removed: list[str] = []
        self.ingests: dict[str, datetime] = {}
        self.fail_images = False
        self.on_list_blobs: Any = None
        self.on_sweep: Any = None
        self.on_delete_image: Any = None
        self.on_get_image: Any = None
        self.on_list_images: Any = None
        """Called with the number of image lists read so far, after each."""
        self.image_lists = 0
        self.updated: dict[str, datetime] = {}
        """name -> updated_at (None where absent)."""

    async def images_(self) -> list[tuple[str, str, Mapping[str, str], datetime | None]]:
        if self.fail_images:
            raise errdefs.Unavailable("images down")
        out = [(n, t, labels, self.updated.get(n)) for n, (t, labels) in self.images.items()]
        self.image_lists += 1
        if self.on_list_images is not None:
            self.on_list_images(self.image_lists)
        return out


class Services:
    def __init__(self, fake: Fake) -> None:
        self.f = fake

    async def images(self) -> list[tuple[str, str, Mapping[str, str], datetime | None]]:
        assert namespace() == "default"
        return await self.f.images_()

    async def image(self, name: str) -> tuple[str, Mapping[str, str], datetime | None]:
        if self.f.on_get_image is not None:
            self.f.on_get_image(name)
        if name not in self.f.images:
            raise errdefs.NotFound(f"image {name}")
        target, labels = self.f.images[name]
        return target, labels, self.f.updated.get(name)

    async def containers(self) -> list[tuple[str, str, str, Mapping[str, str]]]:
        return [(f"c{i}", sn, key, labels) for i, (sn, key, labels) in enumerate(self.f.containers)]

    async def sandboxes(self) -> list[Mapping[str, str]]:
        return list(self.f.sandboxes)

    async def blobs(self) -> list[tuple[str, int, datetime, Mapping[str, str]]]:
        if self.f.on_list_blobs is not None:
            self.f.on_list_blobs()
        return [(d, s, c, labels) for d, (s, c, labels) in self.f.blobs.items()]

    def snapshotters(self) -> Sequence[str]:
        return ["overlayfs"]

    async def snapshots(self, snapshotter: str) -> list[tuple[str, str, int, Mapping[str, str]]]:
        return [(k, p, c, labels) for k, (p, c, labels) in self.f.snaps.items()]

    async def delete_blobs(self, digests: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        if self.f.on_sweep is not None:
            await self.f.on_sweep()
        for d in digests:
            del self.f.blobs[d]
        return list(digests), {}

    async def remove_snapshots(self, snapshotter: str, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        for key in keys:
            assert not any(p == key for p, _, _ in self.f.snaps.values()), f"{key} removed before its child"
            del self.f.snaps[key]
            self.f.removed.append(key)
        return list(keys), {}

    async def ingests(self) -> list[tuple[str, datetime]]:
        return list(self.f.ingests.items())

    async def abort_ingest(self, ref: str) -> None:
        del self.f.ingests[ref]

    async def delete_image(self, name: str, target: str) -> None:
        if self.f.on_delete_image is not None:
            self.f.on_delete_image(name)
        if name not in self.f.images:
            raise errdefs.NotFound(f"image {name}")
        if self.f.images[name][0] != target:
            raise errdefs.FailedPrecondition(f"image {name} target {self.f.images[name][0]} does not match {target}")
        del self.f.images[name]


def collector(fake: Fake, tmp_path: Path, delay: float = 0.0) -> gc.Collector:
    async def connect() -> tuple[Services, Any]:
        async def close() -> None:
            return None

        return Services(fake), close

    leases = LeaseStore(tmp_path / "leases.db")
    routed = [gc.IMAGES, gc.CONTAINERS, gc.SANDBOXES, gc.CONTENT, gc.SNAPSHOTS]
    return gc.Collector(connect, leases, lambda: ["default"], routed,
                        Thresholds(schedule_delay=delay, startup_delay=delay))


def d(n: int) -> str:
    return f"sha256:{n:064x}"


def image_graph(fake: Fake) -> None:
    """index 1 -> manifest 2 -> config 3 (-> snapshot top), layers 4, 5; top -> base."""
    fake.blobs[d(1)] = (10, OLD, {f"{CONTENT_REF}.m.0": d(2)})
    fake.blobs[d(2)] = (10, OLD, {f"{CONTENT_REF}.config": d(3), f"{CONTENT_REF}.l.0": d(4),
                                  f"{CONTENT_REF}.l.1": d(5)})
    fake.blobs[d(3)] = (10, OLD, {"containerd.io/gc.ref.snapshot.overlayfs": "top"})
    fake.blobs[d(4)] = (10, OLD, {})
    fake.blobs[d(5)] = (10, OLD, {})
    fake.snaps["base"] = ("", 1, {})
    fake.snaps["top"] = ("base", 1, {})


async def test_image_holds_its_graph_and_rmi_frees_it(tmp_path: Path) -> None:
    fake = Fake()
    image_graph(fake)
    fake.images["x"] = (d(1), {})
    c = collector(fake, tmp_path)
    freed = await c.collect()
    assert freed.content == {} and freed.snapshots == {}
    del fake.images["x"]
    freed = await c.collect()
    assert {x for x, _ in freed.content["default"]} == {d(n) for n in range(1, 6)}
    assert fake.removed == ["top", "base"]
    assert fake.blobs == {} and fake.snaps == {}


async def test_container_holds_its_snapshot_chain(tmp_path: Path) -> None:
    fake = Fake()
    image_graph(fake)
    fake.snaps["rw"] = ("top", 1, {})
    fake.containers.append(("overlayfs", "rw", {f"{CONTENT_REF}.x": d(4)}))
    freed = await collector(fake, tmp_path).collect()
    assert {x for x, _ in freed.content["default"]} == {d(1), d(2), d(3), d(5)}
    assert set(fake.snaps) == {"rw", "top", "base"} and d(4) in fake.blobs


async def test_new_objects_and_roots_are_kept(tmp_path: Path) -> None:
    fake = Fake()
    future = datetime(2999, 1, 1, tzinfo=timezone.utc)
    fake.blobs[d(1)] = (1, future, {f"{CONTENT_REF}.l": d(2)})
    fake.blobs[d(2)] = (1, OLD, {})
    fake.blobs[d(3)] = (1, OLD, {"containerd.io/gc.root": "x"})
    fake.blobs[d(4)] = (1, OLD, {})
    fake.snaps["p"] = ("", 1, {})
    fake.snaps["new"] = ("p", 2**62, {})
    freed = await collector(fake, tmp_path).collect()
    assert freed.content["default"] == [(d(4), 1)]
    assert freed.snapshots == {}


async def test_image_created_during_the_walk_keeps_its_content(tmp_path: Path) -> None:
    fake = Fake()
    fake.blobs[d(1)] = (1, OLD, {})
    fake.on_list_blobs = lambda: fake.images.__setitem__("late", (d(1), {}))
    freed = await collector(fake, tmp_path).collect()
    assert freed.content == {} and d(1) in fake.blobs


async def test_leases_flat_and_expired(tmp_path: Path) -> None:
    fake = Fake()
    image_graph(fake)
    c = collector(fake, tmp_path)
    c.leases.create("default", "deep", {})
    c.leases.add_resource("default", "deep", "content", d(2))
    c.leases.create("default", "flat", {"containerd.io/gc.flat": "x"})
    c.leases.add_resource("default", "flat", "snapshots/overlayfs", "top")
    c.leases.create("default", "gone", {"containerd.io/gc.expire": "2001-01-01T00:00:00Z"})
    c.leases.add_resource("default", "gone", "content", d(1))
    freed = await c.collect()
    # deep: manifest and what it names (config -> top -> base); flat: top alone; expired: nothing
    assert [x for x, _ in freed.content["default"]] == [d(1)]
    assert freed.snapshots == {}
    c.leases.delete("default", "deep")
    freed = await c.collect()
    assert fake.removed == []  # top held flat by its lease, and so its parent
    assert set(fake.snaps) == {"top", "base"}
    assert set(fake.blobs) == set()


async def test_a_root_service_down_stops_the_collection(tmp_path: Path) -> None:
    fake = Fake()
    image_graph(fake)
    fake.fail_images = True
    try:
        await collector(fake, tmp_path).collect()
    except errdefs.Unavailable as exc:
        assert "images" in str(exc)
    else:
        raise AssertionError("collected with the images service down")
    assert len(fake.blobs) == 5


async def test_a_burst_of_triggers_gives_one_collection(tmp_path: Path) -> None:
    fake = Fake()
    done = asyncio.Event()
    c = collector(fake, tmp_path, delay=0.05)
    real = c.collect

    async def collect() -> gc.Freed:
        out = await real()
        done.set()
        return out

    c.collect = collect  # type: ignore[method-assign]
    for _ in range(5):
        c.trigger()
    await done.wait()
    assert c.collections == 1
    await c.close()


class Counting:
    """A Scheduler whose collections only count (and report themselves, as the collector)."""

    def __init__(self, **thresholds: Any) -> None:
        self.runs = 0
        self.ran = asyncio.Event()
        self.s = Scheduler(self.collect, Thresholds(**thresholds))

    async def collect(self) -> None:
        self.runs += 1
        self.s.ran(time.time(), 0.1)
        self.ran.set()

    async def check(self) -> bool:
        """Run one scheduled check now; whether it collected."""
        before = self.runs
        self.s._check()
        if self.s._running is not None and not self.s._running.done():
            await self.s._running
        return self.runs > before


async def test_scheduler_collects_deletions_once_at_the_next_check() -> None:
    k = Counting()
    assert not await k.check()  # idle: nothing to do
    for _ in range(5):
        k.s.mutated(True)
    assert await k.check() and k.runs == 1
    assert not await k.check()  # the burst gave one collection
    # an event stamped before the last collection began was seen by it
    k.s.mutated(True, stamp=time.time() - 60)
    assert not await k.check()
    await k.s.close()


async def test_scheduler_thresholds_and_pause_ratio() -> None:
    k = Counting(mutation_threshold=3)
    k.s.mutated(False)
    k.s.mutated(False)
    assert not await k.check()
    k.s.mutated(False)
    assert await k.check()
    # 0.1 s per collection at a 2 % pause ratio: the next check 4.9 s later
    assert abs(k.s.interval - 4.9) < 1e-9
    await k.s.close()

    k = Counting(deletion_threshold=2, schedule_delay=0.0)
    k.s.mutated(True)
    assert k.s._timer is None  # below the threshold: waits for the periodic check
    k.s.mutated(True)
    await asyncio.wait_for(k.ran.wait(), 10)  # at the threshold: scheduled at once
    assert k.runs == 1
    await k.s.close()
    for bad in ({"pause_threshold": 0.0}, {"pause_threshold": 0.6}, {"deletion_threshold": -1},
                {"schedule_delay": -1.0}):
        try:
            Thresholds(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


async def test_scheduler_backs_off_while_collections_cannot_run() -> None:
    """A service down makes every collection fail: the retries double from 1 s up to
    MAX_RETRY instead of one every check, and a collection that runs resets them."""
    from moorage import errdefs
    from moorage.proxy.gcschedule import MAX_RETRY

    k = Counting()
    down = True

    async def collect() -> None:
        if down:
            raise errdefs.Unavailable("content is down")
        await Counting.collect(k)

    k.s.collect = collect
    k.s.mutated(True)
    delays = []
    for _ in range(8):
        k.s._check()
        assert k.s._running is not None
        await k.s._running
        delays.append(k.s._retry)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_RETRY, MAX_RETRY]
    down = False
    assert await k.check() and k.runs == 1
    assert k.s._retry == 0.0
    await k.s.close()


async def test_a_lease_deleted_mid_collection_keeps_what_it_held(tmp_path: Path) -> None:
    """A pull that creates its image and drops its lease while a collection walks: what the
    lease held stays (the image was not there when the roots were read)."""
    fake = Fake()
    fake.blobs[d(1)] = (1, OLD, {})
    fake.blobs[d(2)] = (1, OLD, {})
    c = collector(fake, tmp_path)
    c.leases.create("default", "pull", {})
    c.leases.add_resource("default", "pull", "content", d(1))

    def pull_ends() -> None:
        c.lease_deleted("default", c.leases.resources("default", "pull"))
        c.leases.delete("default", "pull")

    fake.on_list_blobs = pull_ends
    freed = await c.collect()
    assert [x for x, _ in freed.content["default"]] == [d(2)]
    assert d(1) in fake.blobs
    # the next collection no longer sees that lease
    fake.on_list_blobs = None
    freed = await c.collect()
    assert [x for x, _ in freed.content["default"]] == [d(1)]


async def test_add_resource_on_a_doomed_object_waits_for_the_sweep(tmp_path: Path) -> None:
    fake = Fake()
    fake.blobs[d(1)] = (1, OLD, {})
    c = collector(fake, tmp_path)
    seen: list[bool] = []

    async def during_sweep() -> None:
        doomed = asyncio.create_task(c.adding("default", "content", d(1)))
        other = asyncio.create_task(c.adding("default", "content", d(9)))
        await other  # an object not being swept: at once
        await asyncio.sleep(0)
        seen.append(doomed.done())
        c._waiter = doomed  # type: ignore[attr-defined]

    fake.on_sweep = during_sweep
    await c.collect()
    assert seen == [False]
    await asyncio.wait_for(c._waiter, 5)  # type: ignore[attr-defined]
    assert not c.doomed and c.swept.is_set()


async def test_stale_ingests_not_held_by_a_lease_are_aborted(tmp_path: Path) -> None:
    fake = Fake()
    fake.ingests = {"stale": OLD, "leased": OLD, "fresh": datetime.now(timezone.utc)}
    c = collector(fake, tmp_path)
    c.leases.create("default", "pull", {})
    c.leases.add_resource("default", "pull", "ingests", "leased")
    freed = await c.collect()
    assert freed.ingests == {"default": ["stale"]}
    assert set(fake.ingests) == {"leased", "fresh"}
    assert freed.to_wire()["namespaces"]["default"]["ingests"] == ["stale"]


async def test_back_references_keep_their_owner_while_the_target_lives(tmp_path: Path) -> None:
    """containerd.io/gc.bref.*: a blob or snapshot lives while what it names does."""
    fake = Fake()
    bref = "containerd.io/gc.bref"
    fake.blobs[d(1)] = (1, OLD, {})
    fake.blobs[d(2)] = (1, OLD, {f"{bref}.content": d(1)})  # lives with d(1)
    fake.blobs[d(3)] = (1, OLD, {f"{bref}.image.sig": "x", f"{CONTENT_REF}.l": d(4)})
    fake.blobs[d(4)] = (1, OLD, {})  # referenced by d(3)
    fake.blobs[d(5)] = (1, OLD, {f"{bref}.container": "c0"})
    fake.blobs[d(6)] = (1, OLD, {f"{bref}.snapshot.overlayfs/x": "s"})
    fake.snaps["s"] = ("", 1, {f"{bref}.content": d(9)})  # d(9) does not exist
    fake.images["x"] = (d(1), {})
    c = collector(fake, tmp_path)
    freed = await c.collect()
    # d(1) lives (image), so d(2); image x lives, so d(3) and what it references
    assert {x for x, _ in freed.content["default"]} == {d(5), d(6)}
    assert fake.removed == ["s"]
    fake.containers.append(("overlayfs", "", {}))
    fake.blobs[d(5)] = (1, OLD, {f"{bref}.container": "c0"})
    del fake.images["x"]
    freed = await c.collect()
    assert {x for x, _ in freed.content["default"]} == {d(1), d(2), d(3), d(4)}
    assert d(5) in fake.blobs  # its container lives


async def test_an_image_past_its_gc_expire_is_deleted_and_its_graph_collected(tmp_path: Path) -> None:
    fake = Fake()
    image_graph(fake)
    fake.images["old"] = (d(1), {"containerd.io/gc.expire": "2001-01-01T00:00:00Z"})
    fake.images["kept"] = (d(4), {"containerd.io/gc.expire": "2999-01-01T00:00:00Z"})
    fake.images["plain"] = (d(5), {"containerd.io/gc.expire": "not a time"})  # ignored, as containerd does
    freed = await collector(fake, tmp_path).collect()
    assert freed.images == {"default": ["old"]} and set(fake.images) == {"kept", "plain"}
    assert {x for x, _ in freed.content["default"]} == {d(1), d(2), d(3)}
    assert fake.removed == ["top", "base"]
    assert freed.to_wire()["namespaces"]["default"]["images"] == ["old"]


EXPIRED = {"containerd.io/gc.expire": "2001-01-01T00:00:00Z"}
IMAGE_REF = "containerd.io/gc.ref.image"


@pytest.mark.parametrize("referrer", ["container", "sandbox", "image", "blob", "snapshot", "lease"])
async def test_an_expired_image_named_by_a_live_object_keeps_its_graph(tmp_path: Path, referrer: str) -> None:
    """``containerd.io/gc.ref.image`` (or a lease's ``images`` resource) on a live object keeps
    an image past its ``gc.expire``, with its blobs and snapshots; once the referrer goes, the
    next collection deletes the image and what only it held, as containerd 2 does."""
    fake = Fake()
    image_graph(fake)
    fake.images["old"] = (d(1), dict(EXPIRED))
    c = collector(fake, tmp_path)
    ref = {f"{IMAGE_REF}.app": "old"}
    if referrer == "container":
        fake.containers.append(("", "", ref))
    elif referrer == "sandbox":
        fake.sandboxes.append(ref)
    elif referrer == "image":
        fake.blobs[d(7)] = (1, OLD, {})
        fake.images["app"] = (d(7), ref)
    elif referrer == "blob":
        fake.blobs[d(7)] = (1, OLD, {"containerd.io/gc.root": "x", **ref})
    elif referrer == "snapshot":
        fake.snaps["other"] = ("", 1, {"containerd.io/gc.root": "x", **ref})
    else:
        c.leases.create("default", "pull", {})
        c.leases.add_resource("default", "pull", "images", "old")
    freed = await c.collect()
    assert freed.images == {} and "old" in fake.images
    assert freed.content == {} and freed.snapshots == {}
    assert {d(n) for n in range(1, 6)} <= set(fake.blobs) and {"top", "base"} <= set(fake.snaps)

    fake.containers.clear()
    fake.sandboxes.clear()
    fake.images.pop("app", None)
    fake.blobs.pop(d(7), None)
    fake.snaps.pop("other", None)
    if referrer == "lease":
        c.leases.delete("default", "pull")
    freed = await c.collect()
    assert freed.images == {"default": ["old"]} and fake.images == {}
    assert {x for x, _ in freed.content["default"]} == {d(n) for n in range(1, 6)}
    assert fake.removed == ["top", "base"]


async def test_expired_images_referencing_each_other_live_with_a_live_referrer(tmp_path: Path) -> None:
    """gc.ref.image is followed from image to image, also from an expired one."""
    fake = Fake()
    image_graph(fake)
    fake.blobs[d(7)] = (1, OLD, {})
    fake.images["base"] = (d(1), dict(EXPIRED))
    fake.images["mid"] = (d(7), {**EXPIRED, IMAGE_REF: "base"})
    fake.containers.append(("", "", {f"{IMAGE_REF}/x": "mid"}))
    c = collector(fake, tmp_path)
    freed = await c.collect()
    assert freed.images == {} and freed.content == {} and set(fake.images) == {"base", "mid"}
    fake.containers.clear()
    freed = await c.collect()
    assert sorted(freed.images["default"]) == ["base", "mid"]
    assert {x for x, _ in freed.content["default"]} == {d(n) for n in (1, 2, 3, 4, 5, 7)}


async def test_a_flat_lease_on_an_expired_image_keeps_the_image_and_its_target_only(tmp_path: Path) -> None:
    fake = Fake()
    image_graph(fake)
    fake.images["old"] = (d(1), dict(EXPIRED))
    c = collector(fake, tmp_path)
    c.leases.create("default", "flat", {"containerd.io/gc.flat": "x"})
    c.leases.add_resource("default", "flat", "images", "old")
    freed = await c.collect()
    assert freed.images == {} and "old" in fake.images
    assert {x for x, _ in freed.content["default"]} == {d(2), d(3), d(4), d(5)}
    assert set(fake.blobs) == {d(1)} and fake.removed == ["top", "base"]


async def test_an_expired_image_with_a_back_reference_lives_with_its_target(tmp_path: Path) -> None:
    """``containerd.io/gc.bref.*`` on an expired image: it lives while what it names does."""
    fake = Fake()
    image_graph(fake)
    fake.blobs[d(7)] = (1, OLD, {"containerd.io/gc.root": "x"})
    fake.images["by-container"] = (d(1), {**EXPIRED, "containerd.io/gc.bref.container": "c0"})
    fake.images["by-blob"] = (d(4), {**EXPIRED, "containerd.io/gc.bref.content/sig": d(7)})
    fake.containers.append(("", "", {}))
    c = collector(fake, tmp_path)
    freed = await c.collect()
    assert freed.images == {} and freed.content == {} and freed.snapshots == {}
    fake.containers.clear()
    fake.blobs[d(7)] = (1, OLD, {})
    freed = await c.collect()
    assert sorted(freed.images["default"]) == ["by-blob", "by-container"]
    assert {x for x, _ in freed.content["default"]} == {d(n) for n in (1, 2, 3, 4, 5, 7)}


async def test_an_expired_image_moved_before_its_delete_keeps_what_it_named(tmp_path: Path) -> None:
    """Images.Delete names the target read: an image updated meanwhile is not deleted
    (FailedPrecondition), and this collection keeps what it named."""
    fake = Fake()
    image_graph(fake)
    fake.blobs[d(7)] = (1, OLD, {})
    fake.images["old"] = (d(1), dict(EXPIRED))
    fake.on_delete_image = lambda name: fake.images.__setitem__(name, (d(7), {}))
    freed = await collector(fake, tmp_path).collect()
    assert freed.images == {} and fake.images["old"] == (d(7), {})
    assert [x for x, _ in freed.content["default"]] == [d(7)]  # unnamed when the lists were read
    assert {d(n) for n in range(1, 6)} <= set(fake.blobs) and freed.snapshots == {}


async def test_an_expired_image_changed_after_it_was_read_is_not_deleted(tmp_path: Path) -> None:
    """Images.Delete checks only the target: the collector reads the image again just before
    and keeps it (with what it names) if its labels or updated_at moved since the lists were
    read, e.g. its ``containerd.io/gc.expire`` removed; the next collection judges it anew."""
    fake = Fake()
    image_graph(fake)
    fake.images["old"] = (d(1), dict(EXPIRED))
    fake.updated["old"] = OLD

    def unexpire(reads: int) -> None:
        if reads == 2:  # after the collection's last read of the list
            fake.images["old"] = (d(1), {})
            fake.updated["old"] = datetime(2021, 1, 1, tzinfo=timezone.utc)

    fake.on_list_images = unexpire
    c = collector(fake, tmp_path)
    freed = await c.collect()
    assert freed.images == {} and fake.images["old"] == (d(1), {})
    assert freed.content == {} and freed.snapshots == {} and {d(n) for n in range(1, 6)} <= set(fake.blobs)
    fake.on_list_images = None
    freed = await c.collect()  # no longer expired: a root
    assert freed.images == {} and freed.content == {} and "old" in fake.images


async def test_an_expired_image_updated_unchanged_is_kept_until_the_next_collection(tmp_path: Path) -> None:
    """Only updated_at moved (same labels and target, or deleted and created again): kept by
    this collection, deleted by the next, which reads it as it is."""
    fake = Fake()
    image_graph(fake)
    fake.images["old"] = (d(1), dict(EXPIRED))
    fake.updated["old"] = OLD
    fake.on_get_image = lambda name: fake.updated.__setitem__(name, datetime(2021, 1, 1, tzinfo=timezone.utc))
    c = collector(fake, tmp_path)
    freed = await c.collect()
    assert freed.images == {} and "old" in fake.images and freed.content == {}
    fake.on_get_image = None
    freed = await c.collect()
    assert freed.images == {"default": ["old"]} and fake.images == {}
    assert {x for x, _ in freed.content["default"]} == {d(n) for n in range(1, 6)}


def test_label_names_match_as_containerd_does() -> None:
    """A reference label is the prefix itself or the prefix then ``.`` or ``/`` and a name."""
    refs = gc.label_refs({
        "containerd.io/gc.ref.content": d(1), "containerd.io/gc.ref.content/l.0": d(2),
        "containerd.io/gc.ref.contentx": d(3), "containerd.io/gc.ref.image": "a",
        "containerd.io/gc.ref.image.sig": "b", "containerd.io/gc.ref.imagex": "c",
        "containerd.io/gc.ref.snapshot.overlayfs/x": "k", "containerd.io/gc.ref.snapshot.": "none",
        "containerd.io/gc.ref.image.empty": "",
    })
    assert sorted(refs) == [("content", "", d(1)), ("content", "", d(2)), ("image", "", "a"),
                            ("image", "", "b"), ("snapshot", "overlayfs", "k")]
    brefs = gc.back_refs({
        "containerd.io/gc.bref.content/sig": d(1), "containerd.io/gc.bref.image": "a",
        "containerd.io/gc.bref.containerx": "no", "containerd.io/gc.bref.container.x": "c",
        "containerd.io/gc.bref.snapshot.overlayfs": "k",
    })
    assert sorted(brefs) == [("container", "", "c"), ("content", "", d(1)), ("image", "", "a"),
                             ("snapshot", "overlayfs", "k")]


def ago(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_conditional_snapshot_references_keep_a_snapshot_used_recently(tmp_path: Path) -> None:
    """containerd 2.3's ``containerd.io/gc.cond.snapshot.<snapshotter>`` = ``usedat<D|key`` on a
    blob or image keeps that snapshot while its ``containerd.io/gc.cond.value-usedat`` is
    within D (``>``: older than D); conditions are OR'ed, others ignored."""
    cond = "containerd.io/gc.cond.snapshot.overlayfs"
    used = "containerd.io/gc.cond.value-usedat"
    fake = Fake()
    root = {"containerd.io/gc.root": "x"}
    fake.blobs[d(20)] = (1, OLD, {**root, cond: "usedat<2h|sn6"})
    fake.blobs[d(21)] = (1, OLD, {**root, cond: "usedat<2h|sn7"})
    fake.blobs[d(22)] = (1, OLD, {**root, f"{cond}/b": "usedat<=2h,usedat<bogus,usedat>5h|sn8"})
    fake.blobs[d(23)] = (1, OLD, {**root, "containerd.io/gc.cond.snapshot/overlayfs": "usedat<1h,usedat>2h|sn9"})
    fake.blobs[d(30)] = (1, OLD, {})
    fake.images["img"] = (d(30), {cond: "usedat<2h|sn10"})
    fake.blobs[d(31)] = (1, OLD, {cond: "usedat<2h|sn11"})  # not live itself
    fake.snaps["base"] = ("", 1, {})
    fake.snaps["sn6"] = ("base", 1, {used: ago(3600)})
    fake.snaps["sn7"] = ("", 1, {used: ago(3 * 3600)})
    fake.snaps["sn8"] = ("", 1, {used: ago(3600)})  # only a > condition (and ignored ones), not met
    fake.snaps["sn9"] = ("", 1, {used: ago(3 * 3600)})  # the second condition holds
    fake.snaps["sn10"] = ("", 1, {used: ago(1800)})
    fake.snaps["sn11"] = ("", 1, {used: ago(60)})
    fake.snaps["sn12"] = ("", 1, {used: "not a time"})
    freed = await collector(fake, tmp_path).collect()
    assert [x for x, _ in freed.content["default"]] == [d(31)]
    assert sorted(fake.removed) == ["sn11", "sn12", "sn7", "sn8"]
    assert set(fake.snaps) == {"base", "sn6", "sn9", "sn10"}


async def test_a_flat_hold_keeps_no_back_references(tmp_path: Path) -> None:
    """As in containerd, an object held flat keeps only itself: what names it with
    ``gc.bref.*`` goes unless a non-flat hold reaches it."""
    fake = Fake()
    fake.blobs[d(1)] = (1, OLD, {})
    fake.blobs[d(2)] = (1, OLD, {"containerd.io/gc.bref.content": d(1)})
    c = collector(fake, tmp_path)
    c.leases.create("default", "flat", {"containerd.io/gc.flat": "x"})
    c.leases.add_resource("default", "flat", "content", d(1))
    freed = await c.collect()
    assert freed.content["default"] == [(d(2), 1)] and set(fake.blobs) == {d(1)}
    fake.blobs[d(2)] = (1, OLD, {"containerd.io/gc.bref.content": d(1)})
    c.leases.create("default", "deep", {})
    c.leases.add_resource("default", "deep", "content", d(1))
    freed = await c.collect()
    assert freed.content == {} and set(fake.blobs) == {d(1), d(2)}


def test_go_durations() -> None:
    assert gc.go_duration("2h") == 7200 and gc.go_duration("1h30m") == 5400
    assert gc.go_duration("-1.5s") == -1.5 and gc.go_duration("+.5m") == 30
    assert gc.go_duration("0") == 0 and gc.go_duration("300ms") == 0.3
    assert gc.go_duration("2\u00b5s") == 2e-6 and gc.go_duration("2\u03bcs") == 2e-6
    for bad in ("", "-", "2", "2x", "h", "1h 2m", "1e3s", ".s", "00", "2\u0661s"):
        assert gc.go_duration(bad) is None, bad


def test_go_durations_past_time_duration_are_errors_as_in_go() -> None:
    """Go's time.ParseDuration: an int64 of nanoseconds; above 2^63-1 ns (-2^63 is the one
    magnitude past it allowed) it returns "invalid duration". Each value below was checked
    against Go's own ParseDuration."""
    ns = gc.go_duration_ns
    assert ns("9223372036854775807ns") == 2**63 - 1 and ns("9223372036854775808ns") is None
    assert ns("-9223372036854775808ns") == -2**63 and ns("-9223372036854775809ns") is None
    assert ns("2562047h47m16.854775807s") == 2**63 - 1 and ns("2562047h47m16.854775808s") is None
    assert ns("2562047h") == 9223369200000000000 and ns("2562048h") is None
    assert ns("153722867m") == 9223372020000000000 and ns("153722868m") is None
    assert ns("9223372036.8547758075s") == 2**63 - 1  # fraction digits past precision dropped
    assert ns("1.123456789123456789s") == 1123456789  # truncated to the nanosecond
    assert ns("9223372036854775808ns9223372036854775808ns") == 0  # Go's uint64 sum wraps
    for bad in ("3000000h", "300000000000000000000h", "1" + "0" * 400 + "h", "10000000000000000000000ns"):
        assert gc.go_duration(bad) is None, bad


async def test_a_condition_past_go_durations_range_is_ignored(tmp_path: Path) -> None:
    """``usedat<3000000h`` (~342 years) is no duration to containerd: the condition is
    ignored and the snapshot goes, however recently it was used."""
    cond = "containerd.io/gc.cond.snapshot.overlayfs"
    used = {"containerd.io/gc.cond.value-usedat": ago(60)}
    fake = Fake()
    root = {"containerd.io/gc.root": "x"}
    fake.blobs[d(1)] = (1, OLD, {**root, cond: "usedat<3000000h|a"})
    fake.blobs[d(2)] = (1, OLD, {**root, cond: "usedat<1" + "0" * 400 + "h|b"})
    fake.blobs[d(3)] = (1, OLD, {**root, cond: "usedat<2562047h|c"})  # in range
    for key in "abc":
        fake.snaps[key] = ("", 1, dict(used))
    await collector(fake, tmp_path).collect()
    assert sorted(fake.removed) == ["a", "b"] and set(fake.snaps) == {"c"}


def test_conditional_labels_name_their_snapshotter_as_containerd_does() -> None:
    """containerd (core/metadata/gc.go) trims the leading ``.`` and ``/`` after
    ``containerd.io/gc.cond.snapshot`` and takes the rest up to a ``/``; no snapshotter, no
    reference."""
    cond = "containerd.io/gc.cond.snapshot"
    got = gc.conditions({
        cond: "usedat<1h|k0", f"{cond}.": "usedat<1h|k1", f"{cond}./": "usedat<1h|k2",
        f"{cond}/": "usedat<1h|k3", f"{cond}.overlayfs": "usedat<1h|k4",
        f"{cond}/native/name": "usedat<1h|k5", f"{cond}..//btrfs": "usedat<1h|k6",
        f"{cond}x": "usedat<1h|k7", f"{cond}.zfs": "usedat<1h",
    })
    assert sorted(got) == [(("snapshot", "btrfs", "k6"), "<", 3600.0),
                           (("snapshot", "native", "k5"), "<", 3600.0),
                           (("snapshot", "overlayfs", "k4"), "<", 3600.0),
                           (("snapshot", "x", "k7"), "<", 3600.0)]


def test_usedat_takes_only_less_and_greater_than_as_containerd_does() -> None:
    """containerd 2.3 parses ``=``, ``!=``, ``<``, ``>``, ``<=``, ``>=`` (``==`` as ``=``) but
    ``usedat`` acts on ``<`` and ``>`` only; the rest, and unknown names, are ignored."""
    key = "containerd.io/gc.cond.snapshot.overlayfs"
    value = ",".join(["usedat<1h", "usedat>2h", "usedat<=3h", "usedat>=4h", "usedat=5h", "usedat==6h",
                      "usedat!=7h", "usedat<<8h", "usedat<=>9h", " usedat<10h", "usedAt<11h", "usedat",
                      "created<12h", "usedat<13h "]) + "|k"
    assert gc.conditions({key: value}) == [(("snapshot", "overlayfs", "k"), "<", 3600.0),
                                           (("snapshot", "overlayfs", "k"), ">", 7200.0)]


async def test_usedat_with_or_equal_keeps_nothing(tmp_path: Path) -> None:
    cond = "containerd.io/gc.cond.snapshot.overlayfs"
    fake = Fake()
    root = {"containerd.io/gc.root": "x"}
    fake.blobs[d(1)] = (1, OLD, {**root, cond: "usedat<=2h|le"})
    fake.blobs[d(2)] = (1, OLD, {**root, cond: "usedat>=1m|ge"})
    fake.blobs[d(3)] = (1, OLD, {**root, cond: "usedat<2h,usedat>=1m|lt"})
    for key in ("le", "ge", "lt"):
        fake.snaps[key] = ("", 1, {"containerd.io/gc.cond.value-usedat": ago(3600)})
    await collector(fake, tmp_path).collect()
    assert sorted(fake.removed) == ["ge", "le"] and set(fake.snaps) == {"lt"}


async def test_add_resource_on_an_expired_image_being_deleted_waits_for_the_sweep(tmp_path: Path) -> None:
    """A lease's AddResource naming an image the collection deletes waits (as for blobs);
    naming any other image, it goes through at once."""
    fake = Fake()
    fake.blobs[d(1)] = (1, OLD, {})
    fake.images["old"] = (d(1), dict(EXPIRED))
    c = collector(fake, tmp_path)
    seen: list[tuple[bool, bool]] = []

    async def during_sweep() -> None:
        doomed = asyncio.create_task(c.adding("default", "images", "old"))
        other = asyncio.create_task(c.adding("default", "images", "kept"))
        await other
        await asyncio.sleep(0)
        seen.append((doomed.done(), other.done()))
        c._waiter = doomed  # type: ignore[attr-defined]

    fake.on_sweep = during_sweep
    await c.collect()
    assert seen == [(False, True)]
    await asyncio.wait_for(c._waiter, 5)  # type: ignore[attr-defined]
