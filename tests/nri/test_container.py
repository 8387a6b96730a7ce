"""End to end: NRI adjustments visible inside a running container (`moor run`), with the
runtime consulting the nri process through the proxy; every container hook reaches the
plugins in order; a plugin's error or a conflict fails `moor run` naming the plugin(s) and
leaves nothing behind. Skipped if the runtime does not call the hooks."""

from __future__ import annotations

import os
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


RECORDER = """#!{python}
from moorage.nri.stub import Adjustment, Plugin, run

LOG = {log!r}


def note(event, pod, container):
    with open(LOG, "a") as f:
        f.write(f"{{event}} {{container.name}} {{pod.id}}\\n")


class Recorder(Plugin):
    async def create_container(self, pod, container):
        note("CreateContainer", pod, container)
        if "nri-fail" in container.args:
            raise RuntimeError("refused by the test")
        if "nri-conflict" in container.args:
            return Adjustment().add_env("HELLO", "from-30")
        return None

    async def post_create_container(self, pod, container):
        note("PostCreateContainer", pod, container)

    async def start_container(self, pod, container):
        note("StartContainer", pod, container)

    async def post_start_container(self, pod, container):
        note("PostStartContainer", pod, container)

    async def update_container(self, pod, container, resources):
        note("UpdateContainer", pod, container)
        return None

    async def post_update_container(self, pod, container):
        note("PostUpdateContainer", pod, container)

    async def stop_container(self, pod, container):
        note("StopContainer", pod, container)
        return None

    async def remove_container(self, pod, container):
        note("RemoveContainer", pod, container)


raise SystemExit(run(Recorder()))
"""


def runtime_calls_nri() -> bool:
    """The runtime wires moorage.nri in (services/runtime/nri.py, used by the task manager)."""
    runtime = REPO / "services" / "runtime"
    return (runtime / "nri.py").exists() and "RuntimeNri" in (runtime / "process.py").read_text()


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
    (plugins / "30-record").write_text(RECORDER.format(python=sys.executable, log=str(tmp / "events.log")))
    (plugins / "30-record").chmod(0o755)
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


def events_of(env: tuple[Suite, str], name: str) -> list[str]:
    s, _ = env
    log = s.root.parent / "events.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [ln.split()[0] for ln in lines if ln.split()[1:2] == [name]]


def nothing_left(env: tuple[Suite, str]) -> None:
    s, ns = env
    out = moor(env, "--json", "containers", "ls")
    assert out.returncode == 0 and out.stdout.strip() in ("", "[]"), out.stdout
    bundles = s.state / "runtime" / "bundles" / ns
    assert not bundles.exists() or os.listdir(bundles) == []
    snaps = moor(env, "snapshots", "ls").stdout.splitlines()[1:]
    assert all("Committed" in line for line in snaps), snaps


def test_every_container_hook_reaches_the_plugins_in_order(env: tuple[Suite, str]) -> None:
    name = "rec" + secrets.token_hex(3)
    r = moor(env, "run", "-d", "--name", name, "busybox", "sleep", "60")
    assert r.returncode == 0, r.stderr
    try:
        r = moor(env, "update", "--cpus", "0.5", name)
        assert r.returncode == 0, r.stderr
    finally:
        r = moor(env, "rm", "-f", name)
    assert r.returncode == 0, r.stderr
    assert events_of(env, name) == [
        "CreateContainer", "PostCreateContainer", "StartContainer", "PostStartContainer",
        "UpdateContainer", "PostUpdateContainer", "StopContainer", "RemoveContainer"]


def test_plugin_error_fails_the_run_naming_it_and_leaves_nothing(env: tuple[Suite, str]) -> None:
    r = moor(env, "run", "--rm", "busybox", "echo", "nri-fail")
    assert r.returncode != 0
    assert 'plugin "30-record"' in r.stderr and "refused by the test" in r.stderr, r.stderr
    nothing_left(env)


def test_conflict_fails_the_run_naming_both_plugins_and_leaves_nothing(env: tuple[Suite, str]) -> None:
    r = moor(env, "run", "--rm", "busybox", "echo", "nri-conflict")
    assert r.returncode != 0
    assert '"10-inject"' in r.stderr and '"30-record"' in r.stderr and "HELLO" in r.stderr, r.stderr
    nothing_left(env)


def test_updates_marked_as_from_nri_skip_the_update_hooks(env: tuple[Suite, str]) -> None:
    """What the nri process sends for plugin-requested updates (metadata moorage-nri-origin)
    is applied without asking the plugins again."""
    import json

    from google.protobuf import any_pb2, empty_pb2

    from moorage import errdefs
    from moorage.api.containerd.services.tasks.v1 import tasks_pb2
    from ttrpc.blocking import Client

    s, ns = env
    name = "upd" + secrets.token_hex(3)
    r = moor(env, "run", "-d", "--name", name, "busybox", "sleep", "60")
    assert r.returncode == 0, r.stderr
    try:
        body = json.dumps({"cpu": {"quota": 50000, "period": 100000}}).encode()
        req = tasks_pb2.UpdateTaskRequest(container_id=name, resources=any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", value=body))
        with Client(s.address, error_factory=errdefs.from_status) as c:
            c.unary("containerd.services.tasks.v1.Tasks", "Update", req, empty_pb2.Empty, timeout=30,
                    metadata={"containerd-namespace-ttrpc": ns, "moorage-nri-origin": "1"})
    finally:
        r = moor(env, "rm", "-f", name)
    assert r.returncode == 0, r.stderr
    events = events_of(env, name)
    assert "UpdateContainer" not in events and "PostUpdateContainer" not in events, events
    assert events[-2:] == ["StopContainer", "RemoveContainer"]
