"""Layer unpack and snapshot cycles: moorage through the proxy vs containerd 1.6.

    .venv/bin/python bench/snapshots.py [--trials 3] [--cycles 20] [--skip-containerd]

The test image (built once with Python's tarfile and cached under
/var/tmp/moorage-bench/snapshots-v1): 4 gzip layers, about 20 000 files and 200 MB
uncompressed, with directories, symlinks, hard links, whiteouts and an opaque directory.

- unpack: the layers are put in each side's content store, then applied the way an
  unpacker does, layer on layer: Snapshots.Prepare(parent) -> Diff.Apply -> Commit, over
  ttrpc through the moorage proxy (content read through the proxy too), and over gRPC for
  a containerd started here on a temporary root/state with its own config and socket
  (stopped afterwards). Throughput = uncompressed bytes / wall time of the whole chain.
- cycle: prepare + commit + remove of an empty snapshot, as RPCs (one connection) and as
  three CLI processes (``moor snapshots`` vs ``ctr snapshots``).
Trials alternate between the two sides; figures are medians. The last line is one JSON
object. Goal (issue 5): unpack >= containerd (ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# bench/ holds ttrpc.py (a bench): never let it shadow the ttrpc package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.append(str(REPO / "tests"))  # after site-packages: tests/ttrpc must not shadow ttrpc
sys.path.append(str(REPO))  # for bench.anchor, likewise after site-packages

from bench import anchor  # noqa: E402  (bench/anchor.py: the containerd 1.6 compared against)
from suite import Suite  # noqa: E402  (tests/suite.py: real processes, ready-by-notify)

CACHE = Path("/var/tmp/moorage-bench/snapshots-v1")
MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
NS = "bench"
# containerd's GC would collect an unreferenced chain as soon as its top is removed (the
# bench holds no lease): both sides label every snapshot as a GC root and remove explicitly
GC_ROOT = {"containerd.io/gc.root": "bench"}
MB = 1e6


# -- the test image ------------------------------------------------------------------------


def _pool(rng: random.Random) -> bytes:
    text = b"".join(
        b"def function_%d(x):\n    return x * %d + %d  # a comment about it\n" % (i, i % 7, i % 13)
        for i in range(60000)
    )
    noise = base64.b64encode(rng.randbytes(6 << 20))
    return text + noise + rng.randbytes(2 << 20)


def _layer(rng: random.Random, pool: bytes, n: int, top: str, big: int, whiteouts: list[str]) -> bytes:
    buf = io.BytesIO()
    now = 1_700_000_000
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name: str, kind: bytes, data: bytes = b"", link: str = "", mode: int = 0o644) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, now, link
            ti.uid = ti.gid = rng.choice([0, 0, 0, 1000])
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if ti.size else None)

        for w in whiteouts:
            add(w, tarfile.REGTYPE)
        dirs = [f"{top}"]
        add(top, tarfile.DIRTYPE, mode=0o755)
        files: list[str] = []
        for i in range(n):
            if i % 40 == 0:
                d = f"{rng.choice(dirs)}/d{i}"
                if d.count("/") < 6:
                    dirs.append(d)
                    add(d, tarfile.DIRTYPE, mode=0o755)
            name = f"{rng.choice(dirs)}/f{i}"
            r = rng.random()
            if r < 0.03 and files:
                add(name, tarfile.SYMTYPE, link=rng.choice(files).split("/")[-1])
            elif r < 0.04 and files:
                add(name, tarfile.LNKTYPE, link=rng.choice(files))
            else:
                size = min(int(rng.lognormvariate(8.1, 1.3)), 256 << 10)
                if i < big:
                    size = rng.randint(2 << 20, 6 << 20)
                off = rng.randrange(0, len(pool) - size)
                add(name, tarfile.REGTYPE, pool[off : off + size], mode=rng.choice([0o644, 0o755, 0o600]))
                files.append(name)
    return buf.getvalue()


def build_image() -> list[dict[str, Any]]:
    manifest = CACHE / "layers.json"
    if manifest.exists():
        return list(json.loads(manifest.read_text()))
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    pool = _pool(rng)
    specs = [
        (8000, "usr", 2, []),
        (6000, "opt", 4, []),
        (5000, "srv", 4, ["usr/.wh.nothing"]),
        (1000, "app", 2, ["opt/.wh..wh..opq", "usr/.wh.f3", "usr/.wh.f5"]),
    ]
    layers = []
    for i, (n, top, big, wh) in enumerate(specs):
        raw = _layer(rng, pool, n, top, big, wh)
        z = zlib.compressobj(6, zlib.DEFLATED, 31)
        blob = z.compress(raw) + z.flush()
        path = CACHE / f"layer{i}.tar.gz"
        path.write_bytes(blob)
        layers.append({
            "path": str(path),
            "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
            "diff_id": "sha256:" + hashlib.sha256(raw).hexdigest(),
            "uncompressed": len(raw),
            "entries": n + len(wh),
        })
    manifest.write_text(json.dumps(layers, indent=1))
    return layers


def warm(layers: list[dict[str, Any]]) -> None:
    for layer in layers:
        Path(layer["path"]).read_bytes()


def run(cmd: list[str], env: dict[str, str] | None = None, stdin: Path | None = None) -> None:
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as inp:
        proc = subprocess.run(cmd, stdin=inp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... failed: {proc.stderr.decode(errors='replace')[-800:]}")


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- the two sides, same shape ------------------------------------------------------------


class Side:
    name = ""

    def unpack(self, layers: list[dict[str, Any]], tag: str) -> list[str]:
        """Apply every layer on the previous one; returns the committed keys, top last."""
        parent = ""
        keys = []
        for i, layer in enumerate(layers):
            key = f"{tag}-{i}"
            mounts = self.prepare(key + "-extract", parent)
            applied = self.apply(layer, mounts)
            if applied != layer["diff_id"]:
                raise RuntimeError(f"{self.name}: wrong diff id {applied} for layer {i}")
            self.commit(key, key + "-extract")
            keys.append(key)
            parent = key
        return keys

    def prepare(self, key: str, parent: str) -> Any: ...
    def apply(self, layer: dict[str, Any], mounts: Any) -> str: ...
    def commit(self, name: str, key: str) -> None: ...
    def remove(self, key: str) -> None: ...


class Moorage(Side):
    name = "moorage"

    def __init__(self, tmp: Path, layers: list[dict[str, Any]]) -> None:
        from moorage.api.containerd.services.diff.v1 import diff_pb2
        from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2
        from moorage.api.containerd.types import descriptor_pb2
        from moorage import errdefs
        from ttrpc.blocking import Client

        self.dpb, self.spb, self.despb = diff_pb2, snapshots_pb2, descriptor_pb2
        (tmp / "moorage").mkdir()
        self.suite = Suite(tmp / "moorage", config={"snapshots": {"limits": {"max_ratio": 100000}}})
        self.suite.start("proxy")
        self.suite.start("content")
        self.suite.start("snapshots")
        self.moor = [sys.executable, "-m", "moorage.cli.main", "--address", self.suite.address, "--namespace", NS]
        self.env = self.suite.env()
        asyncio.run(self._ingest(layers))
        self.client = Client(self.suite.address, error_factory=errdefs.from_status)
        self.md = {"containerd-namespace-ttrpc": NS}

    async def _ingest(self, layers: list[dict[str, Any]]) -> None:
        from moorage.namespaces import current_namespace
        from moorage.rpc import connect
        from moorage.services.content.client import ContentClient

        current_namespace.set(NS)
        client = await connect(self.suite.address)
        try:
            content = ContentClient(client)
            for i, layer in enumerate(layers):
                w = await content.writer(f"layer-{i}", layer["size"], layer["digest"])
                try:
                    await w.write(Path(layer["path"]).read_bytes())
                    await w.commit(layer["size"], layer["digest"], {"containerd.io/gc.root": "bench"})
                finally:
                    await w.close()
        finally:
            await client.close()

    def _u(self, svc: str, method: str, req: Any, resp: Any) -> Any:
        return self.client.unary(svc, method, req, resp, timeout=600, metadata=self.md)

    def prepare(self, key: str, parent: str) -> Any:
        return self._u("containerd.services.snapshots.v1.Snapshots", "Prepare",
                       self.spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=key, parent=parent, labels=GC_ROOT),
                       self.spb.PrepareSnapshotResponse).mounts

    def apply(self, layer: dict[str, Any], mounts: Any) -> str:
        desc = self.despb.Descriptor(media_type=MEDIA, digest=layer["digest"], size=layer["size"])
        resp = self._u("containerd.services.diff.v1.Diff", "Apply",
                       self.dpb.ApplyRequest(diff=desc, mounts=mounts), self.dpb.ApplyResponse)
        return str(resp.applied.digest)

    def commit(self, name: str, key: str) -> None:
        from google.protobuf import empty_pb2

        self._u("containerd.services.snapshots.v1.Snapshots", "Commit",
                self.spb.CommitSnapshotRequest(snapshotter="overlayfs", name=name, key=key, labels=GC_ROOT), empty_pb2.Empty)

    def remove(self, key: str) -> None:
        from google.protobuf import empty_pb2

        self._u("containerd.services.snapshots.v1.Snapshots", "Remove",
                self.spb.RemoveSnapshotRequest(snapshotter="overlayfs", key=key), empty_pb2.Empty)

    def cli_cycle(self, key: str) -> None:
        run([*self.moor, "snapshots", "prepare", key + "-a"], env=self.env)
        run([*self.moor, "snapshots", "commit", key, key + "-a"], env=self.env)
        run([*self.moor, "snapshots", "rm", key], env=self.env)

    def close(self) -> None:
        self.client.close()
        self.suite.close()


class Containerd(Side):
    name = "containerd"

    def __init__(self, layers: list[dict[str, Any]]) -> None:
        import grpc

        from moorage.api.containerd.services.diff.v1 import diff_pb2
        from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2
        from moorage.api.containerd.types import descriptor_pb2
        from google.protobuf import empty_pb2

        self.dpb, self.spb, self.despb = diff_pb2, snapshots_pb2, descriptor_pb2
        self.daemon = anchor.Containerd(namespace=NS, plugins=anchor.GC_AT_ONCE).start()
        self.ctr, self.version = self.daemon.ctr, self.daemon.version
        try:
            for i, layer in enumerate(layers):
                run([*self.ctr, "content", "ingest", "--expected-size", str(layer["size"]),
                     "--expected-digest", layer["digest"], f"layer-{i}"], stdin=Path(layer["path"]))
                run([*self.ctr, "content", "label", layer["digest"], "containerd.io/gc.root=bench"])
        except BaseException:
            self.daemon.stop()
            raise
        self.channel = grpc.insecure_channel(f"unix://{self.daemon.sock}")
        md = [("containerd-namespace", NS)]

        def method(svc: str, name: str, req: Any, resp: Any) -> Callable[[Any], Any]:
            call = self.channel.unary_unary(f"/{svc}/{name}", request_serializer=req.SerializeToString,
                                            response_deserializer=resp.FromString)
            return lambda r: call(r, metadata=md, timeout=600)

        S = "containerd.services.snapshots.v1.Snapshots"
        self._prepare = method(S, "Prepare", snapshots_pb2.PrepareSnapshotRequest, snapshots_pb2.PrepareSnapshotResponse)
        self._commit = method(S, "Commit", snapshots_pb2.CommitSnapshotRequest, empty_pb2.Empty)
        self._remove = method(S, "Remove", snapshots_pb2.RemoveSnapshotRequest, empty_pb2.Empty)
        self._apply = method("containerd.services.diff.v1.Diff", "Apply", diff_pb2.ApplyRequest, diff_pb2.ApplyResponse)

    def prepare(self, key: str, parent: str) -> Any:
        return self._prepare(self.spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=key, parent=parent, labels=GC_ROOT)).mounts

    def apply(self, layer: dict[str, Any], mounts: Any) -> str:
        desc = self.despb.Descriptor(media_type=MEDIA, digest=layer["digest"], size=layer["size"])
        return str(self._apply(self.dpb.ApplyRequest(diff=desc, mounts=mounts)).applied.digest)

    def commit(self, name: str, key: str) -> None:
        self._commit(self.spb.CommitSnapshotRequest(snapshotter="overlayfs", name=name, key=key, labels=GC_ROOT))

    def remove(self, key: str) -> None:
        self._remove(self.spb.RemoveSnapshotRequest(snapshotter="overlayfs", key=key))

    def cli_cycle(self, key: str) -> None:
        run([*self.ctr, "snapshots", "prepare", key + "-a"])
        run([*self.ctr, "snapshots", "commit", key, key + "-a"])
        run([*self.ctr, "snapshots", "rm", key])

    def close(self) -> None:
        self.channel.close()
        self.daemon.stop()


def measure(side: Side, layers: list[dict[str, Any]], trial: int, results: dict[str, list[float]]) -> None:
    os.sync()
    t = time.perf_counter()
    keys = side.unpack(layers, f"t{trial}")
    results["unpack"].append(time.perf_counter() - t)
    for key in reversed(keys):
        side.remove(key)
    os.sync()


def cycles(side: Any, n: int, results: dict[str, list[float]]) -> None:
    for i in range(n):
        t = time.perf_counter()
        side.prepare(f"c{i}-a", "")
        side.commit(f"c{i}", f"c{i}-a")
        side.remove(f"c{i}")
        results["cycle_rpc"].append(time.perf_counter() - t)
    for i in range(max(3, n // 4)):
        results["cycle_cli"].append(timed(lambda: side.cli_cycle(f"cli{i}")))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--skip-containerd", action="store_true")
    args = ap.parse_args()

    layers = build_image()
    warm(layers)
    total = sum(layer["uncompressed"] for layer in layers)
    files = sum(layer["entries"] for layer in layers)
    tmp = Path(tempfile.mkdtemp(prefix="snapbench-", dir="/var/tmp"))
    m_res: dict[str, list[float]] = {"unpack": [], "cycle_rpc": [], "cycle_cli": []}
    c_res: dict[str, list[float]] = {"unpack": [], "cycle_rpc": [], "cycle_cli": []}
    moorage: Moorage | None = None
    ctrd: Containerd | None = None
    version = ""
    try:
        moorage = Moorage(tmp, layers)
        if not args.skip_containerd:
            ctrd = Containerd(layers)
            version = ctrd.version
        for trial in range(args.trials):
            measure(moorage, layers, trial, m_res)
            if ctrd is not None:
                measure(ctrd, layers, trial, c_res)
        cycles(moorage, args.cycles, m_res)
        if ctrd is not None:
            cycles(ctrd, args.cycles, c_res)
    finally:
        if moorage is not None:
            moorage.close()
        if ctrd is not None:
            ctrd.close()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else 0.0

    r: dict[str, Any] = {
        "bench": "snapshots",
        "layers": len(layers),
        "files": files,
        "uncompressed_bytes": total,
        "compressed_bytes": sum(layer["size"] for layer in layers),
        "trials": args.trials,
        "moorage_unpack_s": round(med(m_res["unpack"]), 3),
        "moorage_unpack_mbps": round(total / med(m_res["unpack"]) / MB, 1),
        "moorage_cycle_rpc_ms": round(med(m_res["cycle_rpc"]) * 1000, 2),
        "moorage_cycle_cli_ms": round(med(m_res["cycle_cli"]) * 1000, 1),
        "containerd_version": version,
    }
    if ctrd is not None:
        r["containerd_unpack_s"] = round(med(c_res["unpack"]), 3)
        r["containerd_unpack_mbps"] = round(total / med(c_res["unpack"]) / MB, 1)
        r["containerd_cycle_rpc_ms"] = round(med(c_res["cycle_rpc"]) * 1000, 2)
        r["containerd_cycle_cli_ms"] = round(med(c_res["cycle_cli"]) * 1000, 1)
        r["unpack_vs_containerd"] = round(med(c_res["unpack"]) / med(m_res["unpack"]), 2)
        r["cycle_rpc_vs_containerd"] = round(med(c_res["cycle_rpc"]) / med(m_res["cycle_rpc"]), 2)
        r["cycle_cli_vs_containerd"] = round(med(c_res["cycle_cli"]) / med(m_res["cycle_cli"]), 2)
        r["goals_met"] = r["unpack_vs_containerd"] >= 1.0
    print(f"snapshots: {len(layers)} gzip layers, {files} entries, {total / MB:.0f} MB uncompressed "
          f"({r['compressed_bytes'] / MB:.0f} MB gzip); median of {args.trials} (ratio > 1: moorage faster)")
    print(f"  unpack  moorage (proxy, ttrpc)      {r['moorage_unpack_s']:7.3f} s  {r['moorage_unpack_mbps']:7.1f} MB/s  "
          f"{[round(t, 2) for t in m_res['unpack']]}")
    if ctrd is not None:
        print(f"  unpack  containerd {version} (gRPC)  {r['containerd_unpack_s']:7.3f} s  {r['containerd_unpack_mbps']:7.1f} MB/s  "
              f"{[round(t, 2) for t in c_res['unpack']]}")
        print(f"  unpack ratio {r['unpack_vs_containerd']} (goal >= 1.0)")
    print(f"  cycle prepare+commit+rm, RPC: moorage {r['moorage_cycle_rpc_ms']} ms"
          + (f", containerd {r['containerd_cycle_rpc_ms']} ms (ratio {r['cycle_rpc_vs_containerd']})" if ctrd else ""))
    print(f"  cycle prepare+commit+rm, 3 CLI processes: moor {r['moorage_cycle_cli_ms']} ms"
          + (f", ctr {r['containerd_cycle_cli_ms']} ms (ratio {r['cycle_cli_vs_containerd']})" if ctrd else ""))
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
