"""Bad input at the gRPC front door answers as containerd does, and the door stays up."""

from __future__ import annotations

import grpc
import pytest

from moorage.api.containerd.services.containers.v1 import containers_pb2 as containers
from moorage.api.containerd.services.leases.v1 import leases_pb2 as leases

from .conftest import Ctr, ok

NS = (("containerd-namespace", "default"),)


@pytest.fixture
def channel(grpc_address: str):  # type: ignore[no-untyped-def]
    ch = grpc.insecure_channel(
        f"unix:{grpc_address}",
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )
    yield ch
    ch.close()


def _call(channel: grpc.Channel, method: str, payload: bytes, metadata=NS):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method)(payload, metadata=metadata, timeout=30)
    return info.value.code(), info.value.details()


def test_unknown_method_is_unimplemented_naming_it(channel: grpc.Channel) -> None:
    code, msg = _call(channel, "/containerd.services.content.v1.Content/Nope", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert msg == "unknown method Nope for service containerd.services.content.v1.Content"
    code, msg = _call(channel, "/containerd.services.nope.v1.Nope/List", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED and msg == "unknown service containerd.services.nope.v1.Nope"


@pytest.mark.parametrize(
    "method",
    [
        "/containerd.services.containers.v1.Containers/List",
        "/containerd.services.images.v1.Images/List",
        "/containerd.services.leases.v1.Leases/List",
        "/containerd.services.tasks.v1.Tasks/List",
    ],
)
def test_no_namespace_is_failed_precondition(channel: grpc.Channel, method: str) -> None:
    code, msg = _call(channel, method, b"", metadata=())
    assert code == grpc.StatusCode.FAILED_PRECONDITION and msg == "namespace is required"


def test_five_mib_message_is_resource_exhausted(channel: grpc.Channel) -> None:
    big = containers.CreateContainerRequest(container=containers.Container(id="big", labels={"a": "x" * (5 << 20)}))
    code, msg = _call(channel, "/containerd.services.containers.v1.Containers/Create", big.SerializeToString())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceed maximum message size of 4194304" in msg
    after = channel.unary_unary("/containerd.services.leases.v1.Leases/List")(
        leases.ListRequest().SerializeToString(), metadata=NS, timeout=30
    )
    assert leases.ListResponse.FromString(after) is not None


def test_over_sixteen_mib_is_refused_by_grpc(channel: grpc.Channel) -> None:
    big = containers.CreateContainerRequest(container=containers.Container(id="big", labels={"a": "x" * (17 << 20)}))
    code, msg = _call(channel, "/containerd.services.containers.v1.Containers/Create", big.SerializeToString())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in msg


def test_deadline_is_carried(channel: grpc.Channel) -> None:
    from moorage.api.containerd.services.events.v1 import events_pb2

    # a filter no event matches: events other tests publish must not end the wait
    quiet = events_pb2.SubscribeRequest(filters=['topic=="/moorage/test/never"']).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_stream("/containerd.services.events.v1.Events/Subscribe")(quiet, metadata=NS, timeout=0.5).next()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_ctr_with_an_invalid_namespace(ctr: Ctr) -> None:
    r = ctr("containers", "ls", namespace="bad/ns")
    assert r.returncode != 0 and "invalid argument" in r.stderr
    ok(ctr("version"))
