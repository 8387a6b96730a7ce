"""The proxy routes by service name to real backend processes, bytes unchanged: each test
runs with the C relay in front of the splice, and with the splice alone."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.rpc import connect
from suite import Suite, raw_frames, skeleton_suite
from ttrpc.client import Client

ECHO = "moorage.test.v1.Echo"
OTHER = "moorage.test.v1.Other"
MD = {"containerd-namespace-ttrpc": "default"}


@pytest.fixture(params=[True, False], ids=["relay", "splice"])
def suite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Suite]:
    s = skeleton_suite(tmp_path, relay=request.param)
    try:
        yield s
    finally:
        s.close()




async def test_unary_stream_bidi_client_stream(client: Client) -> None:
    assert await client.unary_raw(ECHO, "Echo", b"\x00\xffbytes", metadata=MD) == b"\x00\xffbytes"
    stream = await client.open_stream(OTHER, "Stream", b"4", 0x01, metadata=MD)
    assert [m async for m in stream] == [b"0", b"1", b"2", b"3"]
    bidi = await client.open_stream(ECHO, "Bidi", None, 0x02, metadata=MD)
    for chunk in (b"a", b"", b"c" * 100_000):
        await bidi.send(chunk)
        assert await bidi.recv() == chunk
    await bidi.close_send()
    assert await bidi.recv() is None
    concat = await client.open_stream(ECHO, "Concat", None, 0x02, metadata=MD)
    await concat.send(b"x")
    await concat.send(b"y")
    await concat.close_send()
    assert [m async for m in concat] == [b"xy"]


async def test_a_client_gone_mid_stream_ends_the_backends_input(suite: Suite, client: Client) -> None:
    """A writer that dies mid-stream must not hold the backend's handler (a Write session's
    ref lock) forever: the proxy closes the stream's input toward the backend."""
    gone = await connect(suite.address)
    hold = await gone.open_stream(ECHO, "Hold", None, 0x02, metadata=MD)
    await hold.send(b"held")
    assert await hold.recv() == b"held"
    assert await client.unary_raw(ECHO, "Holding", b"", metadata=MD) == b"1"
    await gone.close()
    deadline = time.monotonic() + 10
    while await client.unary_raw(ECHO, "Holding", b"", metadata=MD) != b"0":
        assert time.monotonic() < deadline, "the backend still waits for the gone client's frames"
        await asyncio.sleep(0.01)


async def test_metadata_reaches_the_backend(client: Client) -> None:
    md = {"containerd-namespace-ttrpc": "prod-1"}
    assert await client.unary_raw(ECHO, "Namespace", b"", metadata=md) == b"prod-1"
    with pytest.raises(errdefs.FailedPrecondition, match="namespace is required"):
        await client.unary_raw(ECHO, "Namespace", b"")


async def test_deadline_is_forwarded(client: Client) -> None:
    start = time.monotonic()
    with pytest.raises(errdefs.DeadlineExceeded):
        await client.unary_raw(ECHO, "Sleep", b"5", timeout_nano=200_000_000, metadata=MD)
    assert time.monotonic() - start < 2
    assert await client.unary_raw(ECHO, "Echo", b"after", metadata=MD) == b"after"


async def test_unknown_service_is_unimplemented_naming_it(client: Client) -> None:
    with pytest.raises(errdefs.NotImplemented, match="service no.such.v1.Service"):
        await client.unary_raw("no.such.v1.Service", "Call", b"")
    stream = await client.open_stream("no.such.v1.Service", "Watch", b"", 0x01)
    with pytest.raises(errdefs.NotImplemented, match="no.such.v1.Service"):
        await stream.recv()


@pytest.mark.parametrize("ns", ["", "-bad", "a..b", "x" * 77, "a/b", "ns with space"])
async def test_invalid_namespace_is_refused(client: Client, ns: str) -> None:
    with pytest.raises(errdefs.InvalidArgument if ns else errdefs.FailedPrecondition):
        await client.unary_raw(ECHO, "Namespace", b"", metadata={"containerd-namespace-ttrpc": ns})


