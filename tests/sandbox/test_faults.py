"""reliability.md §4 case 22 and §3: CNI ADD fails or hangs, DEL fails too; reconciler."""

from __future__ import annotations

import asyncio
import json

import pytest

from moorage import errdefs
from moorage.services.sandbox import netns
from moorage.services.sandbox.cni import Attachment, load_conflist
from moorage.services.sandbox.contract import NOT_READY, CreateOptions, request_deadline
from moorage.services.sandbox.pod import PodController
from moorage.services.sandbox.reconcile import reconcile

from .conftest import CniNet, Pods

pytestmark = pytest.mark.root


def dels(net: CniNet) -> int:
    return sum(1 for c in net.calls() if c.startswith("DEL "))


@pytest.fixture
def faulty(testnet: CniNet) -> CniNet:
    testnet.write_conflist(failpoint=True)
    return testnet


async def assert_kept_not_ready(pods: Pods, net: CniNet, sandbox_id: str) -> str:
    status = await pods.controller.status(sandbox_id)
    assert status.state == NOT_READY
    path = status.info["netns_path"]
    assert path and netns.is_netns(path)
    assert "teardown" in status.info["error"]
    with pytest.raises(errdefs.FailedPrecondition):
        await pods.controller.start(sandbox_id)
    return path


@pytest.mark.parametrize("add_mode", ["fail-after", "hang-after"])
async def test_add_and_del_fail_then_stop_retries(pods: Pods, faulty: CniNet, add_mode: str) -> None:
    pods.controller.config = faulty.config(cni_add_timeout=1.0, cni_del_timeout=5.0)
    faulty.set_faults(ADD=add_mode, DEL="fail")
    expected = errdefs.DeadlineExceeded if add_mode == "hang-after" else errdefs.Unavailable
    with pytest.raises(expected):
        await pods.controller.create("pod", CreateOptions())
    assert dels(faulty) == 1  # the armed teardown ran, and failed
    await assert_kept_not_ready(pods, faulty, "pod")
    assert len(faulty.allocations()) == 1  # the address ADD took is still held, and recorded

    with pytest.raises(errdefs.Unavailable):  # DEL still failing: stop reports it, keeps state
        await pods.controller.stop("pod")
    assert dels(faulty) == 2
    await assert_kept_not_ready(pods, faulty, "pod")

    faulty.set_faults(DEL="ok")
    await pods.controller.stop("pod")
    assert dels(faulty) == 3
    assert (await pods.controller.wait("pod")).exit_status == 0
    await pods.controller.shutdown("pod")
    faulty.assert_clean()
    assert pods.events.topics() == ["/sandboxes/exit"]


async def test_shutdown_alone_retries_del(pods: Pods, faulty: CniNet) -> None:
    faulty.set_faults(ADD="fail-after", DEL="fail")
    with pytest.raises(errdefs.Unavailable):
        await pods.controller.create("pod", CreateOptions())
    with pytest.raises(errdefs.Unavailable):
        await pods.controller.shutdown("pod")
    await assert_kept_not_ready(pods, faulty, "pod")
    faulty.set_faults(DEL="ok")
    await pods.controller.shutdown("pod")
    faulty.assert_clean()
    with pytest.raises(errdefs.NotFound):
        await pods.controller.status("pod")


async def test_add_fails_del_succeeds_forgets_instance(pods: Pods, faulty: CniNet) -> None:
    faulty.set_faults(ADD="fail-after")
    with pytest.raises(errdefs.Unavailable, match="failpoint"):
        await pods.controller.create("pod", CreateOptions())
    with pytest.raises(errdefs.NotFound):
        await pods.controller.status("pod")
    faulty.assert_clean()
    faulty.set_faults()
    await pods.controller.create("pod", CreateOptions())  # the id is free again
    await pods.controller.shutdown("pod")
    faulty.assert_clean()


async def test_request_deadline_bounds_add_not_teardown(pods: Pods, faulty: CniNet) -> None:
    faulty.set_faults(ADD="hang-after")
    token = request_deadline.set(asyncio.get_running_loop().time() + 0.5)
    try:
        with pytest.raises(errdefs.DeadlineExceeded):
            await pods.controller.create("pod", CreateOptions())
    finally:
        request_deadline.reset(token)
    assert dels(faulty) == 1
    faulty.assert_clean()


async def test_cancelled_create_still_tears_down(pods: Pods, faulty: CniNet) -> None:
    faulty.set_faults(ADD="hang-after")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pods.controller.create("pod", CreateOptions()), 0.5)
    assert dels(faulty) == 1
    faulty.assert_clean()


