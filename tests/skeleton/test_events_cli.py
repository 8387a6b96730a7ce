"""moor events (moorage/cli/events.py): its tables are containerd's protos, it writes each event
as protobuf's MessageToDict does (an Any of runc's options too), an event or Any of a type it
has no table for as its type URL and base64 bytes; a whole run loads no protobuf."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from google.protobuf import json_format, symbol_database
from hypothesis import given
from hypothesis import strategies as st

from moorage.api.containerd.events import (
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    sandbox_pb2,
    snapshot_pb2,
    task_pb2,
)
from moorage.api.containerd.types import mount_pb2
from moorage.api.containerd.types.runc.options import oci_pb2
from moorage.cli import events

LOADED = (container_pb2, content_pb2, image_pb2, namespace_pb2, sandbox_pb2, snapshot_pb2, task_pb2, oci_pb2)
_KINDS = {9: "s", 3: "i64", 13: "u32", 8: "b"}  # FieldDescriptor.TYPE_*: string, int64, uint32, bool
URL = "types.containerd.io/"


def _schema_of(desc: Any) -> Any:
    out = []
    for fd in desc.fields:
        if fd.message_type is None:
            kind: Any = ("*" if fd.is_repeated else "") + _KINDS[fd.type]
        elif fd.message_type.GetOptions().map_entry:
            kind = "map"
        elif fd.message_type.full_name == "google.protobuf.Timestamp":
            kind = "ts"
        elif fd.message_type.full_name == "google.protobuf.Any":
            kind = "any"
        else:
            kind = _schema_of(fd.message_type)
            kind = [kind] if fd.is_repeated else kind
        out.append((fd.number, fd.name, kind))
    return tuple(sorted(out))


@pytest.mark.parametrize("table", [events.EVENTS, events.ANY_TYPES], ids=["EVENTS", "ANY_TYPES"])
def test_the_tables_are_the_protos(table: dict[str, Any]) -> None:
    for name, schema in table.items():
        assert schema == _schema_of(symbol_database.Default().GetSymbol(name).DESCRIPTOR), name


def _create(options_url: str | None, options: bytes = b"") -> container_pb2.ContainerCreate:
    ev = container_pb2.ContainerCreate(id="c", image="busybox")
    ev.runtime.name = "io.containerd.runc.v2"
    if options_url is not None:
        ev.runtime.options.type_url = options_url
        ev.runtime.options.value = options
    return ev


def _events() -> list[Any]:
    exit_ = task_pb2.TaskExit(container_id="c", id="e", pid=7, exit_status=137)
    exit_.exited_at.FromNanoseconds(1_700_000_000_123_456_789)
    delete = task_pb2.TaskDelete(container_id="c", pid=1)
    delete.exited_at.seconds = 5
    sandbox = sandbox_pb2.SandboxExit(sandbox_id="s")
    sandbox.exited_at.SetInParent()
    runc = oci_pb2.Options(binary_name="crun", root="/run/r", io_uid=1000, systemd_cgroup=True, task_api_version=3)
    return [
        content_pb2.ContentCreate(digest="sha256:x", size=2**40), content_pb2.ContentCreate(digest="d"),
        image_pb2.ImageUpdate(name="n", labels={"a": "1"}), exit_, delete, sandbox,
        task_pb2.TaskCreate(container_id="c", rootfs=[mount_pb2.Mount(type="overlay", options=["ro"]),
                                                      mount_pb2.Mount()], io=task_pb2.TaskIO(terminal=True), pid=3),
        task_pb2.TaskCreate(container_id="c"),
        container_pb2.ContainerCreate(id="c", runtime=container_pb2.ContainerCreate.Runtime(name="r")),
        container_pb2.ContainerUpdate(id="c", labels={"k": "v"}),
        _create("containerd.runc.v1.Options", runc.SerializeToString()),
        _create("type.googleapis.com/containerd.runc.v1.Options", runc.SerializeToString()),
        _create("containerd.runc.v1.Options"),
        _create(""),  # options set, empty: {} as MessageToDict
    ]


@pytest.mark.parametrize("event", _events(), ids=lambda e: type(e).__name__)
def test_events_read_as_message_to_dict(event: Any) -> None:
    want = json_format.MessageToDict(event, preserving_proto_field_name=True)
    got = events.decode_event(URL + event.DESCRIPTOR.full_name, event.SerializeToString())
    assert got == want
    if "options" in want.get("runtime", {}):
        assert json.dumps(got) == json.dumps(want)  # "@type" first, then the fields in order


@given(st.booleans(), st.text(), st.integers(0, 2**32 - 1), st.text(), st.integers(0, 2**32 - 1))
def test_runc_options_read_as_message_to_dict(flag: bool, text: str, uid: int, root: str, version: int) -> None:
    runc = oci_pb2.Options(no_pivot_root=flag, shim_cgroup=text, io_uid=uid, io_gid=uid, binary_name=text,
                           root=root, criu_path=root, systemd_cgroup=not flag, criu_image_path=text,
                           criu_work_path=root, task_api_address=text, task_api_version=version)
    event = _create("containerd.runc.v1.Options", runc.SerializeToString())
    want = json_format.MessageToDict(event, preserving_proto_field_name=True)
    assert json.dumps(events.decode_event(URL + "containerd.events.ContainerCreate", event.SerializeToString())) \
        == json.dumps(want)


def test_other_types_are_their_url_and_base64_bytes() -> None:
    raw = mount_pb2.Mount(type="bind", source="/x").SerializeToString()
    assert events.decode_event("example.com/acme.v1.Thing", raw) == {
        "@type": "example.com/acme.v1.Thing", "value": base64.b64encode(raw).decode()}
    event = _create("acme.v1.RuntimeOptions", raw)
    with pytest.raises(TypeError):  # MessageToDict refuses an Any it cannot resolve
        json_format.MessageToDict(event, preserving_proto_field_name=True)
    got = events.decode_event(URL + "containerd.events.ContainerCreate", event.SerializeToString())
    assert got == {"id": "c", "image": "busybox", "runtime": {
        "name": "io.containerd.runc.v2", "options": {"@type": "acme.v1.RuntimeOptions", "value": base64.b64encode(raw).decode()}}}


def test_bytes_that_do_not_read_as_their_type_are_shown_as_they_are() -> None:
    bad = b"\x0a\x05ab"  # a truncated string field
    assert events.decode_event(URL + "containerd.events.TaskExit", bad) == {
        "@type": URL + "containerd.events.TaskExit", "value": base64.b64encode(bad).decode()}
    event = _create("containerd.runc.v1.Options", bad)
    got = events.decode_event(URL + "containerd.events.ContainerCreate", event.SerializeToString())
    assert got["runtime"]["options"] == {"@type": "containerd.runc.v1.Options", "value": base64.b64encode(bad).decode()}


def test_a_whole_run_writes_each_event_and_loads_no_protobuf() -> None:
    """events.main over a stand-in stream of envelopes (built with moorage.cli.wire): the lines
    it writes, and what it loaded doing so."""
    runc = oci_pb2.Options(binary_name="crun").SerializeToString()
    exit_ = task_pb2.TaskExit(container_id="c", pid=7)
    exit_.exited_at.FromNanoseconds(1_700_000_000_123_456_789)
    sent = [("/containers/create", URL + "containerd.events.ContainerCreate",
             _create("containerd.runc.v1.Options", runc).SerializeToString()),
            ("/tasks/exit", URL + "containerd.events.TaskExit", exit_.SerializeToString()),
            ("/acme/thing", "acme.v1.Thing", b"\x08\x01")]
    probe = (
        "import sys\n"
        "from moorage.cli import events\n"
        "from moorage.cli.wire import Msg\n"
        f"sent = {sent!r}\n"
        "# Envelope{timestamp=1 {seconds=1, nanos=2}, namespace=2, topic=3, event=4 Any{type_url=1, value=2}}\n"
        "envs = [Msg({1: Msg({1: 1700000000, 2: 5000}), 2: 'ns', 3: t, 4: Msg({1: u, 2: v})}).SerializeToString()\n"
        "        for t, u, v in sent] + [None]\n"
        "class Stream:\n"
        "    def recv(self):\n"
        "        return envs.pop(0)\n"
        "class Conn:\n"
        "    def open_stream(self, *args, **kw):\n"
        "        return Stream()\n"
        "class Ctx:\n"
        "    json = True\n"
        "    def connect(self):\n"
        "        return Conn()\n"
        "    def metadata(self):\n"
        "        return ()\n"
        "assert events.main('events', [], Ctx()) == 0\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('google', 'asyncio', 'uvloop', 'json')\n"
        "      or n.endswith('_pb2')), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "[]", out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(d["timestamp"], d["namespace"], d["topic"], d["type"]) for d in lines] == [
        ("2023-11-14T22:13:20.000005+00:00", "ns", t, u) for t, u, _ in sent]
    assert [d["event"] for d in lines] == [
        {"id": "c", "image": "busybox", "runtime": {"name": "io.containerd.runc.v2", "options": {
            "@type": "containerd.runc.v1.Options", "binary_name": "crun"}}},
        {"container_id": "c", "pid": 7, "exited_at": "2023-11-14T22:13:20.123456789Z"},
        {"@type": "acme.v1.Thing", "value": "CAE="}]
