"""The proxy's C relay (proxy/relay.c): which calls it carries itself, what it hands to the
splice, and how it takes bad input, slow peers and a drain. The routing behaviour both
share is tested in test_proxy_routing.py, once per front door."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from moorage import errdefs
from moorage.api.containerd.services.namespaces.v1 import namespace_pb2 as ns
from moorage.rpc import connect
from suite import Suite, raw_frames, skeleton_suite
from ttrpc.client import Client
from ttrpc.frame import REQUEST, RESPONSE, Frame, FrameDecoder, encode_frame, pack_header
from ttrpc.messages import decode_response, encode_request

ECHO = "moorage.test.v1.Echo"
OTHER = "moorage.test.v1.Other"
NS = "containerd.services.namespaces.v1.Namespaces"


def md(name: str) -> dict[str, str]:
    return {"containerd-namespace-ttrpc": name}


MD = md("default")




def threads(pid: int) -> list[str]:
    return [Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task")]


def sockets(pid: int) -> int:
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_the_relay_carries_routed_calls_itself(suite: Suite, client: Client) -> None:
    """The first call in a namespace goes to the splice (it records the namespace, over its
    own backend connection); from the next one on the relay carries the service's calls
    on one connection of its own, whatever the namespace once known."""
    proxy = suite.procs["proxy"].popen.pid
    relay = thread_id(proxy, "moorage-relay")
    assert os.sched_getscheduler(relay) == os.SCHED_BATCH  # it does not preempt the peers that wake it
    echo = suite.procs["echo"].popen.pid
    before = sockets(echo)  # the splice's connection (the fixture's first call)
    assert await client.unary_raw(ECHO, "Echo", b"a", metadata=MD) == b"a"
    assert sockets(echo) == before + 1
    for _ in range(20):
        assert await client.unary_raw(ECHO, "Echo", b"b", metadata=MD) == b"b"
    assert await client.unary_raw(ECHO, "Namespace", b"", metadata=MD) == b"default"
    assert sockets(echo) == before + 1


async def names(client: Client) -> set[str]:
    resp = await client.unary(NS, "List", ns.ListNamespacesRequest(), ns.ListNamespacesResponse)
    return {n.name for n in resp.namespaces}


async def test_a_deleted_namespace_is_recorded_again_on_next_use(client: Client) -> None:
    for _ in range(3):
        assert await client.unary_raw(ECHO, "Namespace", b"", metadata=md("again")) == b"again"
    await client.unary(NS, "Delete", ns.DeleteNamespaceRequest(name="again"), empty_pb2.Empty)
    assert "again" not in await names(client)
    assert await client.unary_raw(ECHO, "Namespace", b"", metadata=md("again")) == b"again"
    assert "again" in await names(client)
    with pytest.raises(errdefs.InvalidArgument):  # an invalid one is never routed, first or not
        await client.unary_raw(ECHO, "Echo", b"", metadata=md("No/Good"))


async def test_an_unknown_namespace_is_checked_even_next_to_a_known_one(suite: Suite, client: Client) -> None:
    """Every namespace value a Request names must be known for the relay to carry it."""
    body = encode_request(ECHO, "Echo", b"x", metadata=[
        ("containerd-namespace-ttrpc", "default"), ("containerd-namespace-ttrpc", "Bad/One")])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(suite.address)
    try:
        ((sid, _, _, resp),) = raw_frames(s, encode_frame(1, REQUEST, 0, body), 1)
    finally:
        s.close()
    assert (sid, decode_response(resp).code) == (1, errdefs.InvalidArgument.code)


async def test_bad_and_cut_input_costs_only_its_connection(suite: Suite, client: Client) -> None:
    good = encode_request(ECHO, "Echo", b"ok", metadata=list(MD.items()))
    cases = [
        os.urandom(4096),  # garbage: frames of random lengths and types
        encode_frame(1, REQUEST, 0, good)[:17],  # a Request cut in its body
        pack_header(4 << 20, 1, REQUEST, 0) + b"\x00" * 1000,  # a big Request cut short
        pack_header((4 << 20) + 1, 1, REQUEST, 0) + b"\x00" * 5000,  # an oversized one, cut
        encode_frame(1, REQUEST, 0x02, good) + pack_header(10, 1, 3, 0),  # an open stream, cut Data
    ]
    for data in cases:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(suite.address)
        s.sendall(data)
        s.close()
        assert await client.unary_raw(ECHO, "Echo", b"still", metadata=MD) == b"still"
    assert suite.procs["proxy"].popen.poll() is None


def _leave_mid_frame(address: str, n: int) -> None:
    good = encode_frame(1, REQUEST, 0, encode_request(ECHO, "Echo", b"x" * 100, metadata=list(MD.items())))
    own = encode_frame(1, REQUEST, 0, encode_request("containerd.services.version.v1.Version", "Version", b""))
    cuts = [good[:5], good[:20], good, own, own[:15], good + good[:12]]
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address)
        s.sendall(cuts[i % len(cuts)])
        s.close()  # never reads: a reply, if any, meets a closed socket


async def test_peers_that_leave_mid_frame_leave_nothing_behind(suite: Suite, client: Client) -> None:
    """10 000 clients gone mid-header, mid-body or before their reply (to a routed or an own
    service): the proxy's fds and threads come back to where they were."""
    proxy = suite.procs["proxy"].popen.pid
    assert await client.unary_raw(ECHO, "Echo", b"", metadata=MD) == b""  # the relay's own connection
    fds, tasks = len(os.listdir(f"/proc/{proxy}/fd")), len(os.listdir(f"/proc/{proxy}/task"))
    await asyncio.gather(*(asyncio.to_thread(_leave_mid_frame, suite.address, 2500) for _ in range(4)))
    assert await client.unary_raw(ECHO, "Echo", b"after", metadata=MD) == b"after"
    deadline = time.monotonic() + 30
    while len(os.listdir(f"/proc/{proxy}/fd")) > fds:  # the splice closes its ends as it learns
        assert time.monotonic() < deadline, f"{len(os.listdir(f'/proc/{proxy}/fd'))} fds, {fds} before"
        await client.unary_raw(ECHO, "Echo", b"", metadata=MD)
    assert len(os.listdir(f"/proc/{proxy}/task")) == tasks


