"""Content ingest and read-back: moorage through the proxy vs containerd 1.6 vs the floor.

    .venv/bin/python bench/content.py [--size-mib 1024] [--trials 3] [--skip-containerd]

One random blob (page-cached) is
- ingested and read back by ``moor content ingest|get`` through a moorage proxy + content
  started here on a temporary root (whole-process wall time, as ctr is timed);
- ingested and read back by ``ctr content ingest|get`` against a containerd started here on
  a temporary root/state with its own config and socket, stopped afterwards;
- written by the floor: a plain Python loop that reads, hashes, writes, fsyncs and renames.
Each ingest is cold (the blob is removed, and gone from disk, before the next trial); the
trials of the three are interleaved so they share the machine's load alike.
Figures are medians in MB/s (10^6 B/s). The last line is one JSON object.
Goals (issue 4): ingest >= 3x containerd and >= 0.7x the floor; read >= containerd.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds ttrpc.py: keep it from shadowing the ttrpc package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO / "tests"))
sys.path.append(str(REPO))  # for bench.anchor, after site-packages: the repo's folders shadow nothing

from bench import anchor  # noqa: E402  (bench/anchor.py: the containerd 1.6 compared against)
from suite import Suite  # noqa: E402  (tests/suite.py: real processes, ready-by-notify)

MB = 1e6


def make_blob(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    with open(path, "rb") as f:  # page-cache it
        while f.read(8 << 20):
            pass
    return "sha256:" + h.hexdigest()


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(cmd: list[str], stdin: Path | None = None, stdout: Path | str = os.devnull,
        env: dict[str, str] | None = None) -> None:
    with open(stdin or os.devnull, "rb") as i, open(stdout, "wb") as o:
        r = subprocess.run(cmd, stdin=i, stdout=o, stderr=subprocess.PIPE, env=env, timeout=600)
    if r.returncode:
        raise RuntimeError(f"{cmd[:4]}... exited {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}")


def floor(blob: Path, out_dir: Path, expected: str) -> float:
    def once() -> None:
        tmp, final = out_dir / "ingest.tmp", out_dir / "blob"
        h = hashlib.sha256()
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        with open(blob, "rb", buffering=0) as src, open(tmp, "wb", buffering=0) as dst:
            while n := src.readinto(buf):
                h.update(mv[:n])
                dst.write(mv[:n])
            os.fsync(dst.fileno())
        assert "sha256:" + h.hexdigest() == expected
        os.rename(tmp, final)
        fd = os.open(out_dir, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    t = timed(once)
    (out_dir / "blob").unlink()
    return t


def wait_gone(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} still there after {timeout}s")
        time.sleep(0.05)


class Moorage:
    """A proxy + content suite on a temporary root, driven by ``moor``."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "moorage").mkdir()
        self.suite = Suite(tmp / "moorage", suite={"event_loop": "uvloop"})
        self.tmp = tmp

    def __enter__(self) -> Moorage:
        self.suite.start("proxy")
        self.suite.start("content")
        return self

    def __exit__(self, *exc: object) -> None:
        self.suite.close()

    def trial(self, i: int, blob: Path, digest: str, size: int) -> tuple[float, float]:
        s = self.suite
        moor = [sys.executable, "-m", "moorage.cli.main", "--address", s.address, "--namespace", "bench"]
        env = s.env()
        ingest = timed(lambda: run(
            [*moor, "content", "ingest", "--expected-size", str(size), "--expected-digest", digest,
             f"bench-{i}"], stdin=blob, env=env))
        read = timed(lambda: run([*moor, "content", "get", digest], env=env))
        out = self.tmp / "readback"
        run([*moor, "content", "get", digest], stdout=out, env=env)
        if out.stat().st_size != size:
            raise RuntimeError("moorage read back the wrong size")
        out.unlink()
        run([*moor, "content", "rm", digest], env=env)
        wait_gone(s.root / "content" / "blobs" / "sha256" / digest[7:])
        return ingest, read


