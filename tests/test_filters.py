"""moorage.filters: containerd's filter syntax, its matching rules and its errors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage import filters
from moorage.errdefs import InvalidArgument
from moorage.filters import Operator, Selector

IMAGE = filters.adaptor(
    {
        "name": "docker.io/library/busybox:latest",
        "target": {"digest": "sha256:abc", "mediatype": "application/vnd.oci.image.index.v1+json"},
        "empty": "",
    },
    labels={"a.b/c": "x", "env": "prod", "blank": "", "é": "accent"},
)


def matches(*filter_strings: str, adaptor: filters.Adaptor = IMAGE) -> bool:
    return filters.parse(list(filter_strings)).match(adaptor)


def selectors(text: str) -> tuple[Selector, ...]:
    parsed = filters.parse_one(text)
    assert isinstance(parsed, filters.All)
    assert all(isinstance(s, Selector) for s in parsed.filters)
    return parsed.filters  # type: ignore[return-value]


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fieldpath", "operator", "value"),
    [
        ("name", ("name",), Operator.PRESENT, ""),
        ("name==foo", ("name",), Operator.EQUAL, "foo"),
        ("name!=foo", ("name",), Operator.NOT_EQUAL, "foo"),
        ("name~=fo+", ("name",), Operator.MATCHES, "fo+"),
        ("labels.env", ("labels", "env"), Operator.PRESENT, ""),
        ('labels."a.b/c"==x', ("labels", "a.b/c"), Operator.EQUAL, "x"),
        ('"quoted field"==v', ("quoted field",), Operator.EQUAL, "v"),
        ("labels.a.b.c==v", ("labels", "a", "b", "c"), Operator.EQUAL, "v"),
        ("target.digest==sha256:abc", ("target", "digest"), Operator.EQUAL, "sha256:abc"),
        ("name==docker.io/library/busybox:latest", ("name",), Operator.EQUAL,
         "docker.io/library/busybox:latest"),
        ("a_1.B2==x=y!z~", ("a_1", "B2"), Operator.EQUAL, "x=y!z~"),
        ("name==a\"b", ("name",), Operator.EQUAL, 'a"b'),
        ('name=="with space, and comma"', ("name",), Operator.EQUAL, "with space, and comma"),
        ('name=="esc\\"aped\\n\\t\\\\"', ("name",), Operator.EQUAL, 'esc"aped\n\t\\'),
        ('name=="\\x41\\101\\u00e9\\U0001F600"', ("name",), Operator.EQUAL, "AAé\U0001f600"),
        ("name~=/a,b c/", ("name",), Operator.MATCHES, "a,b c"),
        ("name~=|a/b|", ("name",), Operator.MATCHES, "a/b"),
        ("name~=/a\\/b/", ("name",), Operator.MATCHES, "a/b"),
        ('name~="^x$"', ("name",), Operator.MATCHES, "^x$"),
        ("  name  ==  foo", ("name",), Operator.EQUAL, "foo"),
        ("name==é", ("name",), Operator.EQUAL, "é"),
        ("123==4", ("123",), Operator.EQUAL, "4"),
    ],
)
def test_selector_parses(text: str, fieldpath: tuple[str, ...], operator: Operator, value: str) -> None:
    (sel,) = selectors(text)
    assert (sel.fieldpath, sel.operator, sel.value) == (fieldpath, operator, value)


def test_commas_join_selectors() -> None:
    parsed = selectors("name==foo,labels.env, labels.x!=y")
    assert [s.fieldpath for s in parsed] == [("name",), ("labels", "env"), ("labels", "x")]
    assert [s.operator for s in parsed] == [Operator.EQUAL, Operator.PRESENT, Operator.NOT_EQUAL]


def test_empty_inputs_match_everything() -> None:
    assert filters.parse([]) is filters.ALWAYS
    assert filters.parse([""]) is filters.ALWAYS
    assert filters.parse_one("") is filters.ALWAYS
    assert matches(adaptor=lambda path: ("", False))


def test_a_bare_string_is_one_filter() -> None:
    assert filters.parse("name==foo") == filters.parse(["name==foo"])


def test_repeated_filters_are_alternatives() -> None:
    parsed = filters.parse(["name==a", "name==b"])
    assert isinstance(parsed, filters.AnyOf) and len(parsed.filters) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name=foo", "unsupported operator '='"),
        ("name===foo", "unsupported operator '==='"),
        ("name==", "expected value or quoted"),
        ("name== ,x", "expected value or quoted"),
        ("name.", "expected field or quoted"),
        ("name..x", "expected field or quoted"),
        (".name", "expected field or quoted"),
        ("==foo", "expected field or quoted"),
        (",name", "expected field or quoted"),
        ("name,", "expected field or quoted"),
        ("name,,x", "expected field or quoted"),
        ("name foo", 'expected an operator ("=="|"!="|"~=")'),
        ("name==foo ", "unexpected input"),
        ("name==foo bar", "unexpected input"),
        ('name=="foo"bar', "unexpected input"),
        ("labels.é", "expected field or quoted"),
        ('name=="open', "quoted literal not terminated"),
        ('name=="new\nline"', "quoted literal not terminated"),
        ('name=="\\q"', "illegal escape sequence"),
        ('name=="\\x4"', "illegal numeric escape sequence"),
        ('name=="\\8"', "illegal escape sequence"),
        ('name=="\\18"', "illegal numeric escape sequence"),
        ('name=="\\400"', "unquoting failed"),
        ('name=="\\U00110000"', "unquoting failed"),
        ("name==/x/", "invalid quote encountered"),
        ("name!=|x|", "invalid quote encountered"),
        ("labels./x/", "invalid quote encountered"),
        ("name~=(", "invalid regular expression"),
        ("name~=.*", "expected value or quoted"),  # a leading "." is a separator
        ('name~=/\\./', "illegal escape sequence"),
        ("name~=a{99999999999999999999}", "invalid regular expression"),
        ("na\0me", "unexpected null"),
        ("name==\ud800", "rune error"),
    ],
)
def test_parse_errors_are_invalid_argument(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        filters.parse([text])
    assert message in str(info.value)
    assert str(info.value).startswith("filters: parse error: [")


def test_error_points_at_the_offending_character() -> None:
    with pytest.raises(InvalidArgument) as info:
        filters.parse(["name=foo"])
    assert str(info.value) == "filters: parse error: [name >|=|< foo]: unsupported operator '='"
    with pytest.raises(InvalidArgument) as info:
        filters.parse(["name."])
    assert str(info.value) == "filters: parse error: [name.]: expected field or quoted"


def test_any_bad_alternative_fails_the_whole_list() -> None:
    with pytest.raises(InvalidArgument):
        filters.parse(["name==a", "name=b"])


def test_non_string_filter_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        filters.parse([b"name"])  # type: ignore[list-item]


# --- matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name", True),
        ("nope", False),
        ("empty", True),  # present, even though empty
        ("name==docker.io/library/busybox:latest", True),
        ("name==other", False),
        ('nope==""', False),  # equality needs presence
        ("name!=other", True),
        ("name!=docker.io/library/busybox:latest", False),
        ("nope!=x", True),  # absent reads as ""
        ('empty!=""', False),
        ('nope!=""', False),
        ("name~=busybox", True),  # searched, not anchored
        ("name~=^busybox", False),
        ("name~=^docker\\.io/", True),
        ("name~=/^docker\\\\.io\\/library/", True),  # inside quotes a backslash is escaped
        ('nope~=".*"', True),  # absent reads as ""
        ('nope~=".+"', False),
        ("labels.env==prod", True),
        ("labels.env==dev", False),
        ("labels.env", True),
        ("labels.blank", True),
        ('labels.blank==""', True),
        ("labels.missing", False),
        ("labels", False),  # a path that stops at a map is absent
        ('labels."a.b/c"==x', True),
        ('labels."a.b/c"', True),
        ("labels.a.b", False),
        ('labels."é"==accent', True),
        ("target.digest==sha256:abc", True),
        ("target.mediatype~=index", True),
        ("name.sub", False),  # below a string is absent
        ("name==docker.io/library/busybox:latest,labels.env==prod", True),
        ("name==docker.io/library/busybox:latest,labels.env==dev", False),
        ("labels.env,labels.blank,labels.\"a.b/c\"", True),
    ],
)
def test_match(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_alternatives_or() -> None:
    assert matches("name==other", "labels.env==prod")
    assert not matches("name==other", "labels.env==dev")


def test_dotted_label_keys_may_be_written_bare() -> None:
    adaptor = filters.adaptor({}, labels={"io.example.role": "db"})
    assert matches("labels.io.example.role==db", adaptor=adaptor)
    assert matches('labels."io.example.role"==db', adaptor=adaptor)


def test_adaptor_sees_the_exact_fieldpath() -> None:
    seen: list[Sequence[str]] = []

    def record(path: Sequence[str]) -> tuple[str, bool]:
        seen.append(tuple(path))
        return "v", True

    assert matches('a."b.c".d==v', adaptor=record)
    assert seen == [("a", "b.c", "d")]


def test_all_stops_at_first_failure_and_any_at_first_success() -> None:
    calls: list[str] = []

    def record(path: Sequence[str]) -> tuple[str, bool]:
        calls.append(path[0])
        return "", path[0] == "yes"

    assert not matches("no,yes", adaptor=record)
    assert calls == ["no"]
    calls.clear()
    assert matches("yes", "no", adaptor=record)
    assert calls == ["yes"]


def test_empty_adaptor_lookups() -> None:
    adaptor = filters.adaptor({})
    assert adaptor([]) == ("", False)
    assert adaptor(["labels", "x"]) == ("", False)
    assert filters.adaptor({"labels": {}})(["labels", "x"]) == ("", False)


def test_filters_are_values() -> None:
    assert filters.parse(["name==a,labels.b"]) == filters.parse(["name==a,labels.b"])
    assert filters.parse(["name~=a"]) == filters.parse(["name~=a"])
    hash(filters.parse(["name==a", "labels.x"]))


# --- properties ------------------------------------------------------------------------

_ALPHABET = st.sampled_from(list('ab_1.,="!~/|\\ \t\nxé\0'))
_TOKENS = st.sampled_from(
    [
        "name", "labels", ".", ",", "==", "!=", "~=", "=", "!", "~", '"', '"a.b"', "/x/",
        "|y|", "\\", "\\x4", "\\u00e9", " ", "(", "[", "*", "é", "\n", "value", "'",
    ]
)
_FILTER_TEXT = st.one_of(
    st.text(),
    st.text(alphabet=_ALPHABET, max_size=30),
    st.lists(_TOKENS, max_size=12).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_FILTER_TEXT, max_size=3))
def test_parse_raises_only_invalid_argument(texts: list[str]) -> None:
    try:
        parsed = filters.parse(texts)
    except InvalidArgument as exc:
        assert str(exc).startswith("filters:")
        return
    # whatever parses also matches without raising
    parsed.match(IMAGE)
    parsed.match(lambda path: ("", False))


_FIELD = st.text(alphabet="abcxyz_019", min_size=1, max_size=6)
_VALUE = st.text(min_size=0, max_size=12).filter(lambda s: "\0" not in s and not any(
    "\ud800" <= c <= "\udfff" for c in s))


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@settings(max_examples=300, deadline=None)
@given(st.lists(_FIELD | _VALUE, min_size=1, max_size=3), _VALUE, _VALUE)
def test_quoted_round_trip(path: list[str], value: str, other: str) -> None:
    text = ".".join(_quote(p) for p in path) + "==" + _quote(value)
    (sel,) = selectors(text)
    assert sel.fieldpath == tuple(path) and sel.value == value

    def lookup(fieldpath: Sequence[str]) -> tuple[str, bool]:
        return (other, True) if tuple(fieldpath) == tuple(path) else ("", False)

    assert filters.parse([text]).match(lookup) is (other == value)


# --- protobuf messages (events) ---------------------------------------------------------


def _envelope() -> filters.Adaptor:
    from google.protobuf import any_pb2

    from moorage.api.containerd.events import container_pb2, task_pb2
    from moorage.api.containerd.types import event_pb2

    create = task_pb2.TaskCreate(
        container_id="c1", bundle="", pid=7, io=task_pb2.TaskIO(stdout="/tmp/out", terminal=True)
    )
    event = any_pb2.Any(type_url="containerd.events.TaskCreate", value=create.SerializeToString())
    env = event_pb2.Envelope(namespace="default", topic="/tasks/create", event=event)
    env.timestamp.FromSeconds(5)
    assert container_pb2  # imported for its registration only
    return filters.message_adaptor(env)


@pytest.mark.parametrize(
    ("fieldpath", "expected"),
    [
        (["namespace"], ("default", True)),
        (["topic"], ("/tasks/create", True)),
        (["timestamp"], ("", False)),
        (["event", "container_id"], ("c1", True)),
        (["event", "bundle"], ("", False)),  # empty strings are absent
        (["event", "pid"], ("", False)),  # numbers are not filterable
        (["event", "io", "stdout"], ("/tmp/out", True)),
        (["event", "io", "terminal"], ("true", True)),
        (["event", "io", "stdin"], ("", False)),
        (["event", "rootfs"], ("", False)),
        (["event", "nope"], ("", False)),
        (["event"], ("", False)),
        (["topic", "x"], ("", False)),
        ([], ("", False)),
    ],
)
def test_message_adaptor(fieldpath: list[str], expected: tuple[str, bool]) -> None:
    assert _envelope()(fieldpath) == expected


def test_message_adaptor_labels_and_unknown_any() -> None:
    from google.protobuf import any_pb2

    from moorage.api.containerd.events import container_pb2
    from moorage.api.containerd.types import event_pb2

    update = container_pb2.ContainerUpdate(id="c", labels={"a.b": "x", "e": ""})
    adaptor = filters.message_adaptor(update)
    assert adaptor(["labels", "a", "b"]) == ("x", True)
    assert adaptor(["labels", "e"]) == ("", True)
    assert adaptor(["labels"]) == ("", False)
    assert adaptor(["labels", "zz"]) == ("", False)
    assert not filters.parse(['labels."a.b"!=x']).match(adaptor)

    unknown = event_pb2.Envelope(event=any_pb2.Any(type_url="example.Unknown", value=b"\x08\x01"))
    assert filters.message_adaptor(unknown)(["event", "x"]) == ("", False)
    garbage = event_pb2.Envelope(
        event=any_pb2.Any(type_url="containerd.events.TaskStart", value=b"\xff\xff")
    )
    assert filters.message_adaptor(garbage)(["event", "container_id"]) == ("", False)


def test_subscribe_style_filters() -> None:
    env = _envelope()
    assert matches('topic~="^/tasks/"', adaptor=env)
    assert matches("namespace==default,event.container_id==c1", adaptor=env)
    assert not matches("namespace==other", 'topic=="/tasks/exit"', adaptor=env)
    assert matches('topic=="/tasks/exit"', "event.io.terminal==true", adaptor=env)
