"""NRI: latency a subscribed plugin adds to the CreateContainer hook, with 0, 1 and 5 plugins.

Runs the real path a container create takes when the runtime consults NRI: a ``moorage``
proxy and nri process (``moorage serve``, under a tmp state dir), the runtime's hook client
(``moorage.nri.client.NriHooks``) calling ``moorage.nri.v1.Hooks/CreateContainer`` through
the proxy, and plugins as separate processes (the sample ``inject`` plugin, each adding its
own env variable) connected to the NRI socket. One proxy + nri pair per plugin count (0,
1, 5), all running at once, measured in interleaved rounds of sequential calls (so load
from elsewhere hits every count alike); reports p50, p99 and the added p50 per plugin
against 0 plugins.
Goal: under 2 ms per plugin at p50. The last line is one JSON object.

    python bench/nri.py [--calls 600] [--rounds 12] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))

SPEC: dict[str, Any] = {
    "process": {"args": ["sh"], "env": ["PATH=/usr/bin:/bin", "TERM=xterm"], "cwd": "/"},
    "annotations": {"io.kubernetes.cri.container-type": "container"},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {"resources": {"memory": {"limit": 1 << 28}, "cpu": {"shares": 1024}}},
}


async def timed(hooks: Any, calls: int, tag: str, samples: list[float]) -> None:
    from moorage.nri.adjust import apply_adjustment

    for i in range(calls):
        t = time.perf_counter()
        adj = await hooks.create_container(SPEC, container_id=f"{tag}-{i}", name="bench")
        apply_adjustment(json.loads(json.dumps(SPEC)), adj)
        samples.append(time.perf_counter() - t)


def stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(samples[max(0, int(len(samples) * 0.99) - 1)] * 1000, 3),
    }


async def wait_plugins(hooks: Any, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(await hooks.list_plugins()) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(await hooks.list_plugins())} of {n} plugins registered")
        await asyncio.sleep(0.05)


async def run(calls: int, loop: str, rounds: int) -> dict[str, Any]:
    """One suite (proxy + nri) per plugin count, all up at once; measured in interleaved
    rounds so that load from elsewhere on the host hits every count alike."""
    from suite import Suite

    from moorage.namespaces import current_namespace
    from moorage.nri.client import NriHooks
    from moorage.registry import builtin_names

    counts = (0, 1, 5)
    tmp = Path(tempfile.mkdtemp(prefix="nri-bench-", dir="/tmp"))
    disabled = {n: {"enabled": False} for n in builtin_names() if n not in ("proxy", "nri")}
    suites: dict[int, Suite] = {}
    hooks: dict[int, Any] = {}
    plugins: list[subprocess.Popen[bytes]] = []
    samples: dict[int, list[float]] = {k: [] for k in counts}
    current_namespace.set("default")
    try:
        for k in counts:
            sock = tmp / f"run{k}" / "nri.sock"
            config = {**disabled, "nri": {"socket_path": str(sock), "plugin_path": str(tmp / "none")}}
            s = suites[k] = Suite(tmp / f"s{k}", config=config, suite={"log_level": "warning", "event_loop": loop})
            await asyncio.to_thread(s.start, "proxy")
            await asyncio.to_thread(s.start, "nri")
            for n in range(1, k + 1):
                plugins.append(subprocess.Popen(
                    [sys.executable, "-m", "moorage.nri.plugins.inject", "--idx", f"{10 + n}",
                     "--name", f"inject{n}", "--socket-path", str(sock), "--env", f"BENCH{n}=x"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=s.env(),
                ))
            hooks[k] = NriHooks(s.address, optional=False)
        for k in counts:
            await wait_plugins(hooks[k], k)
            await timed(hooks[k], 20, "warm", [])
        per_round = max(1, calls // rounds)
        for r in range(rounds):
            for k in counts:
                await timed(hooks[k], per_round, f"r{r}", samples[k])
        for h in hooks.values():
            await h.close()
    finally:
        for p in plugins:
            p.terminate()
        for p in plugins:
            p.wait(timeout=10)
        for s in suites.values():
            await asyncio.to_thread(s.close)
        shutil.rmtree(tmp, ignore_errors=True)
    results = {str(k): stats(v) for k, v in samples.items()}
    for k in counts:
        print(f"{k} plugin(s): p50 {results[str(k)]['p50_ms']} ms, p99 {results[str(k)]['p99_ms']} ms", flush=True)
    base = results["0"]["p50_ms"]
    per1 = round(results["1"]["p50_ms"] - base, 3)
    per5 = round((results["5"]["p50_ms"] - base) / 5, 3)
    return {
        "bench": "nri",
        "path": "NriHooks -> proxy -> nri process -> plugins (CreateContainer hook round trip)",
        "calls": calls,
        "rounds": rounds,
        "event_loop": loop,
        "p50_ms": {k: v["p50_ms"] for k, v in results.items()},
        "p99_ms": {k: v["p99_ms"] for k, v in results.items()},
        "added_p50_ms_per_plugin_1": per1,
        "added_p50_ms_per_plugin_5": per5,
        "goal_ms_per_plugin": 2.0,
        "goal_met": max(per1, per5) < 2.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="event loop of the nri process (plugins use uvloop when installed)")
    args = ap.parse_args()
    from ttrpc.loop import run as run_loop

    summary = run_loop(run(args.calls, args.loop, args.rounds))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
