"""containerd's filter syntax: parse List/Subscribe filters and match objects against them.

A filter string is one or more selectors joined by commas (all must match); the repeated
``filters`` of a request are alternatives (any may match); no filters, or an empty string,
match everything. A selector is

    fieldpath [ op value ]

- ``fieldpath``: components joined by ``.``; a component is ``[A-Za-z0-9_]+`` or a
  double-quoted string (``labels."io.example/role"``); label keys with dots may also be
  written bare (``labels.a.b``), which the adaptor joins back to ``a.b``.
- ``op``: ``==`` (present and equal), ``!=`` (not equal; an absent field reads as ``""``),
  ``~=`` (the value is a regular expression searched anywhere in the field's value, an
  absent field reading as ``""``). Without an operator the selector tests presence.
- ``value``: a run of printable characters up to ``,`` or whitespace, or a quoted string.
  Quotes are ``"..."``; after ``~=`` also ``/.../`` and ``|...|``. Quoted strings take Go
  escapes (``\\n``, ``\\"``, ``\\x41``, ``\\u00e9``, octal ``\\101``...), so a regexp's
  backslash is doubled inside quotes (``name~=/^docker\\\\.io\\//``). A value that starts
  with ``.`` or a quote character must be quoted (``name~=".*"``).
- Whitespace may precede a field path, an operator or a value, nothing else.

Matching goes through an *adaptor*: ``(fieldpath) -> (value, present)``, so the filter
knows nothing about the objects it selects; :func:`adaptor` builds one from plain
mappings and :func:`message_adaptor` one from a protobuf message (event envelopes).
A value starting with ``/`` is a quote, so topics are written ``topic=="/tasks/exit"``. Any problem with the text raises :class:`moorage.errdefs.InvalidArgument`
with containerd's message shape (``filters: parse error: [name >|=|< ...]: ...``); an
invalid regular expression is reported at parse time too (containerd matches nothing).
Regular expressions are Python's ``re``, close to Go's RE2 for the patterns used in practice.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from moorage.errdefs import InvalidArgument

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = [
    "ALWAYS",
    "Adaptor",
    "All",
    "AnyOf",
    "Filter",
    "Operator",
    "Selector",
    "adaptor",
    "message_adaptor",
    "parse",
    "parse_one",
]

Adaptor = Callable[[Sequence[str]], tuple[str, bool]]
"""Maps a field path to ``(value, present)`` for one object."""


class Filter(abc.ABC):
    """A parsed filter; immutable and safe to share."""

    @abc.abstractmethod
    def match(self, adaptor: Adaptor) -> bool:
        """Whether the object behind ``adaptor`` is selected."""


@dataclass(frozen=True)
class _Always(Filter):
    def match(self, adaptor: Adaptor) -> bool:
        return True


ALWAYS: Final[Filter] = _Always()
"""Matches everything: what no filters, or an empty filter string, parse to."""


@dataclass(frozen=True)
class AnyOf(Filter):
    """Matches when any alternative matches (the repeated filter strings)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True)
