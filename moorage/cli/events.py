"""``moor events [FILTER...]``: print events as the proxy receives them, until Ctrl-C.

Filters use containerd's syntax, each argument one alternative (OR), commas inside one
AND: ``moor events 'topic~="/namespaces/"' 'namespace==prod'``. People get one line per
event (time, namespace, topic, event as JSON); ``--json`` prints one JSON object per line.
Exit 0 when the stream ends (the proxy stopped), per kind on error, 130 on Ctrl-C.

Envelopes and the events of :data:`EVENTS` (containerd's own, api/containerd/events/*.proto)
are read through moorage.cli.wire, and written as protobuf's ``MessageToDict`` writes them
(proto field names, defaults left out, 64-bit integers as strings, timestamps in RFC 3339):
no protobuf import, ever. A ``google.protobuf.Any`` inside an event (a ContainerCreate's
runtime options) is written as MessageToDict writes a resolvable one, ``{"@type": URL, ...its
fields}``, when its type is in :data:`ANY_TYPES` (runc's options); an event or Any of
another type as ``{"@type": URL, "value": BASE64}``, its bytes as protobuf's JSON and
ctr write bytes (MessageToDict itself refuses a type it cannot resolve).
"""

from __future__ import annotations

import sys
from binascii import b2a_base64
from datetime import datetime, timedelta, timezone

from moorage.cli.context import EXIT, CliContext
from moorage.cli.wire import Fields, Msg, rfc3339
from moorage.jsoncodec import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Kind: TypeAlias = "str | Schema | list[Schema]"
    Schema: TypeAlias = tuple[tuple[int, str, Kind], ...]

SERVICE = "containerd.services.events.v1.Events"
FLAG_REMOTE_CLOSED = 0x01
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Kinds: s string, i64 int64 (a JSON string), u32 uint32, b bool, map map<string, string>,
# *s repeated string, ts google.protobuf.Timestamp, any google.protobuf.Any (see ANY_TYPES),
# a Schema a nested message, [Schema] a repeated one.
_MOUNT: Schema = ((1, "type", "s"), (2, "source", "s"), (3, "target", "s"), (4, "options", "*s"))
_TASK_IO: Schema = ((1, "stdin", "s"), (2, "stdout", "s"), (3, "stderr", "s"), (4, "terminal", "b"))
_NAME_LABELS: Schema = ((1, "name", "s"), (2, "labels", "map"))
_CONTAINER_ID: Schema = ((1, "container_id", "s"),)
_SANDBOX_ID: Schema = ((1, "sandbox_id", "s"),)
_EV = "containerd.events."
_IMAGES = "containerd.services.images.v1."
EVENTS: dict[str, Schema] = {
    _EV + "ContainerCreate": ((1, "id", "s"), (2, "image", "s"),
                              (3, "runtime", ((1, "name", "s"), (2, "options", "any")))),
    _EV + "ContainerUpdate": ((1, "id", "s"), (2, "image", "s"), (3, "labels", "map"), (4, "snapshot_key", "s")),
    _EV + "ContainerDelete": ((1, "id", "s"),),
    _EV + "ContentCreate": ((1, "digest", "s"), (2, "size", "i64"), (3, "mediaType", "s")),
    _EV + "ContentDelete": ((1, "digest", "s"),),
    _IMAGES + "ImageCreate": _NAME_LABELS,
    _IMAGES + "ImageUpdate": _NAME_LABELS,
    _IMAGES + "ImageDelete": ((1, "name", "s"),),
    _EV + "NamespaceCreate": _NAME_LABELS,
    _EV + "NamespaceUpdate": _NAME_LABELS,
    _EV + "NamespaceDelete": ((1, "name", "s"),),
    _EV + "SandboxCreate": _SANDBOX_ID,
    _EV + "SandboxStart": _SANDBOX_ID,
    _EV + "SandboxExit": ((1, "sandbox_id", "s"), (2, "exit_status", "u32"), (3, "exited_at", "ts")),
    _EV + "SnapshotPrepare": ((1, "key", "s"), (2, "parent", "s"), (5, "snapshotter", "s")),
    _EV + "SnapshotCommit": ((1, "key", "s"), (2, "name", "s"), (5, "snapshotter", "s")),
    _EV + "SnapshotRemove": ((1, "key", "s"), (5, "snapshotter", "s")),
    _EV + "TaskCreate": ((1, "container_id", "s"), (2, "bundle", "s"), (3, "rootfs", [_MOUNT]), (4, "io", _TASK_IO),
                         (5, "checkpoint", "s"), (6, "pid", "u32")),
    _EV + "TaskStart": ((1, "container_id", "s"), (2, "pid", "u32")),
    _EV + "TaskDelete": ((1, "container_id", "s"), (2, "pid", "u32"), (3, "exit_status", "u32"),
                         (4, "exited_at", "ts"), (5, "id", "s")),
    _EV + "TaskExit": ((1, "container_id", "s"), (2, "id", "s"), (3, "pid", "u32"), (4, "exit_status", "u32"),
                       (5, "exited_at", "ts")),
    _EV + "TaskOOM": _CONTAINER_ID,
    _EV + "TaskExecAdded": ((1, "container_id", "s"), (2, "exec_id", "s")),
    _EV + "TaskExecStarted": ((1, "container_id", "s"), (2, "exec_id", "s"), (3, "pid", "u32")),
    _EV + "TaskPaused": _CONTAINER_ID,
    _EV + "TaskResumed": _CONTAINER_ID,
    _EV + "TaskCheckpointed": ((1, "container_id", "s"), (2, "checkpoint", "s")),
}


