"""What the proxy costs: the same 64-byte unary Echo straight to a backend and through the
proxy, in one run, on real processes (``moorage serve proxy`` + the test echo backend).

Latency: sequential calls, p50/p99 of each path, and the p50 the proxy adds (goal <= 30 µs).
Throughput: 64 callers multiplexed on one connection for a few seconds per path, req/s of
each and the ratio (goal >= 0.8x direct). Paths alternate over several rounds; medians are
reported. The last line is one JSON object.

    .venv/bin/python bench/proxy.py [--calls N] [--seconds S] [--rounds R] [--callers C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/ holds scripts named like packages (bench/ttrpc.py): keep it off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO / "tests"))

from suite import Suite  # noqa: E402

from moorage.rpc import connect  # noqa: E402

SERVICE = "moorage.test.v1.Echo"
PAYLOAD = b"x" * 64
MD = {"containerd-namespace-ttrpc": "bench"}


async def latency(address: str, calls: int) -> list[float]:
    client = await connect(address)
    try:
        for _ in range(200):
            await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
        out = []
        clock = time.perf_counter
        for _ in range(calls):
            t = clock()
            await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
            out.append((clock() - t) * 1e6)
        return out
    finally:
        await client.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(address: str, callers: int, seconds: float) -> tuple[float, int]:
    client = await connect(address)
    stop = False
    count = 0

    async def caller() -> None:
        nonlocal count
        while not stop:
            await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
            count += 1

    try:
        for _ in range(200):
            await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
        tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        stop = True
        done = count
        elapsed = time.perf_counter() - start
        await asyncio.gather(*tasks)
        return done / elapsed, count
    finally:
        await client.close()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--loop", default=os.environ.get("MOORAGE_TEST_LOOP", "uvloop"))
    ap.add_argument("--pin", choices=["none", "same", "split"], default="same",
                    help="CPU placement: same = every process on CPU 0 (the anchors' 'same'), "
                         "split = servers on CPU 0 and the client on CPU 1, none = the scheduler's")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-", dir="/tmp"))
    from moorage.registry import builtin_names

    disabled = {n: {"enabled": False} for n in builtin_names() if n != "proxy"}
    suite = Suite(tmp, config=disabled, plugins=["skeleton.echo:PROCESS"],
                  suite={"log_level": "warning", "event_loop": args.loop})
    try:
        servers = [suite.start("proxy").pid, suite.start("echo").pid]
        if args.pin != "none" and len(os.sched_getaffinity(0)) > 1:
            for pid in servers:
                os.sched_setaffinity(pid, {0})
            os.sched_setaffinity(0, {0} if args.pin == "same" else {1})
        direct, proxied = suite.socket("echo"), suite.address
        lat: dict[str, list[tuple[float, float]]] = {"direct": [], "proxy": []}
        rps: dict[str, list[float]] = {"direct": [], "proxy": []}
        cpu: dict[str, list[float]] = {"proxy": [], "backend": []}
        for r in range(args.rounds):
            for name, address in (("direct", direct), ("proxy", proxied)):
                samples = await latency(address, args.calls)
                lat[name].append((pct(samples, 0.5), pct(samples, 0.99)))
                before = [cpu_seconds(pid) for pid in servers]
                rate, calls = await throughput(address, args.callers, args.seconds)
                rps[name].append(rate)
                after = [cpu_seconds(pid) for pid in servers]
                if name == "proxy":
                    cpu["proxy"].append((after[0] - before[0]) / calls * 1e6)
                    cpu["backend"].append((after[1] - before[1]) / calls * 1e6)
            print(
                f"round {r + 1}: p50 direct {lat['direct'][-1][0]:.1f} µs, proxy {lat['proxy'][-1][0]:.1f} µs; "
                f"{args.callers} callers direct {rps['direct'][-1]:.0f} req/s, proxy {rps['proxy'][-1]:.0f} req/s",
                flush=True,
            )
    finally:
        suite.close()

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    p50 = {k: med([a for a, _ in v]) for k, v in lat.items()}
    p99 = {k: med([b for _, b in v]) for k, v in lat.items()}
    thr = {k: med(v) for k, v in rps.items()}
    added = p50["proxy"] - p50["direct"]
    cpu_proxy, cpu_backend = med(cpu["proxy"]), med(cpu["backend"])
    ratio = thr["proxy"] / thr["direct"]
    print(f"latency p50: direct {p50['direct']:.1f} µs, proxy {p50['proxy']:.1f} µs, added {added:.1f} µs (goal <= 30)")
    print(f"latency p99: direct {p99['direct']:.1f} µs, proxy {p99['proxy']:.1f} µs")
    print(f"throughput at {args.callers} callers: direct {thr['direct']:.0f} req/s, proxy {thr['proxy']:.0f} req/s, "
          f"ratio {ratio:.2f} (goal >= 0.8)")
    print(f"CPU per call through the proxy: proxy {cpu_proxy:.1f} µs, backend {cpu_backend:.1f} µs")
    result = {
        "bench": "proxy",
        "loop": args.loop,
        "pin": args.pin,
        "p50_direct_us": round(p50["direct"], 1),
        "p50_proxy_us": round(p50["proxy"], 1),
        "p50_added_us": round(added, 1),
        "p99_direct_us": round(p99["direct"], 1),
        "p99_proxy_us": round(p99["proxy"], 1),
        "rps_direct": round(thr["direct"]),
        "rps_proxy": round(thr["proxy"]),
        "rps_ratio": round(ratio, 3),
        "callers": args.callers,
        "cpu_us_per_call_proxy": round(cpu_proxy, 1),
        "cpu_us_per_call_backend": round(cpu_backend, 1),
        "goal_added_us": 30,
        "goal_ratio": 0.8,
        "met": added <= 30 and ratio >= 0.8,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if os.environ.get("MOORAGE_TEST_LOOP", "uvloop") == "uvloop":
        from ttrpc.loop import run

        sys.exit(run(main()))
    sys.exit(asyncio.run(main()))
