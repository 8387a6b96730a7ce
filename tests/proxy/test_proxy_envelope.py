"""route_of reads the service and namespaces exactly as ttrpc's full decoder does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from moorage.proxy.envelope import route_of
from ttrpc.errors import ProtocolError
from ttrpc.messages import decode_request, encode_request

KEY = "containerd-namespace-ttrpc"
text = st.text(max_size=40)
meta = st.lists(st.tuples(st.sampled_from([KEY, "x-other", "", KEY.upper()]) | text, text), max_size=5)


@settings(max_examples=400, deadline=None)
@given(text, text, st.binary(max_size=300), st.integers(min_value=0, max_value=(1 << 63) - 1), meta)
def test_same_as_the_full_decoder(service: str, method: str, payload: bytes, timeout: int, md: list[tuple[str, str]]) -> None:
    body = encode_request(service, method, payload, timeout, md)
    req = decode_request(body)
    assert route_of(body) == (req.service, [v for k, v in req.metadata if k == KEY])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_decodes_the_same_or_raises_protocol_error(body: bytes) -> None:
    try:
        req = decode_request(body)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            route_of(body)
        return
    assert route_of(body) == (req.service, [v for k, v in req.metadata if k == KEY])


def test_big_payload_is_not_copied_to_find_the_namespace() -> None:
    body = encode_request("a.b.v1.S", "M", b"\x2a" * (1 << 20), 5, [(KEY, "prod")])
    assert route_of(body) == ("a.b.v1.S", ["prod"])


def test_a_cached_tail_serves_other_services_and_a_late_service_field_wins() -> None:
    first = encode_request("a.b.v1.S", "M", b"p", 7, [(KEY, "prod")])
    other = encode_request("c.d.v1.T", "N", b"pq", 7, [(KEY, "prod")])
    for _ in range(2):  # the second round reads the tails from the cache
        assert route_of(first) == ("a.b.v1.S", ["prod"])
        assert route_of(other) == ("c.d.v1.T", ["prod"])
    late = first + b"\x0a\x03x.y"  # a second service field after the metadata: the last wins
    for _ in range(2):
        assert route_of(late) == (decode_request(late).service, ["prod"]) == ("x.y", ["prod"])


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=10, max_size=10), text, st.binary(max_size=300), meta)
def test_a_whole_frame_is_read_past_its_header(header: bytes, service: str, payload: bytes, md: list[tuple[str, str]]) -> None:
    body = encode_request(service, "M", payload, 0, md)
    assert route_of(header + body, 10) == route_of(body)
