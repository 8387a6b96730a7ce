"""Tasks on Debian's containerd-shim-runc-v2, through the proxy (root: runc, mounts)."""

from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2

from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.errdefs import FailedPrecondition, InvalidArgument, NotFound
from moorage.services.runtime import spec as sp
from suite import Suite

from .helpers import TASKS, Events, Rt, alive, shim_pid, shims_of, wait_until

pytestmark = [pytest.mark.root]


@pytest.fixture
def ns() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
def api(rt: Suite, ns: str) -> Rt:
    r = Rt(rt.address, ns)
    yield r
    r.cleanup()
    r.close()


def bundles(rt: Suite, ns: str) -> list[str]:
    d = rt.state / "runtime" / "bundles" / ns
    return sorted(os.listdir(d)) if d.exists() else []


def test_run_wait_delete_logs(rt: Suite, api: Rt, ns: str, rootfs: Path) -> None:
    ev = Events(rt.address, [f'namespace=={ns},topic~="^/tasks/"'])
    c = api.container("c1", ["sh", "-c", "echo hi; echo oops >&2; exit 3"])
    pid = api.create("c1", rootfs)
    assert api.get("c1").status == 1  # CREATED
    assert api.start("c1") == pid
    assert api.wait("c1") == 3
    st = api.get("c1")
    assert st.status == 3 and st.exit_status == 3  # STOPPED
    d = api.delete("c1")
    assert d.exit_status == 3 and d.pid == pid
    log = api.log(c)
    assert " stdout F hi\n" in log and " stderr F oops\n" in log
    with pytest.raises(NotFound):
        api.get("c1")
    assert bundles(rt, ns) == []
    wait_until(lambda: not shims_of(ns), what="shim exits after delete")
    assert not any(str(rootfs) in line for line in open("/proc/self/mountinfo"))
    topics = ev.wait_for(lambda t: "/tasks/delete" in t)
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    ev.close()
    api.remove("c1")
    assert not Path(c.labels["moorage/log-path"]).exists()


def test_container_with_task_cannot_be_deleted(api: Rt, rootfs: Path) -> None:
    api.run("c1", rootfs, ["sleep", "1000"])
    with pytest.raises(FailedPrecondition):
        api.remove("c1")
    with pytest.raises(FailedPrecondition):
        api.delete("c1")  # running
    api.kill("c1", signal.SIGKILL)
    assert api.wait("c1") == 137
    api.delete("c1")
    api.remove("c1")


def test_exec_pause_pids_metrics_update(rt: Suite, api: Rt, ns: str, rootfs: Path,
                                        tmp_path: Path) -> None:
    pid = api.run("c1", rootfs, ["sleep", "1000"])
    out = tmp_path / "exec.out"
    proc = sp.process_spec(sp.default_spec(ns, "c1"), ["sh", "-c", "echo from-exec; exit 7"])
    api.call(TASKS, "Exec", tpb.ExecProcessRequest(
        container_id="c1", exec_id="e1", stdout=f"file://{out}", stderr=f"file://{out}",
        spec=any_pb2.Any(type_url=sp.PROCESS_TYPE_URL, value=json.dumps(proc).encode())),
        empty_pb2.Empty)
    api.start("c1", "e1")
    assert api.wait("c1", "e1") == 7
    r = api.call(TASKS, "DeleteProcess", tpb.DeleteProcessRequest(container_id="c1", exec_id="e1"),
                 tpb.DeleteResponse)
    assert r.exit_status == 7 and out.read_text() == "from-exec\n"
    with pytest.raises(InvalidArgument):  # the 1.6 shim would crash without a spec
        api.call(TASKS, "Exec", tpb.ExecProcessRequest(container_id="c1", exec_id="e2"),
                 empty_pb2.Empty)
    pids = api.call(TASKS, "ListPids", tpb.ListPidsRequest(container_id="c1"), tpb.ListPidsResponse)
    assert pid in [p.pid for p in pids.processes]
    api.call(TASKS, "Pause", tpb.PauseTaskRequest(container_id="c1"), empty_pb2.Empty)
    assert api.get("c1").status == 4  # PAUSED
    api.call(TASKS, "Resume", tpb.ResumeTaskRequest(container_id="c1"), empty_pb2.Empty)
    assert api.get("c1").status == 2
    m = api.call(TASKS, "Metrics", tpb.MetricsRequest(filters=["id==c1"]), tpb.MetricsResponse)
    assert [x.id for x in m.metrics] == ["c1"] and m.metrics[0].data.type_url
    res = {"memory": {"limit": 64 << 20}}
    api.call(TASKS, "Update", tpb.UpdateTaskRequest(container_id="c1", resources=any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps(res).encode())), empty_pb2.Empty)
    lst = api.call(TASKS, "List", tpb.ListTasksRequest(), tpb.ListTasksResponse)
    assert [(t.container_id, t.status) for t in lst.tasks] == [("c1", 2)]
    api.kill("c1", signal.SIGKILL)  # pid 1 ignores SIGTERM without a handler
    assert api.wait("c1") == 137
    api.delete("c1")
    assert not alive(pid)


