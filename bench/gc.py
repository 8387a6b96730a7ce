"""One garbage collection over 1 000 images and 10 000 blobs, through a real suite.

    .venv/bin/python bench/gc.py [--images 1000] [--layers 8000] [--remove 500]

Starts the proxy, content, snapshots and transfer on a temporary root (automatic collection
off), writes ``layers`` layer blobs, one config and one manifest per image (the manifest
labelled ``containerd.io/gc.ref.content.{config,l.N}`` as a pull leaves it, 12 layers, 4 of
them shared with the next image), creates the images, then times:
- a collection with nothing to free (mark only: every list read through the proxy);
- a collection after ``remove`` images were deleted (mark and sweep).
Times are the wall time of ``moorage.internal.v1.GC/Collect`` as a client sees it.
The last line is one JSON object. Goal (issue 12): a collection under 1 s.
Not measured yet: the pause a collection imposes on a concurrent pull.
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


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=8000)
    ap.add_argument("--remove", type=int, default=500)
    args = ap.parse_args()

    import msgpack

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
        sweep, r2 = await collect()
        freed = len(r2["namespaces"].get("default", {}).get("content", []))  # type: ignore[union-attr]
        await conn.close()
    print(f"setup: {blobs} blobs, {args.images} images in {setup:.1f}s")
    print(f"reads a collection makes: Content.List {walk_s * 1000:.0f} ms, Images.List {list_s * 1000:.0f} ms")
    print(f"collection, nothing to free: {mark_only * 1000:.0f} ms")
    print(f"collection after {args.remove} image deletes: {sweep * 1000:.0f} ms, freed {freed} blobs")
    print(json.dumps({"bench": "gc", "images": args.images, "blobs": blobs, "mark_only_s": round(mark_only, 3),
                      "mark_sweep_s": round(sweep, 3),
                      "content_list_s": round(walk_s, 3), "images_list_s": round(list_s, 3), "removed_images": args.remove, "freed_blobs": freed,
                      "goal_s": 1.0, "pull_stall": "not measured"}))


if __name__ == "__main__":
    asyncio.run(main())