class Containerd(anchor.Containerd):
    """containerd 1.6 on a temporary root/state/socket with its own config; stopped on exit."""

    def __init__(self) -> None:
        super().__init__(plugins=anchor.GC_AT_ONCE)

    def trial(self, i: int, blob: Path, digest: str, size: int) -> tuple[float, float]:
        ingest = timed(lambda: run(
            [*self.ctr, "content", "ingest", "--expected-size", str(size), "--expected-digest", digest,
             f"bench-{i}"], stdin=blob))
        read = timed(lambda: run([*self.ctr, "content", "get", digest]))
        run([*self.ctr, "content", "rm", digest])
        wait_gone(self.root / "io.containerd.content.v1.content" / "blobs" / "sha256" / digest[7:])
        return ingest, read


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--skip-containerd", action="store_true")
    args = p.parse_args()
    size = args.size_mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="bench-content-", dir=os.environ.get("BENCH_TMP", "/var/tmp")))
    try:
        blob = tmp / "blob"
        digest = make_blob(blob, size)
        floor_dir = tmp / "floor"
        floor_dir.mkdir()
        floor_t: list[float] = []
        m_in: list[float] = []
        m_out: list[float] = []
        c_in: list[float] = []
        c_out: list[float] = []
        with contextlib.ExitStack() as stack:
            ours = stack.enter_context(Moorage(tmp))
            theirs = None
            if not args.skip_containerd and shutil.which("containerd"):
                theirs = stack.enter_context(Containerd())
            # interleaved, so the three see the same machine (it may be shared)
            for i in range(args.trials):
                floor_t.append(floor(blob, floor_dir, digest))
                a, b = ours.trial(i, blob, digest, size)
                m_in.append(a)
                m_out.append(b)
                if theirs is not None:
                    a, b = theirs.trial(i, blob, digest, size)
                    c_in.append(a)
                    c_out.append(b)
            version = theirs.version if theirs is not None else ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def rate(ts: list[float]) -> float:
        return size / statistics.median(ts) / MB if ts else 0.0

    r = {
        "bench": "content",
        "size_bytes": size,
        "trials": args.trials,
        "floor_mbps": round(rate(floor_t), 1),
        "moorage_ingest_mbps": round(rate(m_in), 1),
        "moorage_read_mbps": round(rate(m_out), 1),
        "containerd_version": version,
        "containerd_ingest_mbps": round(rate(c_in), 1),
        "containerd_read_mbps": round(rate(c_out), 1),
    }
    r["ingest_vs_containerd"] = round(r["moorage_ingest_mbps"] / r["containerd_ingest_mbps"], 2) if c_in else None
    r["ingest_vs_floor"] = round(r["moorage_ingest_mbps"] / r["floor_mbps"], 2)
    r["read_vs_containerd"] = round(r["moorage_read_mbps"] / r["containerd_read_mbps"], 2) if c_out else None
    r["goals_met"] = bool(
        c_in and r["ingest_vs_containerd"] >= 3 and r["ingest_vs_floor"] >= 0.7 and r["read_vs_containerd"] >= 1
    )
    print(f"content, {size >> 20} MiB, median of {args.trials} (MB/s = 10^6 B/s, whole processes):")
    print(f"  floor (read+hash+write+fsync)   {r['floor_mbps']:8.1f} MB/s   {[round(t, 2) for t in floor_t]} s")
    print(f"  moor content ingest (proxy)     {r['moorage_ingest_mbps']:8.1f} MB/s   {[round(t, 2) for t in m_in]} s")
    print(f"  moor content get    (proxy)     {r['moorage_read_mbps']:8.1f} MB/s   {[round(t, 2) for t in m_out]} s")
    if c_in:
        print(f"  ctr content ingest ({version})  {r['containerd_ingest_mbps']:8.1f} MB/s   {[round(t, 2) for t in c_in]} s")
        print(f"  ctr content get                 {r['containerd_read_mbps']:8.1f} MB/s   {[round(t, 2) for t in c_out]} s")
        print(f"  ingest: {r['ingest_vs_containerd']}x containerd (goal >= 3), {r['ingest_vs_floor']}x floor (goal >= 0.7); "
              f"read: {r['read_vs_containerd']}x containerd (goal >= 1)")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
