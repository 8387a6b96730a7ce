"""Wire fidelity of the splice: containerd/ttrpc's Go client, through the proxy, to the Go
server gives the same answers as straight to the Go server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.registry import builtin_names
from suite import Suite

GOPEER = Path(__file__).resolve().parents[2] / ".build" / "ttrpc-gopeer"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not GOPEER.exists(), reason="make gopeer builds the Go peer"),
]


@pytest.fixture
def go_server(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "go.sock")
    proc = subprocess.Popen([str(GOPEER), "server", "-addr", sock], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)
        if os.path.exists(sock):
            os.unlink(sock)


def _client(address: str) -> dict[str, object]:
    out = subprocess.run([str(GOPEER), "client", "-addr", address], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _comparable(result: dict[str, object]) -> dict[str, object]:
    keep: dict[str, object] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if not k.endswith("_ms") and k not in ("elapsed", "ms")}
        keep[key] = value
    return keep


async def test_go_client_through_the_proxy_to_a_go_server(go_server: str, tmp_path: Path) -> None:
    disabled = {n: {"enabled": False} for n in builtin_names() if n != "proxy"}
    suite = Suite(tmp_path / "suite", config={**disabled, "goecho": {"sockets": [go_server]}},
                  plugins=["skeleton.goecho:PROCESS"])
    try:
        await asyncio.to_thread(suite.start, "proxy")
        direct = await asyncio.to_thread(_client, go_server)
        proxied = await asyncio.to_thread(_client, suite.address)
    finally:
        suite.close()
    assert _comparable(proxied) == _comparable(direct)
    assert proxied["concurrent"] == 200