async def test_a_backend_down_is_unavailable_at_once_naming_the_service(suite: Suite, client: Client) -> None:
    suite.stop("other")
    start = time.monotonic()
    with pytest.raises(errdefs.Unavailable, match=OTHER):
        await client.unary_raw(OTHER, "Echo", b"x", metadata=MD)
    assert time.monotonic() - start < 0.5
    assert await client.unary_raw(ECHO, "Echo", b"x", metadata=MD) == b"x"
    await asyncio.to_thread(suite.start, "other")
    assert await client.unary_raw(OTHER, "Echo", b"back", metadata=MD) == b"back"


async def test_a_client_that_connects_and_sends_nothing(suite: Suite, client: Client) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(suite.address)
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half.connect(suite.address)
    half.sendall(b"\x00\x00\x00")  # part of a header, then nothing
    try:
        for _ in range(20):
            assert await client.unary_raw(ECHO, "Echo", b"ok", metadata=MD) == b"ok"
        other = await connect(suite.address)
        assert await other.unary_raw(ECHO, "Echo", b"ok2", metadata=MD) == b"ok2"
        await other.close()
    finally:
        silent.close()
        half.close()
    assert await client.unary_raw(ECHO, "Echo", b"still", metadata=MD) == b"still"


async def test_sockets_are_0660_in_0700_dirs(suite: Suite, client: Client) -> None:
    for path in (suite.address, suite.socket("echo")):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(os.path.dirname(suite.socket("echo"))).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(suite.state).st_mode) == 0o711
    with open("/proc/net/unix") as f:
        mine = [line for line in f if str(suite.state) in line]
    assert mine and not [line for line in mine if " @" in line]


async def test_kill_9_a_backend_under_load(suite: Suite, client: Client) -> None:
    """In-flight calls fail UNAVAILABLE, other services keep working, the client's
    connection to the proxy stays up, and the restarted backend serves new calls."""
    inflight = [
        asyncio.ensure_future(client.unary_raw(ECHO, "Sleep", b"30", metadata=MD)) for _ in range(20)
    ]
    streams = [await client.open_stream(ECHO, "Bidi", None, 0x02, metadata=MD) for _ in range(5)]
    for s in streams:
        await s.send(b"ping")
        assert await s.recv() == b"ping"
    stop = asyncio.Event()

    async def other_load() -> int:
        n = 0
        while not stop.is_set():
            assert await client.unary_raw(OTHER, "Echo", b"o", metadata=MD) == b"o"
            n += 1
        return n

    load = [asyncio.ensure_future(other_load()) for _ in range(8)]
    await asyncio.sleep(0)  # let the load start: ordering only, not a wait for a condition
    suite.kill("echo", signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*inflight, return_exceptions=True), 10)
    assert all(isinstance(r, errdefs.Unavailable) for r in results), results
    assert all(ECHO in str(r) for r in results), results
    for s in streams:
        with pytest.raises(errdefs.Unavailable):
            await asyncio.wait_for(s.recv(), 10)
    with pytest.raises(errdefs.Unavailable, match=ECHO):
        await client.unary_raw(ECHO, "Echo", b"x", metadata=MD)
    stop.set()
    counts = await asyncio.gather(*load)
    assert sum(counts) > 0
    assert not client.closed
    await asyncio.to_thread(suite.start, "echo")
    assert await client.unary_raw(ECHO, "Echo", b"again", metadata=MD) == b"again"
    assert not client.closed


async def test_kill_9_the_proxy_clients_reconnect(suite: Suite, client: Client) -> None:
    suite.kill("proxy", signal.SIGKILL)
    await asyncio.wait_for(client.wait_closed(), 10)
    with pytest.raises(errdefs.Unavailable):
        await client.unary_raw(ECHO, "Echo", b"x", metadata=MD)
    await asyncio.to_thread(suite.start, "proxy")
    fresh = await connect(suite.address)
    try:
        assert await fresh.unary_raw(ECHO, "Echo", b"back", metadata=MD) == b"back"
    finally:
        await fresh.close()