ANY_TYPES: dict[str, Schema] = {
    # api/containerd/types/runc/options/oci.proto: what `moor run` and the runtime give runc
    "containerd.runc.v1.Options": ((1, "no_pivot_root", "b"), (2, "no_new_keyring", "b"), (3, "shim_cgroup", "s"),
                                   (4, "io_uid", "u32"), (5, "io_gid", "u32"), (6, "binary_name", "s"),
                                   (7, "root", "s"), (8, "criu_path", "s"), (9, "systemd_cgroup", "b"),
                                   (10, "criu_image_path", "s"), (11, "criu_work_path", "s"),
                                   (12, "task_api_address", "s"), (13, "task_api_version", "u32")),
}
"""Types an Any inside an event is written field by field from (else type URL and base64)."""


def _to_dict(f: Fields, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, name, kind in schema:
        value: Any
        if isinstance(kind, str) and kind not in ("ts", "any"):
            if kind == "s":
                value = f.text(number)
            elif kind == "i64":
                value = str(f.int64(number)) if f.int64(number) else ""
            elif kind == "u32":
                value = f.uint(number) & 0xFFFFFFFF
            elif kind == "b":
                value = bool(f.uint(number))
            elif kind == "map":
                value = f.pairs(number)
            else:  # *s
                value = f.texts(number)
            if value:
                out[name] = value
        elif not f.has(number):
            continue
        elif isinstance(kind, list):
            out[name] = [_to_dict(m, kind[0]) for m in f.msgs(number)]
        elif isinstance(kind, tuple):
            out[name] = _to_dict(f.msg(number), kind)
        elif kind == "ts":
            out[name] = rfc3339(f.msg(number))
        else:  # any: Any{type_url=1, value=2}
            out[name] = _any(f.msg(number))
    return out


def _any(a: Fields) -> dict[str, Any]:
    type_url, value = a.text(1), a.blob(2)
    if not type_url and not value:
        return {}
    schema = ANY_TYPES.get(type_url.rsplit("/", 1)[-1])
    if schema is not None:
        try:
            return {"@type": type_url, **_to_dict(Fields(value), schema)}
        except ValueError:  # not what its type says: as an unknown one
            pass
    return _opaque(type_url, value)


def _opaque(type_url: str, value: bytes) -> dict[str, str]:
    return {"@type": type_url, "value": b2a_base64(value, newline=False).decode("ascii")}


def decode_event(type_url: str, value: bytes) -> Any:
    """The event as a dict: by its fields when its type is in :data:`EVENTS` (and its bytes
    read as that type), else its type URL and its bytes in base64."""
    schema = EVENTS.get(type_url.rsplit("/", 1)[-1])
    if schema is not None:
        try:
            return _to_dict(Fields(value), schema)
        except ValueError:
            pass
    return _opaque(type_url, value)


def _time(env: Fields) -> datetime:
    """The envelope's timestamp=1 {seconds=1, nanos=2} (now without one), as protobuf's
    ``ToDatetime(tzinfo=timezone.utc)``: microseconds, rounded toward zero."""
    if not env.has(1):
        return datetime.now(timezone.utc)
    ts = env.msg(1)
    nanos = ts.int64(2)
    micros = nanos // 1000 if nanos >= 0 else -(-nanos // 1000)
    return EPOCH + timedelta(seconds=ts.int64(1), microseconds=micros)


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT["ok"]
    req = Msg({1: argv})  # SubscribeRequest{filters=1}
    stream = ctx.connect().open_stream(
        SERVICE, "Subscribe", req.SerializeToString(), FLAG_REMOTE_CLOSED, metadata=ctx.metadata()
    )
    out = sys.stdout
    while True:
        data = stream.recv()
        if data is None:
            return EXIT["ok"]
        # Envelope{timestamp=1, namespace=2, topic=3, event=4 Any{type_url=1, value=2}}
        env = Fields(data)
        ts = _time(env)
        namespace, topic, any_event = env.text(2), env.text(3), env.msg(4)
        type_url = any_event.text(1)
        event = decode_event(type_url, any_event.blob(2))
        if ctx.json:
            out.write(dumps({"timestamp": ts.isoformat(), "namespace": namespace,
                             "topic": topic, "type": type_url, "event": event}) + "\n")
        else:
            out.write(f"{ts.isoformat(timespec='microseconds')} {namespace} {topic} "
                      f"{dumps(event, separators=(',', ':'))}\n")
        out.flush()