async def test_reconciler_releases_leaks(pods: Pods, testnet: CniNet) -> None:
    ctl = pods.controller
    # 1. a namespace and address nobody records (the record was lost in a crash)
    await ctl.create("lost", CreateOptions())
    pods.db.delete_instance("testing", "lost", ctl.name)
    # 2. an address held by a container id of ours with no namespace at all
    key = "ab" * 16
    scratch = testnet.netns_dir + "/" + testnet.prefix + "scratch"
    netns.create(scratch)
    await ctl.cni.add(load_conflist(str(testnet.conf_dir)), Attachment(key, scratch), 10)
    netns.remove(scratch)
    # 3. a live instance whose namespace vanished (reboot)
    await ctl.create("rebooted", CreateOptions())
    await ctl.start("rebooted")
    gone = (await ctl.status("rebooted")).info["netns_path"]
    netns.remove(gone)
    # 4. a healthy instance, which must be left alone
    await ctl.create("healthy", CreateOptions())
    healthy = (await ctl.status("healthy")).info

    # 5. a pod directory nobody owns
    ghost = ctl.root / "pods" / "testing" / "ghost"
    ghost.mkdir(parents=True)

    assert len(testnet.allocations()) == 4
    report = await reconcile([ctl])
    assert sorted(report.dirs_removed) == [str(ghost), str(ghost.parent / "lost")] and not ghost.exists()
    assert report.marked_failed == ["testing/rebooted"]
    assert report.still_failing == []
    assert len(report.netns_removed) == 1 and len(report.ips_released) == 1
    assert testnet.allocations() == [healthy["ips"]]
    assert testnet.namespaces() == [healthy["netns_path"]]
    assert len(testnet.bridge_ports()) == 1
    status = await ctl.status("rebooted")
    assert status.state == NOT_READY
    await ctl.shutdown("rebooted")
    await ctl.shutdown("healthy")
    testnet.assert_clean()


async def test_restart_keeps_instances(pods: Pods, testnet: CniNet, tmp_path: object) -> None:
    ctl = pods.controller
    await ctl.create("pod", CreateOptions())
    await ctl.start("pod")
    before = await ctl.status("pod")
    again = PodController(ctl.name, pods.db, pods.store, ctl.config, ctl.root)
    report = await reconcile([again])
    assert report.netns_removed == [] and report.ips_released == [] and report.marked_failed == []
    after = await again.status("pod")
    assert after.state == before.state and after.info == before.info
    waiter = asyncio.ensure_future(again.wait("pod"))
    await again.stop("pod")
    assert (await waiter).exit_status == 0
    await again.shutdown("pod")
    testnet.assert_clean()
    assert json.loads(after.extra.value)["netns_path"] == before.info["netns_path"] if after.extra else False


async def test_create_cancelled_twice_still_tears_down(pods: Pods, faulty: CniNet) -> None:
    faulty.set_faults(ADD="hang-after", DEL="hang")
    pods.controller.config = faulty.config(cni_del_timeout=2.0)
    task = asyncio.ensure_future(pods.controller.create("pod", CreateOptions()))
    while not any(c.startswith("ADD ") for c in faulty.calls()):
        await asyncio.sleep(0.02)  # the plugin runs in another process: watch its log
    task.cancel()  # the first cancel starts the rollback ...
    while not any(c.startswith("DEL ") for c in faulty.calls()):
        await asyncio.sleep(0.02)
    faulty.set_faults(DEL="ok")
    task.cancel()  # ... a second one abandons it: the rollback goes on in the background
    with pytest.raises(asyncio.CancelledError):
        await task
    await pods.controller.drain(10)
    # the hanging DEL hit its own deadline, so the sandbox is kept NotReady with its namespace
    await assert_kept_not_ready(pods, faulty, "pod")
    await pods.controller.shutdown("pod")  # and a later shutdown retries DEL successfully
    faulty.assert_clean()


async def test_no_cni_config_fails_cleanly(pods: Pods, testnet: CniNet, tmp_path: object) -> None:
    for f in testnet.conf_dir.iterdir():
        f.unlink()
    with pytest.raises(errdefs.FailedPrecondition, match="cni_conf_dir"):
        await pods.controller.create("pod", CreateOptions())
    with pytest.raises(errdefs.NotFound):
        await pods.controller.status("pod")
    testnet.assert_clean()


async def test_teardown_needs_no_cni_config(pods: Pods, testnet: CniNet) -> None:
    await pods.controller.create("pod", CreateOptions())
    for f in testnet.conf_dir.iterdir():  # the network config is gone by the time of removal
        f.unlink()
    await pods.controller.shutdown("pod")  # DEL runs from the config recorded at ADD time
    testnet.assert_clean()


async def test_namespace_removed_behind_our_back(pods: Pods, testnet: CniNet) -> None:
    await pods.controller.create("pod", CreateOptions())
    await pods.controller.start("pod")
    path = (await pods.controller.status("pod")).info["netns_path"]
    netns.remove(path)
    status = await pods.controller.status("pod")
    assert status.state == NOT_READY and status.info["error"] == "network namespace is gone"
    await pods.controller.shutdown("pod")  # DEL without a namespace still frees the address
    testnet.assert_clean()
