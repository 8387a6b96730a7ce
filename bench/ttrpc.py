"""ttrpc: our Python ttrpc against Go's containerd/ttrpc 1.1.1, in one run.

For each CPU placement, "same" (server and client both on CPU 0) and "split" (server on
CPU 0, client on CPU 1), and for each implementation (Go: .build/ttrpc-gopeer; Python:
this file's ``serve`` and ``client`` modes on uvloop), a server process and a client
process measure, with moorage.test.v1.Echo and a 64 B payload: sequential unary round
trips (p50, p99), requests/s with 1, 8 and 64 concurrent callers on one connection, and
MB/s of 1 MiB Echo calls (payload in one direction). Each placement runs Go, Python,
Python, Go (so both see the same background load) and keeps each figure's better run.
Prints both figures and the ratios; the last line is one JSON object.

    python bench/ttrpc.py [--dur 1.0] [--calls 5000] [--big-calls 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the package it measures: keep bench/ off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests" / "ttrpc"))
GOPEER = ROOT / ".build" / "ttrpc-gopeer"
SERVICE = "moorage.test.v1.Echo"
PLACEMENTS = {"same": ("0", "0"), "split": ("0", "1")}
CALLERS = (1, 8, 64)


async def serve(path: str) -> None:
    from ttrpc.server import Server
    from ttrpctest.echo_pb2 import EchoRequest, EchoResponse
    from ttrpctest.echo_ttrpc import EchoServicer

    class Echo(EchoServicer):
        async def Echo(self, request: EchoRequest, ctx: Any) -> EchoResponse:
            return EchoResponse(data=request.data)

        async def Sink(self, request: EchoRequest, ctx: Any) -> EchoResponse:
            return EchoResponse()

    server = Server()
    server.register(Echo())
    await server.listen_unix(path)
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()


async def client(path: str, dur: float, calls: int, big_calls: int) -> dict[str, Any]:
    from ttrpc.client import Client
    from ttrpctest.echo_pb2 import EchoRequest
    from ttrpctest.echo_ttrpc import EchoClient

    conn = await Client.connect(path)
    echo = EchoClient(conn)
    small = EchoRequest(data=bytes(64))
    for _ in range(2000):
        await echo.Echo(small)
    lat = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t = clock()
        await echo.Echo(small)
        lat.append(clock() - t)
    lat.sort()
    out: dict[str, Any] = {
        "p50_us": lat[len(lat) // 2] / 1e3,
        "p99_us": lat[int((len(lat) - 1) * 0.99)] / 1e3,
    }
    rps = {}
    for k in CALLERS:
        count = 0
        deadline = time.monotonic() + dur

        async def caller() -> None:
            nonlocal count
            while time.monotonic() < deadline:
                await echo.Echo(small)
                count += 1

        start = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(k)))
        rps[str(k)] = count / (time.monotonic() - start)
    out["rps"] = rps
    big = EchoRequest(data=bytes(1 << 20))
    start = time.monotonic()
    for _ in range(big_calls):
        await echo.Echo(big)
    out["echo_1mib_mbps"] = big_calls * (1 << 20) / (time.monotonic() - start) / 1e6
    await conn.close()
    return out


def taskset(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def measure(impl: str, placement: str, args: argparse.Namespace) -> dict[str, Any]:
    server_cpu, client_cpu = PLACEMENTS[placement]
    sock = os.path.join(tempfile.mkdtemp(prefix="ttrpc-bench-"), "s.sock")
    if impl == "go":
        server_cmd = [str(GOPEER), "server", "-addr", sock]
        client_cmd = [
            str(GOPEER), "bench", "-addr", sock, "-dur", f"{args.dur}s",
            "-n", str(args.calls), "-bigcalls", str(args.big_calls),
        ]
    else:
        me = [sys.executable, __file__]
        server_cmd = [*me, "serve", sock]
        client_cmd = [
            *me, "client", sock, "--dur", str(args.dur),
            "--calls", str(args.calls), "--big-calls", str(args.big_calls),
        ]
    server = subprocess.Popen(taskset(server_cpu) + server_cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{impl} server did not start")
        out = subprocess.run(taskset(client_cpu) + client_cmd, check=True, capture_output=True, text=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's better value over the runs (lower latency, higher rates)."""
    return {
        "p50_us": min(r["p50_us"] for r in runs),
        "p99_us": min(r["p99_us"] for r in runs),
        "rps": {k: max(r["rps"][k] for r in runs) for k in runs[0]["rps"]},
        "echo_1mib_mbps": max(r["echo_1mib_mbps"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode")
    s = sub.add_parser("serve")
    s.add_argument("path")
    c = sub.add_parser("client")
    c.add_argument("path")
    for p in (parser, c):
        p.add_argument("--dur", type=float, default=1.0)
        p.add_argument("--calls", type=int, default=5000)
        p.add_argument("--big-calls", type=int, default=100)
    args = parser.parse_args()

    import ttrpc

    if args.mode == "serve":
        ttrpc.run(serve(args.path))
        return 0
    if args.mode == "client":
        print(json.dumps(ttrpc.run(client(args.path, args.dur, args.calls, args.big_calls))))
        return 0

    if not GOPEER.exists():
        subprocess.run(["make", "-s", "gopeer"], cwd=ROOT, check=True)
    results: dict[str, Any] = {}
    for placement in PLACEMENTS:
        runs: dict[str, list[dict[str, Any]]] = {"go": [], "py": []}
        for impl in ("go", "py", "py", "go"):
            runs[impl].append(measure(impl, placement, args))
        go, py = best(runs["go"]), best(runs["py"])
        results[placement] = {"go": go, "py": py}
        print(f"[{placement}: server CPU {PLACEMENTS[placement][0]}, client CPU {PLACEMENTS[placement][1]}]")
        print(f"  {'':22} {'go':>10} {'python':>10} {'py/go':>7}")
        rows = [("p50 µs", "p50_us"), ("p99 µs", "p99_us")]
        rows += [(f"req/s {k} callers", ("rps", str(k))) for k in CALLERS]
        rows += [("1 MiB echo MB/s", "echo_1mib_mbps")]
        for label, key in rows:
            g = go[key[0]][key[1]] if isinstance(key, tuple) else go[key]
            p = py[key[0]][key[1]] if isinstance(key, tuple) else py[key]
            print(f"  {label:22} {g:10.1f} {p:10.1f} {p / g:7.2f}")
    summary = {
        "bench": "ttrpc",
        **{
            f"{pl}_{impl}_{name}": round(val, 1)
            for pl, r in results.items()
            for impl in ("go", "py")
            for name, val in (
                ("p50_us", r[impl]["p50_us"]),
                ("p99_us", r[impl]["p99_us"]),
                ("rps64", r[impl]["rps"]["64"]),
                ("rps8", r[impl]["rps"]["8"]),
                ("rps1", r[impl]["rps"]["1"]),
                ("mib_mbps", r[impl]["echo_1mib_mbps"]),
            )
        },
    }
    for pl, r in results.items():
        summary[f"{pl}_p50_ratio"] = round(r["py"]["p50_us"] / r["go"]["p50_us"], 2)
        summary[f"{pl}_rps64_ratio"] = round(r["py"]["rps"]["64"] / r["go"]["rps"]["64"], 2)
    summary["goal_met"] = all(
        summary[f"{pl}_p50_ratio"] <= 1.0 and summary[f"{pl}_rps64_ratio"] >= 0.5 for pl in results
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
