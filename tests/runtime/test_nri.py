"""The runtime's NRI hooks (services/runtime/nri.py) without plugins: adjustments applied to
the spec, errors that fail and errors that do not, an absent nri process cached (the
end-to-end cases with real plugins are tests/nri/test_container.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from moorage import errdefs
from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.namespaces import current_namespace
from moorage.services.runtime import spec as sp
from moorage.services.runtime.nri import RuntimeNri
from suite import Suite

LOG = logging.getLogger("test.nri")


class FakeHooks:
    def __init__(self, exc: Exception | None = None, adjust: api.ContainerAdjustment | None = None) -> None:
        self.exc = exc
        self.adjust = adjust or api.ContainerAdjustment()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        async def call(*args: Any, **kw: Any) -> Any:
            self.calls.append((method, kw))
            if self.exc is not None:
                raise self.exc
            if method == "create_container":
                return self.adjust
            if method == "update_container":
                return dict(args[1])
            return None

        return call

    async def close(self) -> None:
        pass


def spec() -> dict[str, Any]:
    return sp.build_spec("default", "c1", sp.ImageConfig(cmd=("sh",)))


async def test_adjustment_is_applied_to_the_spec() -> None:
    adj = api.ContainerAdjustment()
    adj.env.add(key="HELLO", value="nri")
    adj.rlimits.add(type="RLIMIT_NOFILE", hard=4321, soft=4321)
    adj.annotations["a"] = "b"
    fake = FakeHooks(adjust=adj)
    nri = RuntimeNri("/nonexistent", LOG, hooks=fake)  # type: ignore[arg-type]
    s = await nri.create(spec(), "c1", {"moorage/name": "web"}, sandbox="pod1")
    assert "HELLO=nri" in s["process"]["env"]
    assert {"type": "RLIMIT_NOFILE", "hard": 4321, "soft": 4321} in s["process"]["rlimits"]
    assert s["annotations"]["a"] == "b"
    method, kw = fake.calls[0]
    assert method == "create_container" and kw["name"] == "web" and kw["pod"].id == "pod1"


@pytest.mark.parametrize("exc", [errdefs.Unavailable("service moorage.nri.v1.Hooks is unavailable: nri is not running"),
                                 errdefs.NotImplemented("service moorage.nri.v1.Hooks")])
async def test_absent_nri_is_cached_for_the_retry_interval(exc: Exception) -> None:
    fake = FakeHooks(exc)
    nri = RuntimeNri("/nonexistent", LOG, hooks=fake, retry=60.0)  # type: ignore[arg-type]
    for _ in range(5):
        s = spec()
        assert await nri.create(s, "c1", {}) == spec()
        await nri.start(s, "c1", {}, "", 1)
        await nri.post_start(s, "c1", {}, "", 1)
    assert len(fake.calls) == 1 and nri.absent_calls == 1
    nri.retry = 0.0
    nri._absent_until = 0.0
    await nri.create(spec(), "c1", {})
    assert len(fake.calls) == 2


async def test_disabled_never_calls() -> None:
    fake = FakeHooks()
    nri = RuntimeNri("/nonexistent", LOG, hooks=fake, enabled=False)  # type: ignore[arg-type]
    await nri.create(spec(), "c1", {})
    await nri.remove(spec(), "c1", {}, "")
    assert fake.calls == []


@pytest.mark.parametrize("exc", [errdefs.Unknown('plugin "10-x" failed to handle CreateContainer: no'),
                                 errdefs.Conflict('plugins "10-a" and "20-b" both tried to set environment variable X'),
                                 errdefs.NotImplemented("plugin '10-x' injects CDI devices, which moorage does not support")])
async def test_plugin_errors_fail_create_and_start_but_not_notifications(exc: Exception) -> None:
    fake = FakeHooks(exc)
    nri = RuntimeNri("/nonexistent", LOG, hooks=fake)  # type: ignore[arg-type]
    with pytest.raises(type(exc)):
        await nri.create(spec(), "c1", {})
    with pytest.raises(type(exc)):
        await nri.start(spec(), "c1", {}, "", 1)
    with pytest.raises(type(exc)):
        await nri.update(spec(), {"cpu": {"shares": 2}}, "c1", {}, "")
    for notify in (nri.post_create, nri.post_start, nri.post_update, nri.stop):
        await notify(spec(), "c1", {}, "", 1)
    await nri.remove(spec(), "c1", {}, "")
    assert nri.absent_calls == 0


def test_no_nri_process_behind_the_proxy_is_fast(rt: Suite) -> None:
    """The real proxy without an nri process: one fast failed call, then none."""
    import asyncio

    async def go() -> None:
        token = current_namespace.set("default")
        nri = RuntimeNri(rt.address, LOG, retry=60.0)
        try:
            t0 = time.monotonic()
            assert await nri.create(spec(), "c1", {}) == spec()
            first = time.monotonic() - t0
            t0 = time.monotonic()
            for _ in range(20):
                await nri.create(spec(), "c1", {})
            rest = time.monotonic() - t0
        finally:
            await nri.close()
            current_namespace.reset(token)
        assert nri.absent_calls == 1
        assert first < 1.0 and rest < 0.5, (first, rest)

    asyncio.run(go())
