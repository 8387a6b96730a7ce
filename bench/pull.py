"""Pull with unpack of a multi-layer image from a local registry: moorage vs containerd 1.6.

    .venv/bin/python bench/pull.py [--layers 4] [--layer-mib 32] [--trials 3] [--skip-containerd]

A plain-HTTP Debian docker-registry is started on loopback (tests/transfer/registry.py) and
given one image built with umoci: busybox-static plus `--layers` layers of random bytes
(`--layer-mib` each, so gzip cannot shrink them: 100+ MB in all by default), pushed with
skopeo. Each trial is cold and timed as a whole process:
- `moor pull` (unpack into overlayfs) against a fresh moorage suite (proxy, content,
  snapshots, transfer) started here on a temporary root;
- `ctr pull --plain-http` (unpacks into overlayfs by default) against a containerd 1.6
  started here on a temporary root/state/socket with its own config, stopped afterwards.
Trials alternate between the two. Figures are medians in seconds; the last line is one JSON
object. Goal (issue 6): moorage / containerd wall-time ratio <= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds ttrpc.py: keep it from shadowing the ttrpc package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from bench import anchor  # noqa: E402
from suite import Suite  # noqa: E402
from tests.transfer import registry as regfix  # noqa: E402

def build(work: Path, layers: int, layer_mib: int) -> Path:
    files = [{f"data/layer{i}.bin": os.urandom(layer_mib << 20)} for i in range(layers)]
    return regfix.build_image(work / "image", files)


def moorage_trial(ref: str) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-", dir="/tmp"))
    s = Suite(tmp, suite={"log_level": "warning"})
    try:
        for name in ("proxy", "content", "snapshots", "transfer"):
            s.start(name)
        cmd = [sys.executable, "-m", "moorage.cli.main", "--address", s.address, "--namespace", "bench",
               "pull", "--plain-http", ref]
        t = time.perf_counter()
        r = subprocess.run(cmd, env=s.env(), capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"moor pull failed: {r.stderr[-2000:]}")
        return elapsed
    finally:
        s.close()
        anchor.unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def containerd_trial(ref: str) -> tuple[float, str]:
    with anchor.Containerd(prefix="ctrd-bench-") as ctrd:
        t = time.perf_counter()
        r = subprocess.run([*ctrd.ctr, "images", "pull", "--plain-http", ref], capture_output=True, text=True,
                           timeout=600)
        elapsed = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"ctr pull failed: {r.stderr[-2000:]}")
        return elapsed, ctrd.version


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--layer-mib", type=int, default=32)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--skip-containerd", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pull-bench-", dir="/tmp"))
    ours: list[float] = []
    theirs: list[float] = []
    version = ""
    try:
        layout = build(work, args.layers, args.layer_mib)
        total = sum(f.stat().st_size for f in (layout / "blobs" / "sha256").iterdir())
        with regfix.running(work / "registry", "plain") as reg:
            ref = regfix.push(layout, reg, "bench/pull")
            for _ in range(args.trials):
                ours.append(moorage_trial(ref))
                if not args.skip_containerd and shutil.which("containerd"):
                    t, version = containerd_trial(ref)
                    theirs.append(t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = statistics.median(ours)
    c = statistics.median(theirs) if theirs else None
    ratio = round(m / c, 3) if c else None
    print(f"image: {args.layers + 1} layers, {total / 1e6:.1f} MB compressed")
    print(f"  moor pull (unpack overlayfs)      median {m:.2f} s   {[round(x, 2) for x in ours]}")
    if c:
        print(f"  ctr pull ({version})   median {c:.2f} s   {[round(x, 2) for x in theirs]}")
        print(f"  ratio moorage/containerd {ratio} (goal <= 0.8)")
    print(json.dumps({"bench": "pull", "layers": args.layers + 1, "image_mb": round(total / 1e6, 1),
                      "moorage_s": round(m, 3), "containerd_s": round(c, 3) if c else None,
                      "containerd_version": version, "ratio": ratio, "goal": 0.8,
                      "met": bool(ratio is not None and ratio <= 0.8), "trials": args.trials}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
