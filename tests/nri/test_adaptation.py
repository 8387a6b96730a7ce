"""The runtime side against Python plugins over a real NRI socket (reliability cases 23-24)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from moorage import errdefs
from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.stub import Adjustment, Plugin, Rejected, Stub, _PluginService
from ttrpc.codes import Code
from ttrpc.errors import RpcError

from .conftest import Harness

POD = api.PodSandbox(id="pod1", name="pod", namespace="default")


def ctr(cid: str = "c1", **kw: Any) -> api.Container:
    return api.Container(id=cid, pod_sandbox_id="pod1", name=cid, args=["sh"], env=["PATH=/bin"], **kw)


class Env(Plugin):
    def __init__(self, key: str, value: str) -> None:
        self.key, self.value = key, value
        self.seen: list[list[str]] = []

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Adjustment:
        self.seen.append(list(container.env))
        return Adjustment().add_env(self.key, self.value)


class Recorder(Plugin):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.synced: tuple[int, int] | None = None

    async def synchronize(self, pods: Any, containers: Any) -> None:
        self.synced = (len(pods), len(containers))

    async def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.events.append(("run_pod_sandbox", pod.id))

    async def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.events.append(("start_container", container.id))

    async def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.events.append(("remove_container", container.id))


class Hang(Plugin):
    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.called.set()
        await asyncio.sleep(3600)


class Slow(Env):
    """Env that hangs on the calls numbered in ``slow`` (from 1) until ``release`` is set."""

    def __init__(self, key: str, value: str, slow: set[int]) -> None:
        super().__init__(key, value)
        self.slow = slow
        self.calls = 0
        self.hanging = asyncio.Event()
        self.release = asyncio.Event()

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Adjustment:
        self.calls += 1
        if self.calls in self.slow:
            self.hanging.set()
            await self.release.wait()
        return await super().create_container(pod, container)


class Crash(Plugin):
    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        assert self.stub is not None
        self.stub.close()  # the connection dies mid-call
        await asyncio.sleep(3600)


class Fail(Plugin):
    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        raise ValueError("no GPUs left")


async def test_register_configure_and_list(harness: Harness) -> None:
    rec = Recorder()
    await harness.plugin(rec, "30", "rec")
    await harness.plugin(Env("A", "1"), "10", "env")
    assert harness.ids() == ["10-env", "30-rec"]
    p = harness.nri.plugins[1]
    assert p.events == (1 << 0) | (1 << 5) | (1 << 10)
    assert rec.synced == (0, 0)
    assert harness.stubs[0].runtime_name == "moorage"


async def test_adjustments_in_index_order(harness: Harness) -> None:
    late, early = Env("B", "2"), Env("A", "1")
    await harness.plugin(late, "20", "late")
    await harness.plugin(early, "10", "early")
    adj = await harness.nri.create_container(POD, ctr())
    assert [(kv.key, kv.value) for kv in adj.env] == [("A", "1"), ("B", "2")]
    assert early.seen == [["PATH=/bin"]]
    assert late.seen == [["PATH=/bin", "A=1"]]


async def test_conflict_names_both_plugins(harness: Harness) -> None:
    await harness.plugin(Env("X", "1"), "10", "one")
    await harness.plugin(Env("X", "2"), "20", "two")
    with pytest.raises(errdefs.Conflict, match='plugins "10-one" and "20-two" both tried to set environment variable X'):
        await harness.nri.create_container(POD, ctr())
    assert harness.ids() == ["10-one", "20-two"]
    assert "c1" not in harness.nri.containers


async def test_plugin_error_fails_the_operation_naming_it(harness: Harness) -> None:
    await harness.plugin(Fail(), "10", "gpu")
    with pytest.raises(errdefs.Unknown, match='plugin "10-gpu" failed to handle CreateContainer: no GPUs left'):
        await harness.nri.create_container(POD, ctr())
    assert harness.ids() == ["10-gpu"]  # an error is not a reason to drop


async def test_hanging_plugin_is_skipped_and_the_event_carries_on(harness: Harness) -> None:
    hang = Hang()
    await harness.plugin(hang, "10", "hang")
    await harness.plugin(Env("A", "1"), "20", "env")
    start = time.monotonic()
    adj = await harness.nri.create_container(POD, ctr())
    took = time.monotonic() - start
    assert hang.called.is_set()
    assert [kv.key for kv in adj.env] == ["A"]
    assert took < 2 * harness.nri.options.request_timeout
    assert harness.ids() == ["10-hang", "20-env"]  # one timeout is a strike, not a drop
    adj = await harness.nri.create_container(POD, ctr("c2"))  # bounded again, and carries on
    assert [kv.key for kv in adj.env] == ["A"]


async def test_plugin_slow_once_keeps_being_called(harness: Harness) -> None:
    slow = Slow("S", "1", slow={1})
    await harness.plugin(slow, "10", "slow")
    await harness.plugin(Env("A", "1"), "20", "env")
    adj = await harness.nri.create_container(POD, ctr("c1"))
    assert slow.hanging.is_set()
    assert [kv.key for kv in adj.env] == ["A"]  # this event only went on without it
    assert harness.ids() == ["10-slow", "20-env"]
    slow.release.set()
    adj = await harness.nri.create_container(POD, ctr("c2"))
    assert [kv.key for kv in adj.env] == ["S", "A"]  # its late answer to c1 was discarded


async def test_plugin_timing_out_strikes_times_in_a_row_is_dropped(harness: Harness) -> None:
    assert harness.nri.options.request_timeout_strikes == 3
    hang = Hang()
    await harness.plugin(hang, "10", "hang")
    await harness.plugin(Env("A", "1"), "20", "env")
    for i in range(2):
        await harness.nri.create_container(POD, ctr(f"c{i}"))
        assert harness.ids() == ["10-hang", "20-env"]
    adj = await harness.nri.create_container(POD, ctr("c2"))
    assert [kv.key for kv in adj.env] == ["A"]
    assert harness.ids() == ["20-env"]
    await harness.stubs[0].wait()  # the connection is closed: the stub ends


async def test_an_answer_resets_the_timeout_count(harness_factory: Any) -> None:
    async for h in harness_factory(request_timeout_strikes=2):
        slow = Slow("S", "1", slow={1, 3, 4})  # never released: those calls hang
        await h.plugin(slow, "10", "slow")
        await h.nri.create_container(POD, ctr("c1"))  # timeout 1 of 2
        assert h.ids() == ["10-slow"]
        await h.nri.create_container(POD, ctr("c2"))  # answered: count reset
        assert h.ids() == ["10-slow"]
        await h.nri.create_container(POD, ctr("c3"))  # timeout 1 of 2 again, not 2 of 2
        assert h.ids() == ["10-slow"]
        await h.nri.create_container(POD, ctr("c4"))  # 2 of 2: dropped
        assert h.ids() == []


async def test_crashing_plugin_is_dropped_and_the_event_carries_on(harness: Harness) -> None:
    await harness.plugin(Crash(), "10", "crash")
    await harness.plugin(Env("A", "1"), "20", "env")
    adj = await harness.nri.create_container(POD, ctr())
    assert [kv.key for kv in adj.env] == ["A"]
    assert harness.ids() == ["20-env"]


async def test_disconnected_plugin_is_pruned(harness: Harness) -> None:
    stub = await harness.plugin(Recorder(), "10", "gone")
    stub.close()
    await harness.nri.wait_until(lambda: not harness.nri.plugins)
    await harness.nri.run_pod_sandbox(POD)


async def test_update_containers_from_inside_a_handler(harness: Harness) -> None:
    class Updater(Plugin):
        failed: list[api.ContainerUpdate] | None = None

        async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
            u = api.ContainerUpdate(container_id="other")
            u.linux.resources.cpu.shares.value = 100
            assert self.stub is not None
            self.failed = await self.stub.update_containers([u])

    up = Updater()
    await harness.plugin(up, "10", "up")
    async with asyncio.timeout(2 * harness.nri.options.request_timeout):
        await harness.nri.create_container(POD, ctr())
    assert up.failed == []
    applied = harness.nri.applied  # type: ignore[attr-defined]
    assert [(u.container_id, u.linux.resources.cpu.shares.value) for u in applied] == [("other", 100)]


async def test_updates_returned_with_create_are_applied(harness: Harness) -> None:
    class Both(Plugin):
        async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Any:
            u = api.ContainerUpdate(container_id="neighbour")
            u.linux.resources.memory.limit.value = 1 << 20
            return Adjustment().add_annotation("a", "b"), [u]

    await harness.plugin(Both(), "10", "both")
    adj = await harness.nri.create_container(POD, ctr())
    assert dict(adj.annotations) == {"a": "b"}
    async with asyncio.timeout(5):
        await harness.nri.updated.wait()  # type: ignore[attr-defined]
    assert harness.nri.applied[0].container_id == "neighbour"  # type: ignore[attr-defined]


async def test_events_state_and_synchronize(harness: Harness) -> None:
    await harness.nri.run_pod_sandbox(POD)
    await harness.nri.create_container(POD, ctr("c1"))
    rec = Recorder()
    await harness.plugin(rec, "10", "rec")
    assert rec.synced == (1, 1)
    await harness.nri.start_container(POD, ctr("c1"))
    await harness.nri.remove_container(POD, ctr("c1"))
    assert rec.events == [("start_container", "c1"), ("remove_container", "c1")]
    assert "c1" not in harness.nri.containers


async def test_state_change_fallback_for_older_plugins(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unimplemented(self: Any, request: Any, ctx: Any) -> Any:
        raise RpcError(Code.UNIMPLEMENTED, "method StartContainer")

    monkeypatch.setattr(_PluginService, "StartContainer", unimplemented)
    rec = Recorder()
    await harness.plugin(rec, "10", "old")
    await harness.nri.start_container(POD, ctr("c1"))
    await harness.nri.start_container(POD, ctr("c2"))
    assert rec.events == [("start_container", "c1"), ("start_container", "c2")]
    assert harness.nri.plugins[0].legacy == {"StartContainer"}


async def test_split_synchronize_over_4_mib(harness: Harness) -> None:
    big = "x" * 4096
    for i in range(1500):  # ~6 MiB of state
        c = ctr(f"c{i}")
        c.annotations["blob"] = big
        harness.nri.containers[c.id] = c
    rec = Recorder()
    await harness.plugin(rec, "10", "rec")
    assert rec.synced == (0, 1500)


async def test_registration_timeout_closes_the_connection(harness: Harness) -> None:
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    await loop.sock_connect(s, harness.socket_path)
    start = time.monotonic()
    async with asyncio.timeout(5):
        data = await loop.sock_recv(s, 100)
    assert data == b""
    assert time.monotonic() - start >= harness.nri.options.registration_timeout * 0.9
    s.close()


async def test_bad_identity_is_refused(harness: Harness) -> None:
    stub = Stub(Recorder(), name="bad name", idx="1", socket_path=harness.socket_path)
    with pytest.raises(RpcError, match="invalid plugin name") as err:
        await stub.start()
    assert err.value.code == Code.INVALID_ARGUMENT
    assert harness.ids() == []


async def test_validator_rejects(harness: Harness) -> None:
    class Strict(Plugin):
        async def validate_container_adjustment(self, request: api.ValidateContainerAdjustmentRequest) -> None:
            if any(kv.key == "EVIL" for kv in request.adjust.env):
                raise Rejected(f"EVIL set by {[p.name for p in request.plugins]}")

    await harness.plugin(Strict(), "90", "strict")
    await harness.plugin(Env("EVIL", "1"), "10", "env")
    with pytest.raises(errdefs.FailedPrecondition, match=r"validator plugin \"90-strict\" rejected the adjustment: EVIL set by \['env'\]"):
        await harness.nri.create_container(POD, ctr())


def test_stub_requires_a_hook() -> None:
    with pytest.raises(ValueError, match="no event hook"):
        Stub(Plugin(), name="x", idx="10")


async def test_required_plugin_fails_closed(harness_factory: Any) -> None:
    async for h in harness_factory(required_plugins=("guard",)):
        with pytest.raises(errdefs.FailedPrecondition, match="required NRI plugin 'guard' did not take part"):
            await h.nri.create_container(POD, ctr())
        stub = await h.plugin(Hang(), "10", "guard")
        with pytest.raises(errdefs.DeadlineExceeded, match='required NRI plugin "10-guard" did not answer '
                           r"CreateContainer: timed out on CreateContainer after 0.5s \(1 of 3 in a row\)"):
            await h.nri.create_container(POD, ctr())
        stub.close()  # gone: absent again
        await h.nri.wait_until(lambda: not h.nri.plugins)
        with pytest.raises(errdefs.FailedPrecondition, match="required NRI plugin 'guard' did not take part"):
            await h.nri.create_container(POD, ctr())
        await h.plugin(Env("A", "1"), "10", "guard")
        adj = await h.nri.create_container(POD, ctr())
        assert [kv.key for kv in adj.env] == ["A"]


async def test_required_plugin_slow_once_fails_that_creation_only(harness_factory: Any) -> None:
    async for h in harness_factory(required_plugins=("guard",)):
        guard = Slow("G", "1", slow={1})
        await h.plugin(guard, "10", "guard")
        with pytest.raises(errdefs.DeadlineExceeded, match='required NRI plugin "10-guard" did not answer'):
            await h.nri.create_container(POD, ctr("c1"))
        assert "c1" not in h.nri.containers
        assert h.ids() == ["10-guard"]
        guard.release.set()
        adj = await h.nri.create_container(POD, ctr("c2"))
        assert [kv.key for kv in adj.env] == ["G"]


async def test_required_plugin_crashing_fails_the_creation_naming_it(harness_factory: Any) -> None:
    async for h in harness_factory(required_plugins=("guard",)):
        await h.plugin(Crash(), "10", "guard")
        with pytest.raises(errdefs.FailedPrecondition, match='required NRI plugin "10-guard" did not answer '
                           "CreateContainer: dropped"):
            await h.nri.create_container(POD, ctr())
        assert h.ids() == []


async def test_validator_that_times_out_fails_the_creation_and_stays(harness: Harness) -> None:
    class SlowValidator(Plugin):
        def __init__(self) -> None:
            self.calls = 0
            self.release = asyncio.Event()

        async def validate_container_adjustment(self, request: api.ValidateContainerAdjustmentRequest) -> None:
            self.calls += 1
            if self.calls == 1:
                await self.release.wait()

    v = SlowValidator()
    await harness.plugin(v, "90", "check")
    with pytest.raises(errdefs.DeadlineExceeded, match='validator plugin "90-check" did not answer: timed out'):
        await harness.nri.create_container(POD, ctr("c1"))
    v.release.set()
    await harness.nri.create_container(POD, ctr("c2"))
    assert harness.ids() == ["90-check"] and v.calls == 2


async def test_plugins_get_shutdown_when_the_runtime_stops(harness: Harness) -> None:
    class Down(Recorder):
        down = False

        async def shutdown(self) -> None:
            self.down = True

    down = Down()
    stub = await harness.plugin(down, "10", "down")
    await harness.nri.close()
    await stub.wait()
    assert down.down


async def test_duplicate_identity_is_refused(harness: Harness) -> None:
    await harness.plugin(Recorder(), "10", "same")
    stub = Stub(Recorder(), name="same", idx="10", socket_path=harness.socket_path)
    with pytest.raises(RpcError, match="already registered"):
        await stub.start()
    assert harness.ids() == ["10-same"]


async def test_garbage_on_the_trunk_closes_only_that_connection(harness: Harness) -> None:
    await harness.plugin(Env("A", "1"), "10", "good")
    loop = asyncio.get_running_loop()
    for junk in (b"\x00\x00\x00\x02\xff\xff\xff\xff", b"\x00\x00\x00\x02\x00\x00\x00\x04abcd" * 3):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        await loop.sock_connect(s, harness.socket_path)
        await loop.sock_sendall(s, junk)
        async with asyncio.timeout(5):
            while await loop.sock_recv(s, 4096):
                pass  # whatever the runtime answers, it ends with the connection closed
        s.close()
    adj = await harness.nri.create_container(POD, ctr())
    assert [kv.key for kv in adj.env] == ["A"] and harness.ids() == ["10-good"]


async def test_socket_is_private(harness: Harness) -> None:
    import os
    import stat

    st = os.stat(harness.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(harness.socket_path)).st_mode) == 0o700


async def test_sync_waits_for_running_events_and_holds_new_ones(harness: Harness) -> None:
    class Slow(Plugin):
        def __init__(self) -> None:
            self.called = asyncio.Event()
            self.release = asyncio.Event()

        async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
            self.called.set()
            await self.release.wait()

    class Late(Recorder):
        seen: list[str] = []

        async def synchronize(self, pods: Any, containers: Any) -> None:
            self.seen = [c.id for c in containers]
            assert self.stub is not None
            await self.stub.update_containers([])  # allowed during sync: no deadlock

        async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
            self.events.append(("create_container", container.id))

    slow = Slow()
    await harness.plugin(slow, "10", "slow")
    creating = asyncio.ensure_future(harness.nri.create_container(POD, ctr("c1")))
    await slow.called.wait()
    late = Late()
    joining = asyncio.ensure_future(harness.plugin(late, "20", "late"))
    async with asyncio.timeout(10):
        while not harness.nri.gate.syncing:  # the new plugin's sync waits for the running event
            await asyncio.sleep(0.01)
    assert not joining.done()
    slow.release.set()
    await creating
    await joining
    assert late.seen == ["c1"]  # the event that ran first is in its sync
    await harness.nri.create_container(POD, ctr("c2"))
    assert late.events == [("create_container", "c2")]  # and every later event reaches it


def test_request_timeout_strikes_config_key() -> None:
    from moorage.config import ConfigError, loads
    from moorage.nri.process import PROCESS

    cfg = loads("[nri]\nrequest_timeout_strikes = 5\n", [PROCESS])
    assert cfg.processes["nri"].settings.request_timeout_strikes == 5
    assert loads("", [PROCESS]).processes["nri"].settings.request_timeout_strikes == 3
    with pytest.raises(ConfigError, match="request_timeout_strikes must be >= 1"):
        loads("[nri]\nrequest_timeout_strikes = 0\n", [PROCESS])
