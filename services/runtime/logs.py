"""The container log format (CRI's): `<RFC3339Nano> <stdout|stderr> <F|P> <text>` per line.

Written by cio.LogFile; read here by `moor logs` / `moor run` (light imports only).
"""

from __future__ import annotations

import os
import time

MAX_LINE = 16 * 1024


def timestamp(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_line(line: bytes) -> tuple[str, str, bool, bytes] | None:
    """(timestamp, stream, complete, text) of one log line, or None if malformed."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    text = parts[3] if len(parts) == 4 else b""
    return parts[0].decode(), parts[1].decode(), parts[2] == b"F", text


def read_log(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[tuple[str, bytes]], int]:
    """Complete log lines from `offset`: [(stream, bytes to write)], the new offset."""
    out: list[tuple[str, bytes]] = []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return out, offset
    end = data.rfind(b"\n")
    if end < 0:
        return out, offset
    for raw in data[: end + 1].splitlines():
        p = parse_line(raw)
        if p is None:
            continue
        _, stream, complete, text = p
        out.append((stream, text + (b"\n" if complete else b"")))
    return out, offset + end + 1
