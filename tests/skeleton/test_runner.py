"""The runner's lifecycle: ready once serving, SIGTERM drains in-flight calls, exit 0,
no socket left; a second process on the same socket refuses to start; structured logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.log import JSONFormatter
from moorage.rpc import connect
from suite import Suite

ECHO = "moorage.test.v1.Echo"
MD = {"containerd-namespace-ttrpc": "default"}


async def test_sigterm_drains_in_flight_calls(suite: Suite) -> None:
    proc = await asyncio.to_thread(suite.start, "echo")
    client = await connect(suite.socket("echo"))
    slow = asyncio.ensure_future(client.unary_raw(ECHO, "Sleep", b"1", metadata=MD))
    assert await client.unary_raw(ECHO, "Echo", b"x", metadata=MD) == b"x"  # the slow call is in
    proc.popen.send_signal(signal.SIGTERM)
    assert await slow == b"1"
    assert await asyncio.to_thread(proc.popen.wait, 30) == 0
    assert not os.path.exists(suite.socket("echo"))
    assert "STOPPING=1" in "".join(proc.notify.messages) or proc.notify.wait_for("STOPPING=1", None, 5)
    await client.close()


async def test_sigterm_drains_calls_through_the_proxy(suite: Suite) -> None:
    proxy = await asyncio.to_thread(suite.start, "proxy")
    await asyncio.to_thread(suite.start, "echo")
    client = await connect(suite.address)
    slow = asyncio.ensure_future(client.unary_raw(ECHO, "Sleep", b"1", metadata=MD))
    assert await client.unary_raw(ECHO, "Echo", b"x", metadata=MD) == b"x"
    proxy.popen.send_signal(signal.SIGTERM)
    assert await slow == b"1"
    assert await asyncio.to_thread(proxy.popen.wait, 30) == 0
    assert not os.path.exists(suite.address)
    with pytest.raises(errdefs.Unavailable):
        await connect(suite.address)


def test_a_second_process_on_a_live_socket_refuses(suite: Suite) -> None:
    first = suite.start("echo")
    suite.procs["first-echo"] = suite.procs.pop("echo")  # keep it running, start another
    with pytest.raises(RuntimeError, match="already being served"):
        suite.start("echo")
    assert first.popen.poll() is None
    assert os.path.exists(suite.socket("echo"))


def test_ready_only_once_the_socket_accepts(suite: Suite) -> None:
    proc = suite.start("echo")
    assert any("READY=1" in m for m in proc.notify.messages)
    assert os.path.exists(suite.socket("echo"))
    assert any("STATUS=ready echo" in m for m in proc.notify.messages)


def test_json_logs() -> None:
    fmt = JSONFormatter("content")
    rec = logging.LogRecord("moorage.content", logging.WARNING, __file__, 1, "blob %s gone", ("sha256:x",), None)
    rec.digest = "sha256:x"
    out = json.loads(fmt.format(rec))
    assert out["level"] == "warning" and out["process"] == "content"
    assert out["msg"] == "blob sha256:x gone" and out["digest"] == "sha256:x"
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(fmt.format(rec))["error"]


def test_build_failure_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    s = Suite(tmp_path, plugins=["skeleton.echo:PROCESS"], config={"proxy": {"health_timeout": 1.0}})
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "proxy").write_text("a file where the proxy wants its folder")
    out = s.run("serve", "proxy", "--config", str(s.config_path))
    assert out.returncode != 0
    assert "proxy" in out.stderr or "proxy" in out.stdout


async def test_in_process_serve_sets_the_namespace_for_generated_servicers(tmp_path: Path) -> None:
    """runner.serve in this process: a generated servicer sees the call's namespace."""
    import tempfile

    from google.protobuf import empty_pb2

    from moorage import config as cfg
    from moorage import runner
    from moorage.api.containerd.services.version.v1 import version_pb2, version_ttrpc
    from moorage.namespaces import current_namespace, namespace
    from moorage.registry import BuildContext, Process

    class Version(version_ttrpc.VersionServicer):
        async def Version(self, request: empty_pb2.Empty, ctx: object) -> version_pb2.VersionResponse:
            return version_pb2.VersionResponse(version=namespace(), revision=str(current_namespace.get()))

    async def build(ctx: BuildContext) -> list[object]:
        return [Version()]

    record = Process(name="ver", services=("containerd.services.version.v1.Version",), build=build)
    state = Path(tempfile.mkdtemp(prefix="moorage-", dir="/tmp"))
    conf = cfg.parse({"suite": {"root": str(tmp_path / "root"), "state": str(state)}}, [record])
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(runner.serve(record, conf, stop=stop, ready=ready))
    sock = conf.socket_path("ver")
    client = None
    try:
        await asyncio.wait([task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), task
        client = await connect(sock)
        stub = version_ttrpc.VersionClient(client)
        resp = await stub.Version(empty_pb2.Empty(), metadata={"containerd-namespace-ttrpc": "ns-a"})
        assert (resp.version, resp.revision) == ("ns-a", "ns-a")
        with pytest.raises(errdefs.FailedPrecondition):
            await stub.Version(empty_pb2.Empty())
    finally:
        if client is not None:
            await client.close()
        stop.set()
        await task
    assert not sock.exists()