def test_grouped_containers_share_one_shim(api: Rt, ns: str, rootfs: Path, tmp_path: Path) -> None:
    other = tmp_path / "rootfs2"
    import shutil

    shutil.copytree(rootfs, other, symlinks=True)
    group = {"io.containerd.runc.v2.group": "g1"}
    api.run("c1", rootfs, ["sleep", "1000"], annotations=group)
    api.run("c2", other, ["sleep", "1000"], annotations=group)
    assert len(shims_of(ns)) == 1
    for id in ("c1", "c2"):
        api.kill(id, signal.SIGKILL)
        assert api.wait(id) == 137
    api.delete("c1")
    assert api.get("c2").status == 3  # the shared shim still serves c2
    api.delete("c2")
    wait_until(lambda: not shims_of(ns), what="shared shim exits after the last delete")


def test_crun_runtime_option(rt: Suite, api: Rt, rootfs: Path, tmp_path: Path) -> None:
    """crun via runc options' binary_name; the wrapper hides the hybrid cgroup2 mount."""
    wrapper = tmp_path / "crun-legacy"
    wrapper.write_text("#!/bin/sh\nexec unshare -m sh -c "
                       "'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"' crun \"$@\"\n")
    wrapper.chmod(0o755)
    c = api.container("c1", ["sh", "-c", "echo via-crun"], binary_name=str(wrapper))
    api.create("c1", rootfs)
    api.start("c1")
    assert api.wait("c1") == 0
    api.delete("c1")
    assert "stdout F via-crun" in api.log(c)


def test_user_workdir_hostname_env(api: Rt, rootfs: Path) -> None:
    c = api.container("c1", ["sh", "-c", "id -u; id -g; pwd; hostname; echo $GREETING"],
                      user="1000:2000", workdir="/tmp", hostname="box", env=("GREETING=hello",))
    api.create("c1", rootfs)
    api.start("c1")
    assert api.wait("c1") == 0
    api.delete("c1")
    lines = [l.split(" ", 3)[3] for l in api.log(c).splitlines()]
    assert lines == ["1000", "2000", "/tmp", "box", "hello"]


def test_log_path_label_is_the_runtimes(api: Rt, rootfs: Path) -> None:
    """Clients cannot point the runtime's log at a file of their choosing."""
    from google.protobuf import field_mask_pb2

    from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb

    from .helpers import CONTAINERS

    c = api.container("c1", ["echo", "x"])
    path = c.labels["moorage/log-path"]
    evil = cpb.Container(id="c1", labels={"moorage/log-path": "/etc/shadow"})
    with pytest.raises(InvalidArgument):
        api.call(CONTAINERS, "Update", cpb.UpdateContainerRequest(
            container=evil, update_mask=field_mask_pb2.FieldMask(paths=["labels.moorage/log-path"])),
            cpb.UpdateContainerResponse)
    c.labels["moorage/log-path"] = "/etc/shadow"
    got = api.call(CONTAINERS, "Update", cpb.UpdateContainerRequest(container=c),
                   cpb.UpdateContainerResponse).container
    assert got.labels["moorage/log-path"] == path
    c2 = cpb.Container(id="c2", labels={"moorage/log-path": "/etc/shadow"})
    c2.runtime.name = "io.containerd.runc.v2"
    c2.spec.CopyFrom(c.spec)
    got = api.call(CONTAINERS, "Create", cpb.CreateContainerRequest(container=c2),
                   cpb.CreateContainerResponse).container
    assert "moorage/log-path" not in got.labels
    api.create("c1", rootfs)
    api.start("c1")
    assert api.wait("c1") == 0
    api.delete("c1")
    assert Path(path).read_text().endswith(" stdout F x\n")
    api.remove("c1")
    api.remove("c2")
    assert not Path(path).exists()
