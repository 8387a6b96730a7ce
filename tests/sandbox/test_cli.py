"""`moor sandbox run|ls|inspect|stop|rm` end to end: real processes (proxy + sandbox service),
real networking, a port mapping reached from the host; nothing left after rm (root)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import CniNet, in_netns
from .test_network import BUSYBOX, _fetch, _free_port, _host_ip

pytestmark = pytest.mark.root


def test_moor_sandbox_end_to_end(testnet: CniNet, tmp_path: Path) -> None:
    suite = pytest.importorskip("suite")
    import time

    cfg = testnet.config()
    config = {
        "sandbox": {
            "cni_conf_dir": cfg.cni_conf_dir,
            "cni_bin_dirs": list(cfg.cni_bin_dirs),
            "netns_prefix": cfg.netns_prefix,
            "cni_add_timeout": 10.0,
            "cni_del_timeout": 10.0,
        }
    }
    (tmp_path / "suite").mkdir()
    s = suite.Suite(tmp_path / "suite", config=config)
    try:
        s.start("proxy")
        s.start("sandbox")

        def moor(*args: str) -> subprocess.CompletedProcess[str]:
            out = s.moor(*args)
            assert out.returncode == 0, out.stderr
            return out

        port = _free_port()
        run = json.loads(moor("--json", "sandbox", "run", "--hostname", "web", "-p", f"{port}:8080", "--label", "app=web", "web").stdout)
        assert run["id"] == "web" and len(run["ips"]) == 1
        moor("sandbox", "run", "db")
        ls = json.loads(moor("--json", "sandbox", "ls").stdout)
        assert [(r["id"], r["state"]) for r in ls] == [("db", "SANDBOX_READY"), ("web", "SANDBOX_READY")]
        table = moor("sandbox", "ls").stdout
        assert "web" in table and run["ips"][0] in table and "app=web" in table

        web, db = json.loads(moor("sandbox", "inspect", "web", "db").stdout)
        assert web["status"]["info"]["hostname"] == "web"
        assert web["extensions"]["io.moorage.sandbox.network"]["type_url"] == "moorage.sandbox.v1.Network"
        ping = in_netns(db["status"]["info"]["netns_path"], BUSYBOX, "ping", "-c", "1", "-W", "3", run["ips"][0])
        assert ping.returncode == 0, ping.stdout

        www = tmp_path / "www"
        www.mkdir()
        (www / "index.html").write_text("served from a moor sandbox\n")
        server = subprocess.Popen(["nsenter", f"--net={web['status']['info']['netns_path']}", BUSYBOX, "httpd", "-f", "-p", "8080", "-h", str(www)])
        try:
            assert b"served from a moor sandbox" in _fetch(_host_ip(), port, time.monotonic() + 10)
        finally:
            server.kill()
            server.wait()

        refused = s.moor("sandbox", "rm", "web")
        assert refused.returncode == 6 and "ready" in refused.stderr
        moor("sandbox", "stop", "web")
        assert json.loads(moor("--json", "sandbox", "ls").stdout)[1]["state"] == "SANDBOX_NOTREADY"
        moor("sandbox", "rm", "web")
        moor("sandbox", "rm", "-f", "db")
        assert json.loads(moor("--json", "sandbox", "ls").stdout) == []
        missing = s.moor("sandbox", "inspect", "web")
        assert missing.returncode == 3
        dup = s.moor("sandbox", "run", "-p", "notaport", "x")
        assert dup.returncode == 2
        testnet.assert_clean()
    finally:
        s.close()


def test_cli_imports_no_asyncio() -> None:
    import sys

    code = (
        "import sys\n"
        "from moorage.services.sandbox import cli, contract\n"
        "from moorage.api.containerd.services.sandbox.v1 import sandbox_ttrpc\n"
        "import ttrpc.blocking\n"
        "print(sorted(m for m in ('asyncio', 'uvloop', 'pyroute2', 'msgpack') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
