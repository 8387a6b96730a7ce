"""One garbage collection over 1 000 images and 10 000 blobs, through a real suite.

    .venv/bin/python bench/gc.py [--images 1000] [--layers 8000] [--remove 500]

Starts the proxy, content, snapshots and transfer on a temporary root (automatic collection
off), writes ``layers`` layer blobs, one config and one manifest per image (the manifest
labelled ``containerd.io/gc.ref.content.{config,l.N}`` as a pull leaves it, 12 layers, 4 of
them shared with the next image), creates the images, then times:
- a collection with nothing to free (mark only: every list read through the proxy);
- a collection after ``remove`` images were deleted (mark and sweep).
Times are the wall time of ``moorage.internal.v1.GC/Collect`` as a client sees it.

During the mark-and-sweep collection a pull runs beside it, on its own connection and under
its own lease, doing what the transfer service does for each layer: open a Write (the
content service records the ingest to the lease), write 4 chunks of 64 KiB, commit (the
blob is recorded to the lease); its stall is its longest step while the collection runs
(and, for reference, its longest step over the same number of steps with no collection).
Goals (issue 12): a collection under 1 s, no pull stalled longer than 100 ms. The last line
is one JSON object with both figures and their ratios to the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds ttrpc.py: keep it from shadowing the ttrpc package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO / "tests"))

from suite import running  # noqa: E402

REF = "containerd.io/gc.ref.content"
GOAL_COLLECTION = 1.0
GOAL_STALL = 0.1


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=8000)
    ap.add_argument("--remove", type=int, default=500)
    args = ap.parse_args()

    import msgpack

    from moorage.leasing import Leases, hold
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient
    from moorage.services.transfer.client import ImagesClient
    from moorage.services.transfer.contract import Image
    from moorage.services.transfer.oci import Descriptor

    config = {"runtime": {"enabled": False}, "sandbox": {"enabled": False}, "nri": {"enabled": False},
              "proxy": {"gc_auto": False, "grpc": False}}
    async with running(["content", "snapshots", "transfer"], config=config) as s:
        current_namespace.set("default")
        conn = await connect(s.address)
        content = ContentClient(conn)
        images = ImagesClient(conn)
        sem = asyncio.Semaphore(32)
        seq = iter(range(1 << 40))

        async def put(data: bytes, labels: dict[str, str] | None = None) -> str:
            async with sem:
                w = await content.writer(f"bench-{next(seq)}-{os.getpid()}")
                await w.write(data)
                return await w.commit(len(data), labels=labels)

        t0 = time.perf_counter()
        layers = await asyncio.gather(*(put(f"layer {i} ".encode() * 8) for i in range(args.layers)))

        async def image(n: int) -> None:
            cfg = await put(json.dumps({"image": n}).encode())
            # 8 layers of its own span, overlapping the next image's by 4: every layer is used
            picked = [layers[(n * args.layers // args.images + i) % len(layers)] for i in range(12)]
            labels = {f"{REF}.config": cfg, **{f"{REF}.l.{i}": d for i, d in enumerate(picked)}}
            manifest = json.dumps({"config": cfg, "layers": picked}).encode()
            md = await put(manifest, labels)
            async with sem:
                await images.create(Image(f"bench.example/img/{n}:1", Descriptor(
                    "application/vnd.oci.image.manifest.v1+json", md, len(manifest))))

        await asyncio.gather(*(image(n) for n in range(args.images)))
        setup = time.perf_counter() - t0
        blobs = args.layers + 2 * args.images

        async def collect() -> tuple[float, dict[str, object]]:
            start = time.perf_counter()
            reply = msgpack.unpackb(await conn.unary_raw("moorage.internal.v1.GC", "Collect", msgpack.packb({})))
            return time.perf_counter() - start, reply

        t = time.perf_counter()
        walked = [i async for i in content.walk()]
        walk_s = time.perf_counter() - t
        t = time.perf_counter()
        listed = await images.list()
        list_s = time.perf_counter() - t
        assert len(walked) == blobs and len(listed) == args.images
        mark_only, r1 = await collect()
        assert not r1["namespaces"], f"{len(r1['namespaces']['default']['content'])} blobs freed with no image gone"
        for n in range(args.remove):
            await images.delete(f"bench.example/img/{n}:1")

        pull_conn = await connect(s.address)
        leases = Leases(s.address)
        chunk = os.urandom(64 << 10)

        started = asyncio.Event()

        async def pull(stop: asyncio.Event, steps: list[float], limit: int = 1 << 30) -> None:
            """Layers written under a lease until ``stop``: the duration of every step."""
            puller = ContentClient(pull_conn)
            async with hold(leases):
                for n in range(limit):
                    if stop.is_set():
                        return
                    t = time.perf_counter()
                    w = await puller.writer(f"pull-{os.getpid()}-{len(steps)}-{n}", 4 * len(chunk))
                    steps.append(time.perf_counter() - t)
                    started.set()
                    for i in range(4):
                        t = time.perf_counter()
                        await w.write(os.urandom(16) + chunk[16:])
                        steps.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    await w.commit()
                    steps.append(time.perf_counter() - t)

        during: list[float] = []
        stop = asyncio.Event()
        pulling = asyncio.create_task(pull(stop, during))
        await started.wait()  # the pull is under way before the collection starts
        sweep, r2 = await collect()
        in_collection = len(during)
        # the files go after the records, in the background: the pull goes on until they are gone
        gone = [s.root / "content" / "blobs" / "sha256" / b["digest"].split(":", 1)[1]
                for b in r2["namespaces"].get("default", {}).get("content", [])]  # type: ignore[union-attr]
        t = time.perf_counter()
        while any(p.exists() for p in gone):
            await asyncio.sleep(0.02)
        unlink_tail = time.perf_counter() - t
        stop.set()
        await pulling
        idle: list[float] = []
        await pull(asyncio.Event(), idle, limit=max(1, len(during) // 6))
        freed = len(r2["namespaces"].get("default", {}).get("content", []))  # type: ignore[union-attr]
        await leases.close()
        await pull_conn.close()
        await conn.close()
    print(f"setup: {blobs} blobs, {args.images} images in {setup:.1f}s")
    print(f"reads a collection makes: Content.List {walk_s * 1000:.0f} ms, Images.List {list_s * 1000:.0f} ms")
    print(f"collection, nothing to free: {mark_only * 1000:.0f} ms")
    stall, calm, stall_in = max(during), max(idle), max(during[:in_collection])
    print(f"collection after {args.remove} image deletes: {sweep * 1000:.0f} ms, freed {freed} blobs "
          f"({sweep / GOAL_COLLECTION:.2f}x the {GOAL_COLLECTION:.0f} s goal)")
    print(f"  phases: {r2.get('phases')}")
    print(f"a pull beside it, until the last freed file is gone ({unlink_tail * 1000:.0f} ms after the "
          f"collection answered): longest step {stall * 1000:.0f} ms over {len(during)} steps "
          f"({stall / GOAL_STALL:.2f}x the {GOAL_STALL * 1000:.0f} ms goal; during the collection "
          f"call alone {stall_in * 1000:.0f} ms); with no collection: {calm * 1000:.0f} ms over {len(idle)} steps")
    print(json.dumps({"bench": "gc", "images": args.images, "blobs": blobs, "mark_only_s": round(mark_only, 3),
                      "mark_sweep_s": round(sweep, 3), "collection_goal_s": GOAL_COLLECTION,
                      "collection_ratio": round(sweep / GOAL_COLLECTION, 2),
                      "pull_stall_s": round(stall, 3), "pull_stall_goal_s": GOAL_STALL,
                      "pull_stall_ratio": round(stall / GOAL_STALL, 2), "pull_steps": len(during),
                      "pull_longest_step_no_gc_s": round(calm, 3),
                      "pull_stall_during_call_s": round(stall_in, 3), "unlink_tail_s": round(unlink_tail, 3),
                      "content_list_s": round(walk_s, 3), "images_list_s": round(list_s, 3),
                      "removed_images": args.remove, "freed_blobs": freed}))


if __name__ == "__main__":
    asyncio.run(main())
