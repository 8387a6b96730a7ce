"""What the proxy costs: the same 64-byte unary Echo straight to a backend and through the
proxy, in one run, on real processes (``moorage serve proxy`` + the test echo backend). The
proxy serves as configured by default: its C relay (proxy/relay.c) carries these calls.

Latency: sequential calls, the paths taking turns every 50 calls (so a shared machine's
slow moments fall on every path alike), p50/p99 of each path, and the p50 the proxy adds (goal
<= 30 µs).
Throughput: 64 callers multiplexed on one connection for a few seconds per path, the two
paths taking turns every quarter second, req/s of each and their ratio (goal >= 0.8x direct;
the median of the rounds' ratios). Paths alternate over several rounds; medians are
reported, with the load average before and after (the machine is shared), and what the proxy
added in each round: this host's speed drifts from minute to minute (the direct call's p50
moves between about 90 and 135 µs, and every hop's cost with it), so one median hides it.

Two more paths are references for the latency: ``floor``, the least a user-space hop can do
(bench/hopfloor.c, built here with cc: one thread, epoll, read and write, each client with its
own backend connection, no parsing, scheduled as the relay is), so that ``proxy - floor`` is
what the relay does besides moving bytes; and ``splice``, a second proxy with its relay off
(``[proxy] relay = false``: the Python splice carries every call) routing to the same
backend. CPU per call of the middle process (utime+stime over the sequential calls) is
reported for each: it is much less noisy than wall time on a loaded
machine. Every thread of every process is pinned (``--pin``). The last line is one JSON
object.

    .venv/bin/python bench/proxy.py [--calls N] [--seconds S] [--rounds R] [--callers C] [--pin same|split|none]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
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
from ttrpc.client import Client  # noqa: E402

SERVICE = "moorage.test.v1.Echo"
PAYLOAD = b"x" * 64
MD = {"containerd-namespace-ttrpc": "bench"}


def build_floor(tmp: Path) -> str:
    """bench/hopfloor.c compiled into ``tmp``: the path of the binary."""
    binary = tmp / "hopfloor"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "hopfloor.c")], check=True)
    return str(binary)


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (sched_setaffinity on a pid moves only its main thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


BLOCK = 50
"""Sequential calls a path makes in a row before the next path takes its turn."""


async def latency(addresses: dict[str, str], calls: int) -> dict[str, list[float]]:
    """``calls`` sequential calls on each path, the paths taking turns every :data:`BLOCK`
    calls, so that every path meets the same moments of a shared machine (and, within a
    block, the warm caches a steady stream of calls has): µs per call."""
    clients = {name: await connect(address) for name, address in addresses.items()}
    try:
        for _ in range(200):
            for client in clients.values():
                await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
        out: dict[str, list[float]] = {name: [] for name in clients}
        clock = time.perf_counter
        for _ in range(0, calls, BLOCK):
            for name, client in clients.items():
                samples = out[name]
                for _ in range(BLOCK):
                    t = clock()
                    await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
                    samples.append((clock() - t) * 1e6)
        return out
    finally:
        for client in clients.values():
            await client.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SLICE = 0.25
"""Seconds a throughput path runs before the other takes its turn (as BLOCK for latency)."""


async def throughput_slice(client: Client, callers: int, seconds: float) -> tuple[int, float]:
    """``callers`` concurrent callers on ``client`` for ``seconds``: (calls done, seconds)."""
    stop = False
    count = 0

    async def caller() -> None:
        nonlocal count
        while not stop:
            await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
            count += 1

    tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    stop = True
    done = count
    elapsed = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return done, elapsed


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--loop", default=os.environ.get("MOORAGE_TEST_LOOP", "uvloop"))
    ap.add_argument("--pin", choices=["none", "same", "split"], default="same",
                    help="CPU placement: same = every process on CPU 0 (the anchors' 'same'), "
                         "split = servers on CPU 0 and the client on CPU 1, none = the scheduler's")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-", dir="/tmp"))
    from moorage.registry import builtin_names

    disabled: dict[str, dict[str, object]] = {n: {"enabled": False} for n in builtin_names() if n != "proxy"}
    disabled["proxy"] = {"gc_auto": False}
    suite = Suite(tmp, config=disabled, plugins=["skeleton.echo:PROCESS"],
                  suite={"log_level": "warning", "event_loop": args.loop})
    forwarder: subprocess.Popen[str] | None = None
    splice_suite: Suite | None = None
    loads = [load()]
    print(f"load average before: {loads[0]}", flush=True)
    try:
        servers = [suite.start("proxy").pid, suite.start("echo").pid]
        direct, proxied, fwd_path = suite.socket("echo"), suite.address, str(tmp / "floor.sock")
        forwarder = subprocess.Popen([build_floor(tmp), fwd_path, direct], stdout=subprocess.PIPE, text=True)
        assert forwarder.stdout is not None
        if forwarder.stdout.readline().strip() != "ready":
            raise RuntimeError("the floor forwarder did not start")
        splice_suite = Suite(tmp / "splice", config={**disabled, "proxy": {"gc_auto": False, "relay": False},
                                                     "echo": {"sockets": [direct]}},
                             plugins=["skeleton.echo:PROCESS"], suite={"log_level": "warning", "event_loop": args.loop})
        splice_pid = splice_suite.start("proxy").pid
        middle = {"direct": servers[1], "floor": forwarder.pid, "splice": splice_pid, "proxy": servers[0]}
        if args.pin != "none" and len(os.sched_getaffinity(0)) > 1:
            for pid in middle.values():
                pin(pid, {0})
            pin(os.getpid(), {0} if args.pin == "same" else {1})
        paths = {"direct": direct, "floor": fwd_path, "splice": splice_suite.address, "proxy": proxied}
        lat: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
        rps: dict[str, list[float]] = {k: [] for k in paths}
        seq_cpu: dict[str, list[float]] = {k: [] for k in paths}

        def added_in(r: int) -> float:
            """p50 the proxy added in round ``r``."""
            return lat["proxy"][r][0] - lat["direct"][r][0]

        cpu: dict[str, list[float]] = {"proxy": [], "backend": []}
        for r in range(args.rounds):
            before_cpu = {name: cpu_seconds(pid) for name, pid in middle.items()}
            samples = await latency(paths, args.calls)
            for name in paths:
                served = (args.calls + 200) * (len(paths) if name == "direct" else 1)  # the backend serves every path
                seq_cpu[name].append((cpu_seconds(middle[name]) - before_cpu[name]) / served * 1e6)
                lat[name].append((pct(samples[name], 0.5), pct(samples[name], 0.99)))
            # throughput: direct and proxy take turns every SLICE seconds, each for --seconds in all
            clients = {name: await connect(paths[name]) for name in ("direct", "proxy")}
            try:
                for client in clients.values():
                    for _ in range(200):
                        await client.unary_raw(SERVICE, "Echo", PAYLOAD, metadata=MD)
                done = {name: 0 for name in clients}
                spent = {name: 0.0 for name in clients}
                used = [0.0, 0.0]  # proxy's and backend's CPU over the proxy's turns
                for _ in range(max(1, round(args.seconds / SLICE))):
                    for name, client in clients.items():
                        before = [cpu_seconds(pid) for pid in servers]
                        calls, elapsed = await throughput_slice(client, args.callers, SLICE)
                        done[name] += calls
                        spent[name] += elapsed
                        if name == "proxy":
                            used = [u + cpu_seconds(pid) - b for u, pid, b in zip(used, servers, before)]
            finally:
                for client in clients.values():
                    await client.close()
            for name in clients:
                rps[name].append(done[name] / spent[name])
            cpu["proxy"].append(used[0] / done["proxy"] * 1e6)
            cpu["backend"].append(used[1] / done["proxy"] * 1e6)
            print(
                f"round {r + 1}: p50 direct {lat['direct'][-1][0]:.1f} µs, floor {lat['floor'][-1][0]:.1f} µs, "
                f"splice {lat['splice'][-1][0]:.1f} µs, proxy {lat['proxy'][-1][0]:.1f} µs (adds {added_in(r):.1f}, the floor "
                f"{lat['floor'][-1][0] - lat['direct'][-1][0]:.1f}); {args.callers} callers direct {rps['direct'][-1]:.0f} req/s, "
                f"proxy {rps['proxy'][-1]:.0f} req/s ({rps['proxy'][-1] / rps['direct'][-1]:.2f}x); load {load()}",
                flush=True,
            )
    finally:
        if forwarder is not None:
            forwarder.kill()
            forwarder.wait()
        if splice_suite is not None:
            splice_suite.close()
        suite.close()
        shutil.rmtree(tmp, ignore_errors=True)
    loads.append(load())

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    p50 = {k: med([a for a, _ in v]) for k, v in lat.items()}
    p99 = {k: med([b for _, b in v]) for k, v in lat.items()}
    thr = {k: med(v) for k, v in rps.items() if v}
    seq = {k: med(v) for k, v in seq_cpu.items()}
    added = p50["proxy"] - p50["direct"]
    floor = p50["floor"] - p50["direct"]
    cpu_proxy, cpu_backend = med(cpu["proxy"]), med(cpu["backend"])
    ratio = med([p / d for p, d in zip(rps["proxy"], rps["direct"])])
    print(f"load average before/after: {loads[0]} / {loads[1]}; placement {args.pin}")
    print(f"latency p50: direct {p50['direct']:.1f} µs, proxy {p50['proxy']:.1f} µs, added {added:.1f} µs (goal <= 30)")
    print(f"  for reference, added by the floor of a hop (bench/hopfloor.c): {floor:.1f} µs, so the relay's "
          f"own part is {added - floor:.1f} µs; by the splice alone: {p50['splice'] - p50['direct']:.1f} µs")
    print(f"latency p99: direct {p99['direct']:.1f} µs, floor {p99['floor']:.1f} µs, "
          f"splice {p99['splice']:.1f} µs, proxy {p99['proxy']:.1f} µs")
    print(f"CPU per sequential call: backend {seq['direct']:.1f} µs, floor {seq['floor']:.1f} µs, "
          f"splice {seq['splice']:.1f} µs, proxy {seq['proxy']:.1f} µs")
    print(f"throughput at {args.callers} callers: direct {thr['direct']:.0f} req/s, proxy {thr['proxy']:.0f} req/s, "
          f"ratio {ratio:.2f} (goal >= 0.8)")
    print(f"CPU per call through the proxy at {args.callers} callers: proxy {cpu_proxy:.1f} µs, backend {cpu_backend:.1f} µs")
    result = {
        "bench": "proxy",
        "loop": args.loop,
        "pin": args.pin,
        "load_before": loads[0],
        "load_after": loads[1],
        "p50_direct_us": round(p50["direct"], 1),
        "p50_floor_us": round(p50["floor"], 1),
        "p50_proxy_us": round(p50["proxy"], 1),
        "p50_added_us": round(added, 1),
        "p50_added_rounds_us": [round(added_in(r), 1) for r in range(len(lat["proxy"]))],
        "p50_hop_floor_us": round(floor, 1),
        "p50_relay_own_us": round(added - floor, 1),
        "p50_splice_us": round(p50["splice"], 1),
        "p99_direct_us": round(p99["direct"], 1),
        "p99_proxy_us": round(p99["proxy"], 1),
        "seq_cpu_us_backend": round(seq["direct"], 1),
        "seq_cpu_us_floor": round(seq["floor"], 1),
        "seq_cpu_us_splice": round(seq["splice"], 1),
        "seq_cpu_us_proxy": round(seq["proxy"], 1),
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