class All(Filter):
    """Matches when every part matches (comma-joined selectors)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(f.match(adaptor) for f in self.filters)


class Operator(enum.Enum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(frozen=True)
class Selector(Filter):
    """One ``fieldpath[op value]`` test."""

    fieldpath: tuple[str, ...]
    operator: Operator
    value: str = ""
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.fieldpath)
        if self.operator is Operator.PRESENT:
            return present
        if self.operator is Operator.EQUAL:
            return present and value == self.value
        if self.operator is Operator.NOT_EQUAL:
            return value != self.value
        assert self.pattern is not None
        return self.pattern.search(value) is not None


def parse(filters: Sequence[str] | str) -> Filter:
    """Parse a request's ``filters``: alternatives, any of which may match.

    An empty sequence matches everything. A bare string is taken as one filter.
    Raises :class:`InvalidArgument` naming the problem.
    """
    if isinstance(filters, str):
        return parse_one(filters)
    parsed = tuple(parse_one(f) for f in filters)
    if not parsed:
        return ALWAYS
    if len(parsed) == 1:
        return parsed[0]
    return AnyOf(parsed)


def parse_one(text: str) -> Filter:
    """Parse one filter string (comma-joined selectors); ``""`` matches everything."""
    if not isinstance(text, str):
        raise InvalidArgument(f"filters: expected a string, got {type(text).__name__}")
    if text == "":
        return ALWAYS
    parser = _Parser(text)
    for pos, ch in enumerate(text):
        if ch == "\0":
            raise parser.error(pos, "unexpected null")
        if _is_surrogate(ch):
            raise parser.error(pos, "rune error")
    return parser.filter()


FieldValue = str | Mapping[str, str]


def adaptor(
    fields: Mapping[str, FieldValue], labels: Mapping[str, str] | None = None
) -> Adaptor:
    """An adaptor over plain data: the common shape of containerd's own adaptors.

    ``fields`` maps top-level field names to a string (present iff the key is there) or
    to a string map such as ``annotations`` or ``target``; ``labels`` is a shorthand for
    ``fields["labels"]``. In a map, the rest of the path is joined with ``.`` and looked
    up as one key, so ``labels.a.b`` and ``labels."a.b"`` both name the label ``a.b``;
    a path that stops at a map, or goes below a string, is absent.
    """
    table: dict[str, FieldValue] = dict(fields)
    if labels is not None:
        table["labels"] = labels

    def lookup(fieldpath: Sequence[str]) -> tuple[str, bool]:
        if not fieldpath:
            return "", False
        found = table.get(fieldpath[0])
        if found is None:
            return "", False
        if isinstance(found, str):
            return (found, True) if len(fieldpath) == 1 else ("", False)
        if len(fieldpath) == 1:
            return "", False
        key = ".".join(fieldpath[1:])
        if key in found:
            return found[key], True
        return "", False

    return lookup


def message_adaptor(message: Message) -> Adaptor:
    """An adaptor over a protobuf message by proto field names, with the rules of
    containerd's generated event adaptors (``event.<field>`` in Events.Subscribe):

    - string fields: present when non-empty; bool fields: ``"true"``/``"false"``, present;
    - a map field named ``labels``: the rest of the path joined with ``.`` as the key;
    - a singular message field (not Timestamp): the rest of the path inside it, absent
      when unset; a ``google.protobuf.Any`` is unpacked when its type is registered (its
      ``_pb2`` module imported);
    - anything else (numbers, repeated fields, timestamps, other maps) is absent.
    """

    def lookup(fieldpath: Sequence[str]) -> tuple[str, bool]:
        return _message_field(message, fieldpath)

    return lookup


def _message_field(message: Message, fieldpath: Sequence[str]) -> tuple[str, bool]:
    from google.protobuf.descriptor import FieldDescriptor

    if not fieldpath:
        return "", False
    fd = message.DESCRIPTOR.fields_by_name.get(fieldpath[0])
    if fd is None:
        return "", False
    value = getattr(message, fd.name)
    kind = fd.message_type if fd.type == FieldDescriptor.TYPE_MESSAGE else None
    if kind is not None and kind.GetOptions().map_entry:
        if fd.name != "labels" or len(fieldpath) < 2 or not value:
            return "", False
        key = ".".join(fieldpath[1:])
        return (str(value[key]), True) if key in value else ("", False)
    if fd.is_repeated:
        return "", False
    if fd.type == FieldDescriptor.TYPE_STRING:
        return (value, True) if len(fieldpath) == 1 and value else ("", False)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return ("true" if value else "false", True) if len(fieldpath) == 1 else ("", False)
    if kind is None or not message.HasField(fd.name):
        return "", False
    if kind.full_name == "google.protobuf.Timestamp":
        return "", False
    if kind.full_name == "google.protobuf.Any":
        value = _unpack_any(value)
        if value is None:
            return "", False
    return _message_field(value, fieldpath[1:])


def _unpack_any(any_message: Message) -> Message | None:
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.message import DecodeError

    type_url: str = getattr(any_message, "type_url")
    name = type_url.rsplit("/", 1)[-1]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    decoded = message_factory.GetMessageClass(descriptor)()
    try:
        decoded.ParseFromString(getattr(any_message, "value"))
    except DecodeError:
        return None
    return decoded


# --- the scanner and parser -------------------------------------------------------------


class _Tok(enum.Enum):
    EOF = "EOF"
    QUOTED = "Quoted"
    VALUE = "Value"
    FIELD = "Field"
    SEPARATOR = "Separator"
    OPERATOR = "Operator"
    ILLEGAL = "Illegal"
    OTHER = "Other"


_QUOTES: Final = '"/|'
_OPERATOR_CHARS: Final = "=!~"
_SEPARATORS: Final = ",."
_OPERATORS: Final = {op.value: op for op in Operator if op is not Operator.PRESENT}
_SIMPLE_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_HEX_ESCAPES: Final = {"x": 2, "u": 4, "U": 8}
_OCTAL: Final = "01234567"
_HEX: Final = "0123456789abcdefABCDEF"


def _is_space(ch: str) -> bool:
    # Go's unicode.IsSpace; Python also counts the ASCII information separators
    return ch.isspace() and ch not in "\x1c\x1d\x1e\x1f"


def _is_field_char(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9")


def _is_value_char(ch: str) -> bool:
    return ch != "," and not _is_space(ch) and ch.isprintable()


def _is_surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udfff"


class _Parser:
    """Recursive descent over containerd's token rules; one instance per filter string."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.value_mode = False
        self.scan_error = ""

    # scanner

    def peek(self) -> str:
        """The next raw character ("" at the end), without skipping whitespace."""
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def scan(self) -> tuple[int, _Tok, str]:
        text = self.text
        while self.pos < len(text) and _is_space(text[self.pos]):
            self.pos += 1
        start = self.pos
        if start >= len(text):
            return start, _Tok.EOF, ""
        ch = text[start]
        if ch in _QUOTES:
            return self.scan_quoted(start, ch)
        if ch in _SEPARATORS:
            self.value_mode = False
            self.pos += 1
            return start, _Tok.SEPARATOR, ch
        if ch in _OPERATOR_CHARS:
            self.pos = self.run(start, lambda c: c in _OPERATOR_CHARS)
            self.value_mode = True
            return start, _Tok.OPERATOR, text[start : self.pos]
        if self.value_mode:
            self.pos = self.run(start, _is_value_char)
            self.value_mode = False
            if self.pos > start:
                return start, _Tok.VALUE, text[start : self.pos]
            return start, _Tok.OTHER, ch
        if _is_field_char(ch):
            self.pos = self.run(start, _is_field_char)
            return start, _Tok.FIELD, text[start : self.pos]
        return start, _Tok.OTHER, ch

    def run(self, start: int, accept: Callable[[str], bool]) -> int:
        end = start
        while end < len(self.text) and accept(self.text[end]):
            end += 1
        return end

    def illegal(self, pos: int, message: str) -> tuple[int, _Tok, str]:
        self.scan_error = message
        self.pos = len(self.text)
        return pos, _Tok.ILLEGAL, ""

    def scan_quoted(self, start: int, quote: str) -> tuple[int, _Tok, str]:
        text = self.text
        i = start + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                return self.illegal(start, "quoted literal not terminated")
            ch = text[i]
            if ch == quote:
                break
            if ch == "\\":
                nxt = text[i + 1] if i + 1 < len(text) else ""
                if nxt in _SIMPLE_ESCAPES or (nxt and nxt == quote):
                    i += 2
                elif nxt and nxt in _OCTAL:
                    digits = text[i + 1 : i + 4]
                    if len(digits) < 3 or any(d not in _OCTAL for d in digits):
                        return self.illegal(start, "illegal numeric escape sequence")
                    i += 4
                elif nxt and nxt in _HEX_ESCAPES:
                    n = _HEX_ESCAPES[nxt]
                    digits = text[i + 2 : i + 2 + n]
                    if len(digits) < n or any(d not in _HEX for d in digits):
                        return self.illegal(start, "illegal numeric escape sequence")
                    i += 2 + n
                else:
                    return self.illegal(start, "illegal escape sequence")
            else:
                i += 1
        self.pos = i + 1
        return start, _Tok.QUOTED, text[start : self.pos]

    # parser

    def error(self, pos: int, message: str) -> InvalidArgument:
        text = self.text
        if pos < len(text):
            where = f"{text[:pos]} >|{text[pos]}|< {text[pos + 1:]}"
        else:
            where = text
        return InvalidArgument(f"filters: parse error: [{where}]: {message}")

    def filter(self) -> Filter:
        selectors = [self.selector()]
        while True:
            ch = self.peek()
            if ch == ",":
                self.scan()
                selectors.append(self.selector())
            elif ch == "":
                break
            else:
                raise self.error(self.pos, f"unexpected input: {ch}")
        return All(tuple(selectors))

    def selector(self) -> Selector:
        fieldpath = self.fieldpath()
        if self.peek() in (",", ""):
            return Selector(fieldpath, Operator.PRESENT)
        op_pos, op = self.operator()
        value = self.value(allow_alt_quotes=op is Operator.MATCHES)
        if op is not Operator.MATCHES:
            return Selector(fieldpath, op, value)
        try:
            pattern = re.compile(value)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise self.error(op_pos, f"invalid regular expression {value!r}: {exc}") from None
        return Selector(fieldpath, op, value, pattern)

    def fieldpath(self) -> tuple[str, ...]:
        components = [self.field()]
        while self.peek() == ".":
            self.scan()
            components.append(self.field())
        return tuple(components)

    def field(self) -> str:
        pos, tok, text = self.scan()
        if tok is _Tok.FIELD:
            return text
        if tok is _Tok.QUOTED:
            return self.unquote(pos, text, allow_alt_quotes=False)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scan_error)
        raise self.error(pos, "expected field or quoted")

    def operator(self) -> tuple[int, Operator]:
        pos, tok, text = self.scan()
        if tok is _Tok.OPERATOR:
            op = _OPERATORS.get(text)
            if op is None:
                raise self.error(pos, f"unsupported operator {text!r}")
            return pos, op
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scan_error)
        raise self.error(pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, *, allow_alt_quotes: bool) -> str:
        pos, tok, text = self.scan()
        if tok in (_Tok.VALUE, _Tok.FIELD):
            return text
        if tok is _Tok.QUOTED:
            return self.unquote(pos, text, allow_alt_quotes=allow_alt_quotes)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scan_error)
        raise self.error(pos, "expected value or quoted")

    def unquote(self, pos: int, quoted: str, *, allow_alt_quotes: bool) -> str:
        if not allow_alt_quotes and quoted[0] != '"':
            raise self.error(pos, "invalid quote encountered")
        try:
            return _unquote(quoted)
        except ValueError as exc:
            raise self.error(pos, f"unquoting failed: {exc}") from None


def _unquote(quoted: str) -> str:
    """Decode a scanned quoted literal (quotes included, escapes already validated)."""
    body = quoted[1:-1]
    if "\\" not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        kind = body[i + 1]
        if kind in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[kind].encode()
            i += 2
        elif kind in _OCTAL:
            code = int(body[i + 1 : i + 4], 8)
            if code > 0xFF:
                raise ValueError("quote syntax error: octal escape above \\377")
            out.append(code)
            i += 4
        elif kind in _HEX_ESCAPES:
            n = _HEX_ESCAPES[kind]
            code = int(body[i + 2 : i + 2 + n], 16)
            if kind == "x":
                out.append(code)
            elif code > 0x10FFFF:
                raise ValueError("quote syntax error: escape beyond U+10FFFF")
            else:
                if 0xD800 <= code <= 0xDFFF:
                    code = 0xFFFD  # as Go encodes a surrogate rune
                out += chr(code).encode()
            i += 2 + n
        else:  # the escaped quote character itself
            out += kind.encode()
            i += 2
    return out.decode("utf-8", "surrogateescape")
