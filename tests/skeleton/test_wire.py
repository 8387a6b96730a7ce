"""moorage.cli.wire: what it writes parses as containerd's generated messages, and what
they write it reads (the messages `moor run` exchanges)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.cli.wire import Fields, Msg


def test_container_create_request_parses_as_protobuf() -> None:
    runtime = Msg({1: "io.containerd.runc.v2", 2: Msg({1: "containerd.runc.v1.Options",
                                                       2: Msg({6: "crun"}).SerializeToString()})})
    c = Msg({1: "c1", 2: {"a": "1", "b": ""}, 3: "docker.io/library/busybox:latest",
             4: runtime, 5: Msg({1: "types.containerd.io/x", 2: b'{"ociVersion":"1"}'}),
             6: "overlayfs", 7: "c1", 11: ""})
    m = cpb.CreateContainerRequest.FromString(Msg({1: c}).SerializeToString())
    assert m.container.id == "c1" and m.container.snapshot_key == "c1"
    assert dict(m.container.labels) == {"a": "1", "b": ""}
    assert m.container.runtime.name == "io.containerd.runc.v2"
    assert m.container.runtime.options.type_url == "containerd.runc.v1.Options"
    assert m.container.spec.value == b'{"ociVersion":"1"}'
    assert not m.container.sandbox


def test_defaults_are_left_out_and_nested_messages_kept() -> None:
    assert Msg({1: "", 2: 0, 3: False, 4: b"", 5: [], 6: {}}).SerializeToString() == b""
    assert Msg({1: Msg({})}).SerializeToString() == b"\x0a\x00"
    k = tpb.KillRequest.FromString(Msg({1: "c", 2: "", 3: 9, 4: True}).SerializeToString())
    assert (k.container_id, k.exec_id, k.signal, k.all) == ("c", "", 9, True)


def test_reads_protobuf_replies() -> None:
    prep = spb.PrepareSnapshotResponse()
    prep.mounts.add(type="overlay", source="overlay", options=["lowerdir=/a:/b", "upperdir=/u"])
    prep.mounts.add(type="bind", source="/x", options=["rbind"])
    mounts = Fields.FromString(prep.SerializeToString()).msgs(1)
    assert [(m.text(1), m.text(2), m.texts(4)) for m in mounts] == [
        ("overlay", "overlay", ["lowerdir=/a:/b", "upperdir=/u"]), ("bind", "/x", ["rbind"])]
    # raw mounts pass through into the task request unchanged
    req = tpb.CreateTaskRequest.FromString(Msg({1: "c", 3: mounts}).SerializeToString())
    assert list(req.rootfs) == list(prep.mounts)
    d = tpb.DeleteResponse(id="c", pid=42, exit_status=137)
    d.exited_at.seconds = 5
    f = Fields.FromString(d.SerializeToString())
    assert (f.text(1), f.uint(2), f.uint(3), f.msg(4).uint(1)) == ("c", 42, 137, 5)
    r = cpb.CreateContainerResponse()
    r.container.labels["moorage/log-path"] = "/l"
    assert Fields.FromString(r.SerializeToString()).msg(1).pairs(2) == {"moorage/log-path": "/l"}
    assert Fields.FromString(b"").uint(7) == 0 and Fields(b"").text(1) == ""


@given(st.integers(min_value=0, max_value=2**32 - 1), st.text(), st.binary())
def test_round_trip(n: int, s: str, b: bytes) -> None:
    f = Fields.FromString(Msg({1: n, 2: s, 15: b, 300: [s, s]}).SerializeToString())
    assert (f.uint(1), f.text(2), f.blob(15), f.texts(300)) == (n, s, b, [s, s] if s else [])
    assert tpb.StartResponse.FromString(Msg({1: n}).SerializeToString()).pid == n


@pytest.mark.parametrize("data", [b"\x08", b"\x0a\x05ab", b"\x0b", b"\x80"])
def test_truncated_or_bad_input_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        Fields.FromString(data)
