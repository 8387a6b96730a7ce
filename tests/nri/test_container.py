"""End to end: NRI adjustments visible inside a running container (`moor run`), with the
runtime consulting the nri process. Skipped while the runtime does not call the hooks."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from suite import REPO, Suite

pytestmark = [pytest.mark.root, pytest.mark.slow]

LAUNCHER = "#!{python}\nfrom moorage.nri.plugins.{module} import main\nraise SystemExit(main())\n"


def runtime_calls_nri() -> bool:
    return any("moorage.nri" in p.read_text() for p in (REPO / "services" / "runtime").glob("*.py"))


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Suite, str]]:
    if not runtime_calls_nri():
        pytest.skip("the runtime service does not call the NRI hooks yet (moorage.nri.client.NriHooks)")
    from runtime.ociimage import build_archive, import_image

    tmp = Path(tempfile.mkdtemp(prefix="nri-run-", dir="/tmp"))
    plugins, conf = tmp / "plugins", tmp / "conf.d"
    plugins.mkdir()
    conf.mkdir()
    for name, module in (("10-inject", "inject"), ("20-ulimit", "ulimit")):
        (plugins / name).write_text(LAUNCHER.format(python=sys.executable, module=module))
        (plugins / name).chmod(0o755)
    (conf / "inject.conf").write_text('[env]\nHELLO = "from-nri"\n')
    (conf / "ulimit.conf").write_text("[rlimits]\nnofile = { soft = 4321, hard = 4321 }\n")
    s = Suite(tmp, config={"nri": {"socket_path": str(tmp / "run" / "nri.sock"), "plugin_path": str(plugins),
                                   "plugin_config_path": str(conf)}})
    ns = "nri" + secrets.token_hex(3)
    try:
        for name in ("proxy", "content", "snapshots", "transfer", "nri", "runtime"):
            s.start(name)
        import_image(s.address, build_archive(tmp / "busybox.tar"), namespace=ns)
        yield s, ns
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


def moor(env: tuple[Suite, str], *args: str) -> subprocess.CompletedProcess[str]:
    s, ns = env
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", "--address", s.address, "--namespace", ns, *args],
                          env=s.env(), capture_output=True, text=True, timeout=60)


def test_env_adjustment_inside_the_container(env: tuple[Suite, str]) -> None:
    r = moor(env, "run", "--rm", "busybox", "env")
    assert r.returncode == 0, r.stderr
    assert "HELLO=from-nri" in r.stdout.splitlines()


def test_rlimit_adjustment_inside_the_container(env: tuple[Suite, str]) -> None:
    r = moor(env, "run", "--rm", "busybox", "sh", "-c", "ulimit -n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "4321"
