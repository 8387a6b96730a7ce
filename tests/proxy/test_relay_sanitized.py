"""The C relay built with AddressSanitizer and UBSan (proxy/relay_build.py), under random,
cut and hostile input from many clients, backends killed mid-call, slow readers and a
drain: any memory error or undefined behaviour the sanitizers see fails the test."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
from pathlib import Path

from moorage.proxy import relay_build
from moorage.rpc import connect
from suite import Suite, skeleton_suite
from ttrpc.frame import DATA, REQUEST, encode_frame, pack_header
from ttrpc.messages import encode_request

ECHO = "moorage.test.v1.Echo"
SERVICES = [ECHO, "moorage.test.v1.Other", "containerd.services.version.v1.Version", "nope.v1.X", ""]
METHODS = ["Echo", "Sleep", "Bidi", "Stream", "Concat", "Version", "Nope"]
NAMESPACES = ["default", "fuzz", "", "Bad/NS", "x" * 80]
MD = {"containerd-namespace-ttrpc": "default"}


def _frames(rng: random.Random) -> bytes:
    """Up to 30 frames of every kind a client may send, good and bad, possibly cut."""
    out, sid = [], 1
    for _ in range(rng.randint(1, 30)):
        k = rng.random()
        if k < 0.5:
            md = [("containerd-namespace-ttrpc", rng.choice(NAMESPACES))] if rng.random() < 0.9 else []
            if rng.random() < 0.1:
                md.append(("containerd-namespace-ttrpc", rng.choice(NAMESPACES)))
            payload = rng.choice([b"1", b"0.01", b"3", rng.randbytes(rng.randint(0, 300))])
            body = encode_request(rng.choice(SERVICES), rng.choice(METHODS), payload, metadata=md)
            if rng.random() < 0.05:
                body = rng.randbytes(len(body))
            stream = sid if rng.random() < 0.9 else rng.randint(0, 50)
            out.append(encode_frame(stream, REQUEST, rng.choice([0, 0, 2, 1]), body))
            sid += 2 * rng.randint(1, 3)
        elif k < 0.8:
            out.append(encode_frame(rng.randint(1, sid + 2), DATA, rng.choice([0, 1, 4, 5]),
                                    rng.randbytes(rng.randint(0, 100))))
        elif k < 0.85:
            out.append(pack_header((4 << 20) + rng.randint(1, 100), sid, rng.choice([REQUEST, DATA]), 0)
                       + rng.randbytes(rng.randint(0, 1000)))
            break
        elif k < 0.9:
            out.append(rng.randbytes(rng.randint(1, 40)))
            break
        else:
            out.append(encode_frame(sid, rng.choice([2, 7, 0]), 0, rng.randbytes(10)))
            sid += 2
    data = b"".join(out)
    return data[: rng.randint(0, len(data))] if rng.random() < 0.3 else data


def _client(address: str, seed: int) -> None:
    rng = random.Random(seed)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(address)
    s.settimeout(0.05)
    try:
        s.sendall(_frames(rng))
        for _ in range(rng.randint(0, 5)):  # read some replies, or none
            if not s.recv(65536):
                break
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()


def _libs() -> str:
    names = ("libasan.so", "libubsan.so")
    return ":".join(subprocess.run(["gcc", f"-print-file-name={n}"], capture_output=True, text=True,
                                   check=True).stdout.strip() for n in names)


async def test_the_relay_under_sanitizers(tmp_path: Path) -> None:
    ext = await asyncio.to_thread(relay_build.build, tmp_path, True)
    reports = tmp_path / "sanitizer"
    suite: Suite = skeleton_suite(tmp_path / "suite")
    suite.extra_env = {
        "MOORAGE_RELAY_EXT": str(ext),
        "LD_PRELOAD": _libs(),
        "ASAN_OPTIONS": f"detect_leaks=0:log_path={reports}",
        "UBSAN_OPTIONS": f"print_stacktrace=1:log_path={reports}",
    }
    try:
        proxy = await asyncio.to_thread(suite.start, "proxy")
        await asyncio.to_thread(suite.start, "echo")
        await asyncio.to_thread(suite.start, "other")
        c = await connect(suite.address)
        assert await c.unary_raw(ECHO, "Echo", b"w", metadata=MD) == b"w"
        for batch in range(24):
            await asyncio.gather(*(asyncio.to_thread(_client, suite.address, batch * 64 + i) for i in range(64)))
            if batch % 8 == 7:  # a backend killed under the clients, then back
                suite.kill("echo", signal.SIGKILL)
                await asyncio.to_thread(suite.start, "echo")
            assert await c.unary_raw(ECHO, "Echo", b"ok", metadata=MD) == b"ok"
        slow = asyncio.ensure_future(c.unary_raw(ECHO, "Sleep", b"0.5", metadata=MD))
        assert await c.unary_raw(ECHO, "Echo", b"x", metadata=MD) == b"x"
        proxy.popen.send_signal(signal.SIGTERM)  # the drain, with a call in flight
        assert await slow == b"0.5"
        assert await asyncio.to_thread(proxy.popen.wait, 30) == 0
        await c.close()
    finally:
        suite.close()
    found = sorted(tmp_path.glob("sanitizer*"))
    assert not found, "\n".join(p.read_text()[:4000] for p in found)
