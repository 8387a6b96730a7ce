"""Protocol buffers' wire format for the CLI's hot paths, without the protobuf runtime.

Importing google.protobuf costs every process that does it about 40 ms (the upb module,
the descriptor pool, text_format...). `moor run` exchanges a dozen small messages, so it
writes them here by field number (the numbers of containerd's .proto files, named where
each message is built) and reads replies as :class:`Fields`. Both have the two methods
ttrpc's blocking client uses of a generated message (``SerializeToString``,
``FromString``), so they go through ``Client.unary`` and ``server_stream`` unchanged.

Encoding follows proto3: scalar fields equal to their default (0, False, "", b"") are
left out; a nested message (:class:`Msg` or :class:`Fields`) is always written; a list
is a repeated field, every element written ("" and 0 too); a dict is a
``map<string, string>``. An int outside [-2**63, 2**64) is a ValueError, as protobuf
raises for any integer field: the caller checks the narrower range of its field (a uint32
signal, an int64 size) where it takes the value from the user. Reading, a truncated field,
a field number outside [1, 2**29) or a group is a ValueError, as it is a DecodeError for
protobuf.
"""

from __future__ import annotations

from moorage.protowire import read_varint, varint

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing and collections.abc cost every `moor` command ~20 ms)
    from collections.abc import Mapping
    from typing import TypeAlias

    Value: TypeAlias = (int | str | bytes | "Msg" | "Fields" | list[str] | list["Msg"] | list["Fields"]
                        | list["Value"] | Mapping[str, str])


def _field(out: bytearray, number: int, value: Value, always: bool = False) -> None:
    if isinstance(value, int):  # bool too
        if not -(1 << 63) <= value < 1 << 64:
            raise ValueError(f"field {number}: {value} is out of range for a varint")
        if value or always:
            out += varint(number << 3)
            out += varint(int(value))
    elif isinstance(value, (str, bytes)):
        data = value.encode() if isinstance(value, str) else value
        if data or always:
            out += varint(number << 3 | 2)
            out += varint(len(data))
            out += data
    elif isinstance(value, (Msg, Fields)):
        data = value.SerializeToString()
        out += varint(number << 3 | 2)
        out += varint(len(data))
        out += data
    elif isinstance(value, list):
        for item in value:
            _field(out, number, item, always=True)
    else:
        for k, v in value.items():
            _field(out, number, Msg({1: k, 2: v}))


class Msg:
    """A message to send: ``Msg({1: "id", 3: [Msg(...)], 4: {"k": "v"}})``."""

    __slots__ = ("_data",)

    def __init__(self, fields: Mapping[int, Value]) -> None:
        out = bytearray()
        for number, value in fields.items():
            _field(out, number, value)
        self._data = bytes(out)

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf method name
        return self._data


class Fields:
    """A received message: its fields by number (varints as int, the rest as bytes)."""

    __slots__ = ("raw", "_fields")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._fields: dict[int, list[int | bytes]] = {}
        i, n = 0, len(raw)
        while i < n:
            key, i = read_varint(raw, i)
            number, wire_type = key >> 3, key & 7
            if not 0 < number < 1 << 29:
                raise ValueError(f"field number {number} out of range")
            value: int | bytes
            if wire_type == 0:
                value, i = read_varint(raw, i)
            else:
                if wire_type == 2:
                    size, i = read_varint(raw, i)
                elif wire_type == 1 or wire_type == 5:
                    size = 8 if wire_type == 1 else 4
                else:
                    raise ValueError(f"unsupported wire type {wire_type}")
                if i + size > n:
                    raise ValueError(f"truncated field {number}")
                value, i = raw[i:i + size], i + size
            self._fields.setdefault(number, []).append(value)

    @classmethod
    def FromString(cls, data: bytes) -> Fields:  # noqa: N802 - the protobuf method name
        return cls(data)

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf method name
        return self.raw

    def has(self, number: int) -> bool:
        """Whether field ``number`` is on the wire (a nested message's presence)."""
        return number in self._fields

    def uint(self, number: int) -> int:
        v = self._fields.get(number)
        return v[-1] if v and isinstance(v[-1], int) else 0

    def int64(self, number: int) -> int:
        """An ``int64`` (or ``int32``) field: the varint as two's complement."""
        v = self.uint(number)
        return v - (1 << 64) if v >> 63 else v

    def blob(self, number: int) -> bytes:
        v = self._fields.get(number)
        return v[-1] if v and isinstance(v[-1], bytes) else b""

    def text(self, number: int) -> str:
        return self.blob(number).decode()

    def texts(self, number: int) -> list[str]:
        return [v.decode() for v in self._fields.get(number, ()) if isinstance(v, bytes)]

    def msg(self, number: int) -> Fields:
        return Fields(self.blob(number))

    def msgs(self, number: int) -> list[Fields]:
        return [Fields(v) for v in self._fields.get(number, ()) if isinstance(v, bytes)]

    def pairs(self, number: int) -> dict[str, str]:
        """A ``map<string, string>`` field, in the order of the wire."""
        return {e.text(1): e.text(2) for e in self.msgs(number)}


def any_of(type_url: str, fields: Mapping[int, Value]) -> Msg:
    """A ``google.protobuf.Any`` {type_url=1, value=2} holding the message ``fields``."""
    return Msg({1: type_url, 2: Msg(fields).SerializeToString()})


def rfc3339(ts: Fields) -> str:
    """A ``google.protobuf.Timestamp`` {seconds=1, nanos=2} as protobuf's ``ToJsonString``
    writes it: UTC with ``Z``, and 0, 3, 6 or 9 fraction digits, as few as are exact; a
    ValueError, as there, for seconds outside years 1-9999 or nanos outside [0, 1e9)."""
    from datetime import datetime, timedelta

    seconds, nanos = ts.int64(1), ts.uint(2) & 0xFFFFFFFF  # nanos: an int32
    nanos -= (nanos >> 31) << 32
    if not -62135596800 <= seconds <= 253402300799:
        raise ValueError(f"Timestamp is not valid: Seconds {seconds} must be in range [-62135596800, 253402300799].")
    if not 0 <= nanos < 1_000_000_000:
        raise ValueError(f"Timestamp is not valid: Nanos {nanos} must be in a range [0, 999999999].")
    text = (datetime(1970, 1, 1) + timedelta(seconds // 86400, seconds % 86400)).isoformat()
    if nanos % 1_000_000_000 == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return text + ".%03dZ" % (nanos // 1_000_000)
    if nanos % 1000 == 0:
        return text + ".%06dZ" % (nanos // 1000)
    return text + ".%09dZ" % nanos