def thread_id(pid: int, name: str) -> int:
    (tid,) = [int(t) for t in os.listdir(f"/proc/{pid}/task")
              if Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() == name]
    return tid


@contextlib.contextmanager
def syscalls(tid: int, names: str, out: Path) -> Iterator[list[str]]:
    """strace attached to thread ``tid`` alone while the block runs: the list yielded holds,
    once the block has ended, one line a call that thread made among ``names`` (strace's
    ``trace=`` list). The block starts once strace is attached."""
    calls: list[str] = []
    strace = subprocess.Popen(["strace", "-e", f"trace={names}", "-e", "signal=none", "-o", str(out),
                               "-p", str(tid)], stderr=subprocess.PIPE, text=True)
    try:
        assert strace.stderr is not None
        line = strace.stderr.readline()
        assert "attached" in line, f"strace: {line}{strace.stderr.read() if strace.poll() is not None else ''}"
        yield calls
    finally:
        strace.send_signal(signal.SIGINT)  # detaches, leaving the thread running
        strace.communicate(timeout=30)
    calls += [line for line in out.read_text().splitlines() if line.split("(", 1)[0] in names.split(",")]


async def test_out_of_fds_the_relay_waits_and_serves_on(suite: Suite, client: Client, tmp_path: Path) -> None:
    """With every fd in use the relay stops accepting (it does not spin on a listener it
    cannot accept from), keeps serving the connections it has, and accepts again once
    one closes."""
    proxy = suite.procs["proxy"].popen.pid
    assert await client.unary_raw(ECHO, "Echo", b"", metadata=MD) == b""  # the relay's own connection
    used = len(os.listdir(f"/proc/{proxy}/fd"))
    soft = next(line.split()[3] for line in Path(f"/proc/{proxy}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    subprocess.run(["prlimit", f"--pid={proxy}", f"--nofile={used + 4}:"], check=True)
    extra = []
    try:
        for _ in range(12):  # more than the limit leaves: the last ones wait in the backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(suite.address)
            extra.append(s)
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{proxy}/fd")) < used + 4:
            assert time.monotonic() < deadline
            await client.unary_raw(ECHO, "Echo", b"", metadata=MD)
        with syscalls(thread_id(proxy, "moorage-relay"), "accept4,accept", tmp_path / "strace") as accepts:
            for _ in range(200):
                assert await client.unary_raw(ECHO, "Echo", b"full", metadata=MD) == b"full"
        # every call wakes the relay: a listener still in its epoll set would be ready at each
        # wake (the backlog is not empty) and fail accept4 at least once a call; a paused one
        # is not tried at all (one try at most, had the pause come just after the attach)
        assert len(accepts) <= 2, f"{len(accepts)} accepts while out of fds: {accepts[:3]}"
    finally:
        for s in extra:
            s.close()
        subprocess.run(["prlimit", f"--pid={proxy}", f"--nofile={soft}:"], check=True)
    fresh = await connect(suite.address)
    try:
        assert await fresh.unary_raw(ECHO, "Echo", b"again", metadata=MD) == b"again"
    finally:
        await fresh.close()


async def test_large_messages_pass_intact(client: Client) -> None:
    big = os.urandom((4 << 20) - 4096)
    assert await client.unary_raw(ECHO, "Echo", big, metadata=MD) == big
    stream = await client.open_stream(ECHO, "Bidi", None, 0x02, metadata=MD)
    chunks = [os.urandom(1 << 20) for _ in range(6)]
    for chunk in chunks:
        await stream.send(chunk)
    got = [await stream.recv() for _ in chunks]
    await stream.close_send()
    assert got == chunks
    assert await stream.recv() is None


def reading_paused(pid: int, peer: int) -> bool:
    """Whether one of ``pid``'s sockets connected to ``peer`` sits in an epoll set without
    EPOLLIN: ``pid`` has stopped reading that peer (the kernel's view: fdinfo, ss)."""
    theirs = {os.readlink(f"/proc/{peer}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{peer}/fd")}
    out = subprocess.run(["ss", "-xpnH"], capture_output=True, text=True, check=True).stdout
    fds = {
        int(row[-1].split(f"pid={pid},fd=")[1].split(")")[0])
        for row in (line.split() for line in out.splitlines() if f"pid={pid},fd=" in line)
        if row[7] in theirs
    }
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
            continue
        for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("tfd:"):  # tfd: <fd> events: <hex mask> ...
                words = line.split()
                if int(words[1]) in fds and not int(words[3], 16) & select.EPOLLIN:
                    return True
    return False


async def test_a_client_that_stops_reading_holds_back_only_itself(suite: Suite, client: Client) -> None:
    """Once its buffer is full the relay stops reading its replies from the backend (they
    wait in the socket of its own connection there): the proxy's memory stays bounded,
    other clients of the same service and of others keep being served, and every reply
    arrives when the client reads again."""
    proxy, echo = suite.procs["proxy"].popen.pid, suite.procs["echo"].popen.pid
    calls, size = 96, 1 << 20
    payload = b"y" * size
    frames = b"".join(
        encode_frame(1 + 2 * i, REQUEST, 0, encode_request(ECHO, "Echo", payload, metadata=list(MD.items())))
        for i in range(calls)
    )
    base = rss_kib(proxy)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(suite.address)
    sender = threading.Thread(target=s.sendall, args=(frames,), daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while not reading_paused(proxy, echo):  # the backend's replies wait in its socket
            assert time.monotonic() < deadline, "the relay kept reading a slow client's replies"
            assert await client.unary_raw(ECHO, "Echo", b"e", metadata=MD) == b"e"
        assert rss_kib(proxy) - base < 32 * 1024
        for _ in range(20):
            assert await client.unary_raw(ECHO, "Echo", b"e", metadata=MD) == b"e"
            assert await client.unary_raw(OTHER, "Echo", b"o", metadata=MD) == b"o"
        got = await asyncio.to_thread(raw_frames, s, b"", calls)
    finally:
        s.close()
        sender.join(20)
    assert sorted(sid for sid, _, _, _ in got) == [1 + 2 * i for i in range(calls)]
    assert all(decode_response(body).payload == payload for _, _, _, body in got)


async def test_sigterm_drains_the_calls_the_relay_carries(suite: Suite, client: Client) -> None:
    proxy = suite.procs["proxy"]
    assert await client.unary_raw(ECHO, "Echo", b"x", metadata=MD) == b"x"
    slow = asyncio.ensure_future(client.unary_raw(ECHO, "Sleep", b"1", metadata=MD))
    assert await client.unary_raw(ECHO, "Echo", b"y", metadata=MD) == b"y"  # slow is out
    proxy.popen.send_signal(signal.SIGTERM)
    assert await slow == b"1"
    ended = time.monotonic()
    assert await asyncio.to_thread(proxy.popen.wait, 30) == 0
    # the relay says it is drained when its last call ends: no waiting out the suite's 5 s
    # grace (which would end about 4 s after the 1 s call)
    assert time.monotonic() - ended < 2
    assert not os.path.exists(suite.address)


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "splice"])
async def test_sigterm_lets_a_slow_reader_have_its_whole_answer(tmp_path: Path, relay: bool) -> None:
    """An answer still queued in the proxy for a client that reads slowly is written out
    before the proxy stops (within the grace), by the relay and by the splice alike; the
    call ending at the backend is not the end of it."""
    suite = skeleton_suite(tmp_path, relay=relay)
    try:
        proxy = await asyncio.to_thread(suite.start, "proxy")
        await asyncio.to_thread(suite.start, "echo")
        c = await connect(suite.address)
        try:  # records the namespace, so that the relay carries the big call itself
            assert await c.unary_raw(ECHO, "Echo", b"warm", metadata=MD) == b"warm"
        finally:
            await c.close()
        payload = os.urandom(3 << 20)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(suite.address)
            s.sendall(encode_frame(1, REQUEST, 0, encode_request(ECHO, "Echo", payload, 0, list(MD.items()))))
            s.settimeout(20)
            got = bytearray(s.recv(10))  # the answer has begun: the rest waits in the proxy
            proxy.popen.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proxy.notify.wait_for, "STOPPING=1", None)
            while chunk := s.recv(64 << 10):  # a slow reader: about 0.5 s for the 3 MiB
                got += chunk
                time.sleep(0.01)
        assert await asyncio.to_thread(proxy.popen.wait, 30) == 0
        frames = FrameDecoder().feed(bytes(got))
        assert [(f.stream_id, f.type) for f in frames] == [(1, RESPONSE)], f"{len(got)} bytes came"
        assert isinstance(frames[0], Frame) and decode_response(frames[0].body).payload == payload
    finally:
        suite.close()


async def test_the_splice_serves_alone_when_the_relay_is_off(tmp_path: Path) -> None:
    suite = skeleton_suite(tmp_path, relay=False)
    try:
        proxy = await asyncio.to_thread(suite.start, "proxy")
        await asyncio.to_thread(suite.start, "echo")
        assert "moorage-relay" not in threads(proxy.popen.pid)
        c = await connect(suite.address)
        try:
            for _ in range(3):
                assert await c.unary_raw(ECHO, "Echo", b"z", metadata=MD) == b"z"
            assert "default" in await names(c)
        finally:
            await c.close()
    finally:
        suite.close()