async def test_replicas_share_the_load(tmp_path_factory: pytest.TempPathFactory) -> None:
    suite = Suite(
        tmp_path_factory.mktemp("replicas"),
        config={"echo": {"replicas": 2}},
        plugins=["skeleton.echo:PROCESS"],
    )
    try:
        await asyncio.to_thread(suite.start, "proxy")
        await asyncio.to_thread(suite.start, "echo", 1)
        await asyncio.to_thread(suite.start, "echo", 2)
        c = await connect(suite.address)
        await c.unary_raw(ECHO, "Who", b"", metadata=MD)  # the namespace is known from here on
        # one slow call holds a replica; least-outstanding sends the next ones to the other
        slow = asyncio.ensure_future(c.unary_raw(ECHO, "Sleep", b"1", metadata=MD))
        await asyncio.sleep(0)  # ordering only: the slow request goes out first
        whos = {(await c.unary_raw(ECHO, "Who", b"", metadata=MD)).split()[0] for _ in range(5)}
        await slow
        assert len(whos) == 1
        both = await asyncio.gather(*(c.unary_raw(ECHO, "Sleep", b"0.2", metadata=MD) for _ in range(2)))
        assert both == [b"0.2", b"0.2"]
        seen = {(await c.unary_raw(ECHO, "Who", b"", metadata=MD)).split()[0] for _ in range(3)}
        assert seen <= {b"echo-1", b"echo-2"}
        suite.kill("echo-1")
        # a call racing the proxy's notice of the death may fail UNAVAILABLE; none after it
        for _ in range(3):
            try:
                await c.unary_raw(ECHO, "Who", b"", metadata=MD)
                break
            except errdefs.Unavailable:
                continue
        for _ in range(5):  # one replica down: the other takes every call
            assert (await c.unary_raw(ECHO, "Who", b"", metadata=MD)).split()[0] == b"echo-2"
        await c.close()
    finally:
        suite.close()


async def test_bad_frames_are_refused_per_stream(suite: Suite, client: Client) -> None:
    from ttrpc.frame import DATA, REQUEST, encode_frame, pack_header
    from ttrpc.messages import decode_response, encode_request

    good = encode_request(ECHO, "Echo", b"ok", metadata=[("containerd-namespace-ttrpc", "default")])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(suite.address)
    try:
        cases = [
            (encode_frame(2, REQUEST, 0, good), 3, "StreamID must be odd"),
            (encode_frame(5, REQUEST, 0, good), 0, ""),  # fine
            (encode_frame(3, REQUEST, 0, good), 3, "StreamID cannot be re-used"),
            (encode_frame(9, DATA, 0, b"x"), 3, "no longer active"),
            (encode_frame(11, REQUEST, 0, b"\xff\xff\xff"), 3, "decode"),
            (pack_header((4 << 20) + 1, 13, REQUEST, 0) + b"\x00" * ((4 << 20) + 1), 8, "exceed"),
            (encode_frame(15, REQUEST, 0, good), 0, ""),  # the connection still serves
        ]
        for frame, code, text in cases:
            ((sid, mtype, _, body),) = raw_frames(s, frame, 1)
            resp = decode_response(body)
            assert resp.code == code, (frame[:20], resp)
            assert text in resp.message
            if code == 0:
                assert resp.payload == b"ok"
    finally:
        s.close()
    assert await client.unary_raw(ECHO, "Echo", b"fine", metadata=MD) == b"fine"


async def test_a_process_publishes_through_the_proxy(suite: Suite, client: Client) -> None:
    from moorage.api.containerd.events import namespace_pb2
    from moorage.api.containerd.services.events.v1 import events_pb2
    from moorage.api.containerd.types import event_pb2

    req = events_pb2.SubscribeRequest(filters=['topic=="/echo/published"'])
    stream = await client.open_stream("containerd.services.events.v1.Events", "Subscribe", req.SerializeToString(), 0x01)
    got = None
    while got is None:  # until the subscription is live: publish again on every miss
        await client.unary_raw(ECHO, "Publish", b"from-echo", metadata={"containerd-namespace-ttrpc": "pub"})
        try:
            data = await asyncio.wait_for(stream.recv(), 0.2)
        except TimeoutError:
            continue
        assert data is not None
        got = event_pb2.Envelope.FromString(data)
    assert (got.namespace, got.topic) == ("pub", "/echo/published")
    assert namespace_pb2.NamespaceUpdate.FromString(got.event.value).name == "from-echo"


