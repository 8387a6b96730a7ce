"""``moorage up``: supervisord in the foreground runs every process, restarts one that
dies, and leaves no socket behind when stopped."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from moorage import errdefs
from moorage.api.containerd.services.introspection.v1 import introspection_pb2 as intro
from moorage.registry import builtin_names
from moorage.rpc import connect
from suite import Suite

ECHO = "moorage.test.v1.Echo"
MD = {"containerd-namespace-ttrpc": "default"}


@pytest.fixture
def up_suite(tmp_path: Path):  # type: ignore[no-untyped-def]
    disabled = {n: {"enabled": False} for n in builtin_names() if n != "proxy"}
    s = Suite(tmp_path, config={**disabled, "other": {"replicas": 2}},
              plugins=["skeleton.echo:PROCESS", "skeleton.echo:OTHER"])
    try:
        yield s
    finally:
        s.close()


async def test_up_restarts_what_dies_and_cleans_up(up_suite: Suite) -> None:
    s = up_suite
    up = await asyncio.to_thread(s.up)
    client = await connect(s.address)
    assert await client.unary_raw(ECHO, "Echo", b"hi", metadata=MD) == b"hi"
    who = set()
    for _ in range(4):
        who.add((await client.unary_raw("moorage.test.v1.Other", "Who", b"", metadata=MD)).split()[0])
    assert who <= {b"other-1", b"other-2"}

    # kill -9 a backend: in-flight calls fail, supervisord restarts it, the same client works again
    program, pid = (await client.unary_raw(ECHO, "Who", b"", metadata=MD)).decode().split()
    assert program == "echo"
    inflight = asyncio.ensure_future(client.unary_raw(ECHO, "Sleep", b"30", metadata=MD))
    await asyncio.sleep(0)
    import os

    os.kill(int(pid), signal.SIGKILL)
    with pytest.raises(errdefs.Unavailable, match=ECHO):
        await asyncio.wait_for(inflight, 10)
    await asyncio.to_thread(up.notify.wait_for, "STATUS=ready echo", up.popen)
    _, new_pid = (await client.unary_raw(ECHO, "Who", b"", metadata=MD)).decode().split()
    assert new_pid != pid and not client.closed

    # kill -9 the proxy: supervisord restarts it, clients reconnect
    server = await client.unary("containerd.services.introspection.v1.Introspection", "Server",
                                empty_pb2.Empty(), intro.ServerResponse)
    os.kill(server.pid, signal.SIGKILL)
    await asyncio.wait_for(client.wait_closed(), 10)
    await asyncio.to_thread(up.notify.wait_for, "STATUS=ready proxy", up.popen)
    client = await connect(s.address)
    assert await client.unary_raw(ECHO, "Echo", b"again", metadata=MD) == b"again"
    again = await client.unary("containerd.services.introspection.v1.Introspection", "Server",
                               empty_pb2.Empty(), intro.ServerResponse)
    assert again.uuid == server.uuid and again.pid != server.pid
    await client.close()

    # Ctrl-C: every process stops, no socket is left behind
    up.popen.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(up.popen.wait, 60) == 0
    assert not Path(s.address).exists()
    assert list((s.state / "services").glob("*.sock")) == []
    assert not (s.state / "supervisor").exists()
    assert "suite ready" in up.output()


def test_up_refuses_a_second_suite_on_the_same_state(up_suite: Suite) -> None:
    up_suite.up()
    out = up_suite.run("up", "--config", str(up_suite.config_path))
    assert out.returncode == 1 and "already serves" in out.stderr


def test_up_names_the_skipped_processes(tmp_path: Path) -> None:
    s = Suite(tmp_path, plugins=["skeleton.echo:PROCESS"])
    out = s.run("config", "check", "--config", str(s.config_path))
    assert out.returncode == 0
    from moorage.registry import load_records

    _, missing = load_records()
    for m in missing:
        assert f"{m.name}: skipped" in out.stderr
