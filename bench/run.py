"""`moor run --rm busybox true` vs containerd 1.6's `ctr run --rm`, same shim, runc and image;
50 containers started concurrently; the suite's memory with 50 running.

    .venv/bin/python bench/run.py [--runs 15] [--warmup 2] [--concurrent 50] [--skip-containerd]
                                  [--cpus 0] [--no-prestart]

- moorage: a suite started here (proxy, content, snapshots, transfer, runtime; uvloop) under
  a tmp root; the busybox image (tests/runtime/ociimage.py, from busybox-static) imported
  through the transfer service with an overlayfs unpack. Whole `moor` processes are timed
  (CLI start included), stdout to /dev/null.
- containerd: `containerd` 1.6 started here on a temp root/state/socket (CRI disabled), the
  same OCI archive imported with `ctr images import`, stopped (and its dirs removed) after.
  Both use Debian's containerd-shim-runc-v2 and runc. The two are interleaved run by run,
  alternating which goes first.
- placement: `--cpus LIST` pins this process before anything starts, so both suites, their
  shims and runc, and every `moor`/`ctr` inherit the same CPUs (perf-anchors.md: compare
  only under the same placement); default unpinned. Start-up floors: `python -c pass`,
  `moor version` and `ctr version` (each a round trip to its daemon) in the same run.
- concurrency: N `moor run -d busybox sleep 1000` at once; wall time until all returned;
  then RSS of the suite's own processes (shims counted apart); then all removed.

Measured twice: the default runtime config, then (unless --no-prestart) with `[runtime]
shim_prestart = true` (a shim started ahead per namespace; same binary, one task per shim).
The concurrent part (skipped with --concurrent 0) runs with the last config. Goal (issue 7): ratio moor/ctr <= 1.0 (`ratio`, default config).
The last line is one JSON object.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds ttrpc.py: keep it off the path so the ttrpc package is found
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.append(str(REPO / "tests"))
sys.path.append(str(REPO))  # for bench.anchor, after site-packages: the repo's folders shadow nothing

from bench import anchor  # noqa: E402
from runtime.helpers import shims_of  # noqa: E402
from runtime.ociimage import NAME, build_archive, import_image  # noqa: E402
from suite import Suite  # noqa: E402

MOOR = str(REPO / ".venv" / "bin" / "moor")
NS = "bench"

def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode()[-500:]}")
    return dt


def wait_quiet(limit: float = 0.85, timeout: float = 30.0) -> float:
    """Wait (bounded) until the machine is mostly idle over 1 s; returns the idle share seen."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    deadline = time.monotonic() + timeout
    idle = 0.0
    while time.monotonic() < deadline:
        i0, t0 = sample()
        time.sleep(1.0)
        i1, t1 = sample()
        idle = (i1 - i0) / max(1, t1 - t0)
        if idle >= limit:
            break
    return idle


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop(ctrd: anchor.Containerd) -> None:
    try:
        subprocess.run([*ctrd.ctr, "images", "rm", "--sync", NAME], capture_output=True)
    finally:
        ctrd.stop()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--concurrent", type=int, default=50)
    p.add_argument("--skip-containerd", action="store_true")
    p.add_argument("--cpus", default="", help="pin everything to these CPUs, e.g. 0 or 0,1")
    p.add_argument("--no-prestart", action="store_true")
    args = p.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    tmp = Path(tempfile.mkdtemp(prefix="moorage-benchrun-", dir="/tmp"))
    archive = build_archive(tmp / "busybox.tar")
    suite = Suite(tmp, suite={"event_loop": "uvloop", "log_level": "warning"})
    ctrd: anchor.Containerd | None = None
    result: dict[str, object] = {"bench": "run", "runs": args.runs, "cpus": args.cpus or "unpinned"}
    try:
        for name in ("proxy", "content", "snapshots", "transfer", "runtime"):
            suite.start(name)
        import_image(suite.address, archive, namespace=NS)
        moor = [MOOR, "--address", suite.address, "--namespace", NS]
        env = suite.env()
        # this host sets PYTHONDONTWRITEBYTECODE: without cached bytecode every `moor` would
        # recompile its modules (~0.2 s); an ordinary install has its .pyc files
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([*moor, "ps"], env=env, capture_output=True)  # writes the caches once
        if not args.skip_containerd and shutil.which("containerd") and shutil.which("ctr"):
            ctrd = anchor.Containerd(namespace=NS, prefix="ctrd-run-").start()
            subprocess.run([*ctrd.ctr, "images", "import", "--snapshotter", "overlayfs",
                            str(archive)], check=True, capture_output=True)
        idle = wait_quiet()
        result["idle_before"] = round(idle, 2)

        def compare(tag: str) -> None:
            m_times: list[float] = []
            c_times: list[float] = []
            for i in range(args.warmup + args.runs):
                def ctr_run() -> float:
                    return timed([*ctrd.ctr, "run", "--rm", NAME, f"benchrun{tag.replace('_', '-')}-{i}",
                                  "/bin/true"]) if ctrd else 0.0

                dc = ctr_run() if i % 2 else 0.0
                dm = timed([*moor, "run", "--rm", "busybox", "true"], env)
                if not i % 2:
                    dc = ctr_run()
                if i >= args.warmup:
                    m_times.append(dm)
                    if ctrd:
                        c_times.append(dc)
            key = "moor_run_rm" + tag
            result[f"{key}_ms"] = round(median(m_times) * 1000, 1)
            result[f"{key}_min_ms"] = round(min(m_times) * 1000, 1)
            result[f"{key}_max_ms"] = round(max(m_times) * 1000, 1)
            if ctrd:
                result[f"ctr_run_rm{tag}_ms"] = round(median(c_times) * 1000, 1)
                result[f"ctr_run_rm{tag}_min_ms"] = round(min(c_times) * 1000, 1)
                result[f"ctr_run_rm{tag}_max_ms"] = round(max(c_times) * 1000, 1)
                result[f"ratio{tag}"] = round(median(m_times) / median(c_times), 2)

        # process floors in the same conditions (the anchors: python 15 ms, ctr version 12 ms)
        floors_py = [timed([sys.executable, "-c", "pass"], env) for _ in range(5)]
        result["python_floor_ms"] = round(median(floors_py) * 1000, 1)
        result["moor_version_ms"] = round(median([timed([*moor, "version"], env) for _ in range(5)])
                                          * 1000, 1)
        if ctrd:
            result["ctr_floor_ms"] = round(median([timed([*ctrd.ctr, "version"]) for _ in range(5)])
                                           * 1000, 1)
        result["loadavg_1m"] = float(open("/proc/loadavg").read().split()[0])
        compare("")
        if not args.no_prestart:  # the same with a shim started ahead
            suite.stop("runtime")
            with open(suite.config_path, "a") as f:
                f.write("\n[runtime]\nshim_prestart = true\n")
            suite.start("runtime")
            compare("_prestart")
        if ctrd:
            result["containerd_version"] = ctrd.version
            stop(ctrd)
            ctrd = None

        # N containers at once
        n = args.concurrent
        if n > 0:
            baseline = sum(rss_kib(p.popen.pid) for p in suite.procs.values())
            wait_quiet(timeout=10)
            t = time.perf_counter()

            def start(i: int) -> int:
                r = subprocess.run([*moor, "run", "-d", "--name", f"c{i}", "busybox", "sleep", "1000"],
                                   capture_output=True, env=env)
                return r.returncode

            with ThreadPoolExecutor(n) as pool:
                codes = list(pool.map(start, range(n)))
            result["concurrent"] = n
            result["concurrent_start_s"] = round(time.perf_counter() - t, 2)
            result["concurrent_failures"] = sum(1 for c in codes if c != 0)
            running = subprocess.run([*moor, "ps", "-q"], capture_output=True, text=True, env=env)
            result["concurrent_running"] = len(running.stdout.split())
            suite_rss = {name: rss_kib(p.popen.pid) for name, p in suite.procs.items()}
            result["suite_rss_mib_with_running"] = round(sum(suite_rss.values()) / 1024, 1)
            result["suite_rss_mib_idle"] = round(baseline / 1024, 1)
            result["suite_rss_mib_by_process"] = {k: round(v / 1024, 1) for k, v in suite_rss.items()}
            shims = shims_of(NS)
            result["shims"] = len(shims)
            result["shims_rss_mib"] = round(sum(rss_kib(s) for s in shims) / 1024, 1)
            t = time.perf_counter()

            def remove(i: int) -> int:
                return subprocess.run([*moor, "rm", "-f", f"c{i}"], capture_output=True, env=env).returncode

            with ThreadPoolExecutor(n) as pool:
                list(pool.map(remove, range(n)))
            result["concurrent_remove_s"] = round(time.perf_counter() - t, 2)
            result["left_after_remove"] = len(subprocess.run([*moor, "ps", "-a", "-q"], capture_output=True,
                                                             text=True, env=env).stdout.split())
    finally:
        if ctrd is not None:
            stop(ctrd)
        suite.close()
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = result.get("ratio")
    result["goal_ratio_le_1"] = bool(ratio is not None and float(ratio) <= 1.0)  # type: ignore[arg-type]
    for tag, what in (("", "default"), ("_prestart", "shim_prestart")):
        if f"moor_run_rm{tag}_ms" not in result:
            continue
        print(f"  moor run --rm busybox true ({what})  {result[f'moor_run_rm{tag}_ms']:7.1f} ms median "
              f"[{result[f'moor_run_rm{tag}_min_ms']}-{result[f'moor_run_rm{tag}_max_ms']}]")
        if f"ctr_run_rm{tag}_ms" in result:
            print(f"  ctr run --rm ({result.get('containerd_version', '')}), interleaved  "
                  f"{result[f'ctr_run_rm{tag}_ms']:7.1f} ms median [{result[f'ctr_run_rm{tag}_min_ms']}-"
                  f"{result[f'ctr_run_rm{tag}_max_ms']}]   ratio {result[f'ratio{tag}']} (goal <= 1.0)")
    print(f"  floors: python -c pass {result.get('python_floor_ms')} ms, moor version "
          f"{result.get('moor_version_ms')} ms, ctr version {result.get('ctr_floor_ms')} ms "
          f"(cpus {result['cpus']}, load average {result.get('loadavg_1m')}, idle before "
          f"{result.get('idle_before')})")
    if "concurrent" in result:
        print(f"  {result['concurrent']} concurrent `moor run -d`: {result['concurrent_start_s']} s, "
              f"{result['concurrent_running']} running; suite RSS {result['suite_rss_mib_with_running']} MiB "
              f"(idle {result['suite_rss_mib_idle']}), shims {result['shims_rss_mib']} MiB")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
