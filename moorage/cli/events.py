"""``moor events [FILTER...]``: print events as the proxy receives them, until Ctrl-C.

Filters use containerd's syntax, each argument one alternative (OR), commas inside one
AND: ``moor events 'topic~="/namespaces/"' 'namespace==prod'``. People get one line per
event (time, namespace, topic, event as JSON); ``--json`` prints one JSON object per line.
Exit 0 when the stream ends (the proxy stopped), per kind on error, 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

from moorage.cli.context import EXIT, CliContext

SERVICE = "containerd.services.events.v1.Events"
FLAG_REMOTE_CLOSED = 0x01


def decode_event(type_url: str, value: bytes) -> Any:
    """The event as a dict when its type is known (containerd.events.*), else base64-free hex."""
    from google.protobuf import json_format, symbol_database

    _load_event_types()
    name = type_url.rsplit("/", 1)[-1]
    try:
        cls = symbol_database.Default().GetSymbol(name)
    except KeyError:
        return {"@type": type_url, "value": value.hex()}
    msg = cls.FromString(value)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _load_event_types() -> None:
    import importlib

    for mod in ("container", "content", "image", "namespace", "sandbox", "snapshot", "task"):
        try:
            importlib.import_module(f"moorage.api.containerd.events.{mod}_pb2")
        except ImportError:
            pass


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    from moorage.api.containerd.services.events.v1 import events_pb2 as pb
    from moorage.api.containerd.types import event_pb2

    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT["ok"]
    req = pb.SubscribeRequest(filters=argv)
    stream = ctx.connect().open_stream(
        SERVICE, "Subscribe", req.SerializeToString(), FLAG_REMOTE_CLOSED, metadata=ctx.metadata()
    )
    out = sys.stdout
    while True:
        data = stream.recv()
        if data is None:
            return EXIT["ok"]
        env = event_pb2.Envelope.FromString(data)
        ts = env.timestamp.ToDatetime(tzinfo=timezone.utc) if env.HasField("timestamp") else datetime.now(timezone.utc)
        event = decode_event(env.event.type_url, env.event.value)
        if ctx.json:
            out.write(json.dumps({"timestamp": ts.isoformat(), "namespace": env.namespace,
                                  "topic": env.topic, "type": env.event.type_url, "event": event}) + "\n")
        else:
            out.write(f"{ts.isoformat(timespec='microseconds')} {env.namespace} {env.topic} "
                      f"{json.dumps(event, separators=(',', ':'))}\n")
        out.flush()
