"""The content service as deployed: events through the proxy, two replicas on one root,
and the fast-path wire encoding checked against protobuf."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage import errdefs
from moorage.api.containerd.services.content.v1 import content_pb2 as pb
from moorage.services.content import digests, wire

from .test_conformance import read_all, write_blob

suite_mod = pytest.importorskip("suite")


@given(
    ref=st.text(min_size=0, max_size=300),
    offset=st.integers(min_value=0, max_value=(1 << 63) - 1),
    data=st.binary(max_size=3000),
)
@settings(max_examples=300, deadline=None)
def test_encode_write_matches_protobuf(ref: str, offset: int, data: bytes) -> None:
    refb = ref.encode("utf-8", "surrogatepass")
    try:
        expected = pb.WriteContentRequest(action=pb.WRITE, ref=ref, offset=offset, data=data)
        want = expected.SerializeToString()
    except (UnicodeEncodeError, ValueError):
        return
    got = wire.encode_write(refb, offset, data)
    assert pb.WriteContentRequest.FromString(got) == expected
    assert got == want


@given(st.text(max_size=200))
@settings(max_examples=500, deadline=None)
def test_digest_and_ref_validation_never_crash(text: str) -> None:
    for fn in (digests.validate, digests.validate_ref):
        try:
            fn(text)
        except errdefs.InvalidArgument:
            pass


def test_valid_digests_pass() -> None:
    for alg, n in (("sha256", 64), ("sha384", 96), ("sha512", 128)):
        assert digests.validate(f"{alg}:" + "0af" * (n // 3) + "0" * (n % 3)) == (
            alg, "0af" * (n // 3) + "0" * (n % 3))


@pytest.fixture
def replicas() -> Any:
    tmp = Path(tempfile.mkdtemp(prefix="moorage-", dir="/tmp"))
    s = suite_mod.Suite(tmp, config={"content": {"replicas": 2}})
    try:
        s.start("proxy")
        s.start("content", 1)
        s.start("content", 2)
        yield s
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_events_through_the_proxy(replicas: Any) -> None:
    from moorage.api.containerd.events import content_pb2 as events_pb
    from moorage.api.containerd.services.events.v1 import events_pb2
    from moorage.api.containerd.types import event_pb2
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    client = await connect(replicas.address)
    envelopes: asyncio.Queue[Any] = asyncio.Queue()

    async def subscribe() -> None:
        async for env in client.server_stream(
            "containerd.services.events.v1.Events", "Subscribe",
            events_pb2.SubscribeRequest(filters=['topic~="^/content/"']), event_pb2.Envelope,
        ):
            await envelopes.put(env)

    task = asyncio.create_task(subscribe())
    try:
        cs = ContentClient(client)
        await _until_subscribed(client, envelopes)
        data = random.Random(1).randbytes(5000)
        d = await write_blob(cs, "ev", data)
        await cs.delete(d)
        first = await asyncio.wait_for(envelopes.get(), 10)
        second = await asyncio.wait_for(envelopes.get(), 10)
    finally:
        task.cancel()
        await client.close()
    assert (first.topic, second.topic) == ("/content/create", "/content/delete")
    assert first.namespace == second.namespace and first.namespace.startswith("conformance")
    created = events_pb.ContentCreate.FromString(first.event.value)
    assert (created.digest, created.size) == (d, 5000)
    assert events_pb.ContentDelete.FromString(second.event.value).digest == d


async def _until_subscribed(client: Any, envelopes: asyncio.Queue[Any]) -> None:
    """Publish probes until one comes back: the subscription is then live."""
    from google.protobuf import any_pb2

    from moorage.api.containerd.events import content_pb2 as events_pb
    from moorage.api.containerd.services.events.v1 import events_pb2
    from moorage.namespaces import NAMESPACE_KEY, current_namespace

    probe = events_pb.ContentDelete(digest="probe")
    req = events_pb2.PublishRequest(topic="/content/probe", event=any_pb2.Any(
        type_url=probe.DESCRIPTOR.full_name, value=probe.SerializeToString()))
    for _ in range(100):
        await client.unary_raw("containerd.services.events.v1.Events", "Publish",
                               req.SerializeToString(),
                               metadata={NAMESPACE_KEY: str(current_namespace.get())})
        try:
            await asyncio.wait_for(envelopes.get(), 0.1)
        except TimeoutError:
            continue
        break
    else:
        raise AssertionError("the subscription never delivered a probe")
    while not envelopes.empty():
        assert envelopes.get_nowait().topic == "/content/probe"


async def test_two_replicas_on_one_root(replicas: Any) -> None:
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    c1, c2 = await connect(replicas.socket("content", 1)), await connect(replicas.socket("content", 2))
    try:
        r1, r2 = ContentClient(c1), ContentClient(c2)
        w = await r1.writer("held")
        await w.write(b"partial")
        with pytest.raises(errdefs.Unavailable):
            await r2.writer("held")
        with pytest.raises(errdefs.Unavailable):
            await r2.abort("held")
        assert (await r2.status("held")).offset == 7
        await w.close()
        w = await r2.writer("held")
        assert (await w.status()).offset == 7
        await w.write(b" then whole")
        d = await w.commit()
        assert await read_all(r1, d) == b"partial then whole"

        data = random.Random(2).randbytes(4 << 20)
        d2 = "sha256:" + hashlib.sha256(data).hexdigest()
        wa, wb = await r1.writer("race-1"), await r2.writer("race-2")
        await asyncio.gather(wa.write(data), wb.write(data))
        results = await asyncio.gather(
            wa.commit(len(data), d2), wb.commit(len(data), d2), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "str"], results
        assert await read_all(r2, d2) == await read_all(r1, d2) == data
        assert await r1.list_statuses() == [] and await r2.list_statuses() == []
    finally:
        await c1.close()
        await c2.close()


@given(
    action=st.sampled_from([0, 1, 2, 7, -1]),
    ref=st.text(max_size=50),
    total=st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    expected=st.text(max_size=80),
    offset=st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    data=st.binary(max_size=2000),
    labels=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
@settings(max_examples=300, deadline=None)
def test_parse_write_matches_protobuf(
    action: int, ref: str, total: int, expected: str, offset: int, data: bytes, labels: dict[str, str]
) -> None:
    try:
        m = pb.WriteContentRequest(action=action, ref=ref, total=total, expected=expected,  # type: ignore[arg-type]
                                   offset=offset, data=data, labels=labels)
        payload = m.SerializeToString()
    except (UnicodeEncodeError, ValueError):
        return
    got = wire.parse_write(payload)
    assert (got.action, got.ref, got.total, got.expected, got.offset, bytes(got.data), got.labels) == (
        m.action, m.ref, m.total, m.expected, m.offset, m.data, dict(m.labels))


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_parse_write_agrees_with_protobuf_on_any_bytes(payload: bytes) -> None:
    from google.protobuf.message import DecodeError

    try:
        m = pb.WriteContentRequest.FromString(payload)
    except DecodeError:
        with pytest.raises(errdefs.InvalidArgument):
            wire.parse_write(payload)
        return
    got = wire.parse_write(payload)
    assert (got.action, got.ref, got.total, got.expected, got.offset, bytes(got.data), got.labels) == (
        m.action, m.ref, m.total, m.expected, m.offset, m.data, dict(m.labels))


async def _session(client: Any, *reqs: Any) -> list[Any]:
    """Send raw WriteContentRequests on one Write stream; the replies (or the error)."""
    from ttrpc.frame import FLAG_REMOTE_OPEN

    from moorage.namespaces import NAMESPACE_KEY, current_namespace

    stream = await client.open_stream(wire.SERVICE, "Write", None, FLAG_REMOTE_OPEN,
                                      metadata={NAMESPACE_KEY: str(current_namespace.get())})
    out: list[Any] = []
    try:
        for req in reqs:
            await stream.send(req.SerializeToString())
            data = await stream.recv()
            if data is None:
                break
            out.append(pb.WriteContentResponse.FromString(data))
        await stream.close_send()
        while await stream.recv() is not None:
            pass
    finally:
        await stream.aclose()
    return out


async def test_write_session_wire_semantics(root: Path) -> None:
    from .conftest import serving

    W = pb.WriteContentRequest
    async with serving(root) as client:
        with pytest.raises(errdefs.InvalidArgument):  # the first message must name a ref
            await _session(client, W(action=pb.STAT))
        # every request gets one reply echoing its action, offset = bytes so far
        got = await _session(client, W(action=pb.STAT, ref="s", total=10),
                             W(action=pb.WRITE, ref="s", data=b"01234"),
                             W(action=pb.WRITE, ref="s", offset=5, data=b"56"))
        assert [(r.action, r.offset) for r in got] == [(pb.STAT, 0), (pb.WRITE, 5), (pb.WRITE, 7)]
        assert got[0].total == 10 and got[2].digest == "sha256:" + hashlib.sha256(b"0123456").hexdigest()
        with pytest.raises(errdefs.OutOfRange):  # a non-zero offset must be the current one
            await _session(client, W(action=pb.WRITE, ref="s", offset=3, data=b"x"))
        # resumed: offset 0 on a non-empty ingest restarts it
        got = await _session(client, W(action=pb.STAT, ref="s"),
                             W(action=pb.WRITE, ref="s", offset=0, data=b"abc"))
        assert [r.offset for r in got] == [7, 3]
        d = "sha256:" + hashlib.sha256(b"abcdefghij").hexdigest()
        got = await _session(client, W(action=pb.STAT, ref="s"),
                             W(action=pb.COMMIT, ref="s", offset=3, data=b"defghij", total=10,
                               expected=d, labels={"k": "v"}))
        assert (got[1].action, got[1].offset, got[1].digest) == (pb.COMMIT, 10, d)
        info = await client.unary(wire.SERVICE, "Info", pb.InfoRequest(digest=d), pb.InfoResponse,
                                  metadata=_md())
        assert dict(info.info.labels) == {"k": "v"} and info.info.size == 10
        # an expected digest the namespace has: AlreadyExists, the ingest is dropped
        with pytest.raises(errdefs.AlreadyExists):
            await _session(client, W(action=pb.STAT, ref="t", expected=d))
        # read: offsets tag each chunk, past the end is OutOfRange
        chunks = [r async for r in client.server_stream(
            wire.SERVICE, "Read", pb.ReadContentRequest(digest=d, offset=4, size=3),
            pb.ReadContentResponse, metadata=_md())]
        assert [(c.offset, c.data) for c in chunks] == [(4, b"efg")]
        with pytest.raises(errdefs.OutOfRange):
            [r async for r in client.server_stream(
                wire.SERVICE, "Read", pb.ReadContentRequest(digest=d, offset=11),
                pb.ReadContentResponse, metadata=_md())]


def _md() -> dict[str, str]:
    from moorage.namespaces import NAMESPACE_KEY, current_namespace

    return {NAMESPACE_KEY: str(current_namespace.get())}


async def test_many_concurrent_sessions(root: Path) -> None:
    """30 writers at once (some on the same digest, some in other namespaces), then reads."""
    from moorage.namespaces import current_namespace
    from moorage.services.content.client import ContentClient

    from .conftest import serving, using

    base = str(current_namespace.get())
    blobs = [random.Random(i).randbytes((i % 4) * 700_000 + 1000) for i in range(10)]
    async with serving(root) as client:
        cs = ContentClient(client)

        async def one(i: int) -> tuple[str, str]:
            ns = f"{base}-{i % 3}"
            with using(ns):
                data = blobs[i % 10]
                d = "sha256:" + hashlib.sha256(data).hexdigest()
                try:
                    got = await write_blob(cs, f"ref-{i}", data, d)
                except errdefs.AlreadyExists:
                    got = d
                return ns, got

        done = await asyncio.gather(*(one(i) for i in range(30)))
        for ns, d in done:
            with using(ns):
                data = b"".join([c async for c in cs.read(d)])
                assert "sha256:" + hashlib.sha256(data).hexdigest() == d
                assert await cs.list_statuses() == []
    assert len(list((root / "blobs" / "sha256").iterdir())) == 10