async def test_sigterm_ends_events_subscriptions_and_does_not_wait_for_them(suite: Suite, client: Client) -> None:
    """A Subscribe stream never ends on its own: the stopping proxy ends it (the subscriber
    sees the stream close) instead of waiting out its grace (the suite's is 5 s)."""
    assert await _published(client, b"live") == "live"  # the subscription is live
    from moorage.api.containerd.services.events.v1 import events_pb2

    req = events_pb2.SubscribeRequest(filters=['topic=="/never"'])
    stream = await client.open_stream("containerd.services.events.v1.Events", "Subscribe", req.SerializeToString(), 0x01)
    assert await client.unary_raw(ECHO, "Echo", b"x", metadata=MD) == b"x"  # it is open
    proxy = suite.procs["proxy"]
    stopping = time.monotonic()
    proxy.popen.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(stream.recv(), 20) is None  # ended, not cut
    assert await asyncio.to_thread(proxy.popen.wait, 30) == 0
    assert time.monotonic() - stopping < 4


async def _published(client: Client, payload: bytes) -> str:
    from moorage.api.containerd.events import namespace_pb2
    from moorage.api.containerd.services.events.v1 import events_pb2
    from moorage.api.containerd.types import event_pb2

    req = events_pb2.SubscribeRequest(filters=['topic=="/echo/published"'])
    stream = await client.open_stream("containerd.services.events.v1.Events", "Subscribe", req.SerializeToString(), 0x01)
    while True:
        await client.unary_raw(ECHO, "Publish", payload, metadata={"containerd-namespace-ttrpc": "pub"})
        try:
            data = await asyncio.wait_for(stream.recv(), 0.2)
        except TimeoutError:
            continue
        assert data is not None
        return namespace_pb2.NamespaceUpdate.FromString(event_pb2.Envelope.FromString(data).event.value).name


async def test_publisher_reconnects_after_the_proxy_restarts(suite: Suite, client: Client) -> None:
    assert await _published(client, b"before") == "before"
    suite.kill("proxy")
    await asyncio.to_thread(suite.start, "proxy")
    fresh = await connect(suite.address)
    try:
        assert await _published(fresh, b"after") == "after"
    finally:
        await fresh.close()


async def test_a_backend_connection_whose_ids_run_out_is_replaced_then_closed(suite: Suite, client: Client) -> None:
    """A client whose stream ids leap ahead uses up the shared backend connection's ids (the
    proxy takes a client's id when it is at most 2^20 ahead): new calls go to a fresh
    connection and the used-up one closes once its last call ends, not later, not never."""
    from ttrpc.frame import REQUEST, encode_frame
    from ttrpc.messages import decode_response, encode_request

    for _ in range(2):  # the first call records the namespace; the second opens the route
        assert await client.unary_raw(ECHO, "Echo", b"warm", metadata=MD) == b"warm"
    echo = suite.procs["echo"].popen.pid

    def sockets() -> int:
        return sum(os.readlink(f"/proc/{echo}/fd/{fd}").startswith("socket:")
                   for fd in os.listdir(f"/proc/{echo}/fd"))

    before = sockets()
    good = encode_request(ECHO, "Echo", b"ok", metadata=[("containerd-namespace-ttrpc", "default")])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(suite.address)
    try:
        for sid in [1 + k * (1 << 20) for k in range(2048)] + [(1 << 31) - 1]:
            ((got, _, _, body),) = raw_frames(s, encode_frame(sid, REQUEST, 0, good), 1)
            assert (got, decode_response(body).payload) == (sid, b"ok")
    finally:
        s.close()
    assert await client.unary_raw(ECHO, "Echo", b"after", metadata=MD) == b"after"
    deadline = time.monotonic() + 10
    while sockets() != before:  # the fresh connection came, the used-up one went
        assert time.monotonic() < deadline, f"echo holds {sockets()} sockets, {before} before"
        await asyncio.sleep(0.02)
