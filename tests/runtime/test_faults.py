"""Faults (reliability.md §1e, §4 cases 20-21): dead shims, a killed runtime, bad input."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from pathlib import Path

import pytest

from moorage.errdefs import NotFound, Unknown
from moorage.services.runtime import shim as shimmod
from moorage.services.runtime import spec as sp
from moorage.services.runtime.bundle import Bundles
from moorage.services.runtime.containers import SqliteContainerStore
from suite import Suite

from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb

from .helpers import CONTAINERS, Events, Rt, alive, shim_pid, shims_of, wait_until

pytestmark = [pytest.mark.root]


@pytest.fixture
def ns() -> str:
    return "f" + secrets.token_hex(4)


@pytest.fixture
def api(rt: Suite, ns: str) -> Rt:
    r = Rt(rt.address, ns)
    yield r
    r.cleanup()
    r.close()


def bundle_dir(rt: Suite, ns: str, id: str) -> Path:
    return rt.state / "runtime" / "bundles" / ns / id


def mounted(path: Path) -> bool:
    return any(f" {path}" in line for line in open("/proc/self/mountinfo"))


def test_shim_killed_while_container_runs(rt: Suite, api: Rt, ns: str, rootfs: Path) -> None:
    ev = Events(rt.address, [f"namespace=={ns}"])
    pid = api.run("c1", rootfs, ["sleep", "1000"])
    b = bundle_dir(rt, ns, "c1")
    sock = (b / "address").read_text().strip().removeprefix("unix://")
    spid = shim_pid(ns, "c1")
    os.kill(spid, signal.SIGKILL)
    topics = ev.wait_for(lambda t: "/tasks/delete" in t)
    exits = [e for e in ev.items if e.topic == "/tasks/exit"]
    assert topics[-2:] == ["/tasks/exit", "/tasks/delete"]
    assert topics.count("/tasks/exit") == 1 and topics.count("/tasks/delete") == 1
    from moorage.api.containerd.events import task_pb2

    exit_ev = task_pb2.TaskExit()
    exit_ev.ParseFromString(exits[0].event.value)
    assert exit_ev.container_id == "c1" and exit_ev.exit_status in (137, 255)
    with pytest.raises(NotFound):
        api.get("c1")
    assert not b.exists() and not mounted(b / "rootfs")
    wait_until(lambda: not alive(pid), what="container process killed by shim delete")
    assert not os.path.exists(sock), "no orphan socket"
    api.remove("c1")  # the container record stays usable
    assert ev.topics().count("/tasks/delete") == 1
    ev.close()


def test_runtime_killed_containers_keep_running(rt: Suite, api: Rt, ns: str, rootfs: Path,
                                                tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "rootfs2"
    shutil.copytree(rootfs, other, symlinks=True)
    wait_go = "while [ ! -e /tmp/go ]; do sleep 0.05; done"
    pid1 = api.run("c1", rootfs, ["sh", "-c", f"echo before; {wait_go}; echo during; "
                                              "touch /tmp/said; exec sleep 1000"])
    pid2 = api.run("c2", other, ["sh", "-c", f"{wait_go}; exit 7"])
    c1 = api.call(CONTAINERS, "Get", cpb.GetContainerRequest(id="c1"),
                  cpb.GetContainerResponse).container
    wait_until(lambda: "stdout F before" in api.log(c1), what="first line logged")
    rt.kill("runtime", signal.SIGKILL)
    (rootfs / "tmp" / "go").write_text("")
    (other / "tmp" / "go").write_text("")
    wait_until(lambda: not alive(pid2), what="c2 exits while the runtime is down")
    wait_until(lambda: (rootfs / "tmp" / "said").exists(), what="c1 wrote while the runtime is down")
    assert alive(pid1)
    rt.start("runtime")
    api2 = Rt(rt.address, ns)
    try:
        st1, st2 = api2.get("c1"), api2.get("c2")
        assert (st1.status, st1.pid) == (2, pid1)
        assert (st2.status, st2.exit_status) == (3, 7)
        assert api2.wait("c2") == 7
        # what c1 wrote while nobody read waited in the pipe and is logged after reconnect
        wait_until(lambda: "stdout F during" in api2.log(c1), what="output written meanwhile")
        api2.kill("c1", signal.SIGKILL)
        assert api2.wait("c1") == 137
        for id in ("c1", "c2"):
            api2.delete(id)
            api2.remove(id)
        wait_until(lambda: not shims_of(ns), what="shims exit")
    finally:
        api2.close()


def test_dead_shim_found_on_restart(rt: Suite, api: Rt, ns: str, rootfs: Path) -> None:
    pid = api.run("c1", rootfs, ["sleep", "1000"])
    b = bundle_dir(rt, ns, "c1")
    sock = (b / "address").read_text().strip().removeprefix("unix://")
    spid = shim_pid(ns, "c1")
    rt.kill("runtime", signal.SIGKILL)
    os.kill(spid, signal.SIGKILL)
    wait_until(lambda: not alive(spid), what="shim gone")
    ev = Events(rt.address, [f"namespace=={ns}"])
    rt.start("runtime")
    topics = ev.wait_for(lambda t: "/tasks/delete" in t)
    assert topics == ["/tasks/exit", "/tasks/delete"]
    api2 = Rt(rt.address, ns)
    try:
        with pytest.raises(NotFound):
            api2.get("c1")
        assert not b.exists() and not os.path.exists(sock)
        wait_until(lambda: not alive(pid), what="container killed by shim delete")
        api2.remove("c1")
    finally:
        api2.close()
        ev.close()


def test_orphan_shim_reaped_on_restart(rt: Suite, api: Rt, ns: str, rootfs: Path) -> None:
    """The runtime died between shim start and task create: the shim is reaped on restart."""
    c = api.container("c1", ["sleep", "1000"])
    rt.kill("runtime", signal.SIGKILL)
    # what the runtime had done before dying: bundle, record (phase "starting"), shim started
    root, state = rt.root / "runtime", rt.state / "runtime"
    bundles = Bundles(state, root)
    binary = shimmod.binary_for("io.containerd.runc.v2")
    b = bundles.create(ns, "c1", c.spec.value, binary)
    log_fd = b.open_log()
    store = SqliteContainerStore(root / "runtime.db", shimmod.SCHEMA)
    records = shimmod.ShimRecords(store._db)
    records.put(shimmod.ShimRecord(ns, "c1", "io.containerd.runc.v2", binary, str(b.path)))
    flags = shimmod.ShimFlags(address=rt.address, ttrpc_address=rt.address)
    address = asyncio.run(shimmod.run_start(flags, binary, ns, "c1", b.path, b""))
    store.close()
    spid = shim_pid(ns, "c1")
    os.close(log_fd)
    rt.start("runtime")
    wait_until(lambda: not alive(spid), what="orphan shim reaped")
    assert not b.path.exists() and not os.path.exists(address)
    api2 = Rt(rt.address, ns)
    try:
        with pytest.raises(NotFound):
            api2.get("c1")
        # the container can get a task again
        api2.create("c1", rootfs)
        api2.start("c1")
        api2.kill("c1", signal.SIGKILL)
        assert api2.wait("c1") == 137
        api2.delete("c1")
        api2.remove("c1")
    finally:
        api2.close()


def test_unknown_runtime_leaves_nothing(rt: Suite, api: Rt, ns: str, rootfs: Path) -> None:
    api.container("c1", ["true"], runtime="io.containerd.nope.v1")
    with pytest.raises(NotFound, match="containerd-shim-nope-v1"):
        api.create("c1", rootfs)
    assert not bundle_dir(rt, ns, "c1").exists() and shims_of(ns) == []
    api.remove("c1")


def test_bad_command_leaves_nothing(rt: Suite, api: Rt, ns: str, rootfs: Path) -> None:
    api.container("c1", ["/no/such/binary"])
    with pytest.raises(Unknown, match="/no/such/binary"):
        api.create("c1", rootfs)
    assert not bundle_dir(rt, ns, "c1").exists()
    assert not mounted(bundle_dir(rt, ns, "c1") / "rootfs")
    wait_until(lambda: shims_of(ns) == [], what="no shim left")
    with pytest.raises(NotFound):
        api.get("c1")
    # and the same container runs once fixed
    api.remove("c1")
    api.container("c1", ["true"])
    api.create("c1", rootfs)
    api.start("c1")
    assert api.wait("c1") == 0
    api.delete("c1")
    api.remove("c1")
