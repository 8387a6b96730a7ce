"""moorage/frozen.py's ``dataclass(frozen=True)`` builds what dataclasses builds for
oci.py's types and the sandbox's pod options (podconfig.py), and oci.validate_digest (no re) accepts exactly what its regular expressions did."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage import errdefs, frozen
from moorage.services.sandbox import podconfig
from moorage.services.transfer import oci


def twins(body: dict[str, Any], annotations: dict[str, str]) -> tuple[type, type]:
    """The same class body through dataclasses and through frozen.py."""
    made = []
    for deco, fld in ((dataclasses.dataclass(frozen=True), dataclasses.field),
                      (frozen.dataclass(frozen=True), frozen.field)):
        ns = {k: (fld(default_factory=v.default_factory) if isinstance(v, dataclasses.Field) else v)
              for k, v in body.items()}
        made.append(deco(type("Rec", (), {"__annotations__": dict(annotations), "__module__": __name__, **ns})))
    return made[0], made[1]


def test_records_behave_as_frozen_dataclasses() -> None:
    real, light = twins({"c": "", "d": dataclasses.field(default_factory=dict), "__str__": lambda self: "s"},
                        {"a": "str", "b": "int", "c": "str", "d": "Mapping[str, str]"})
    assert str(inspect.signature(real)) == str(inspect.signature(light))
    for cls in (real, light):
        r = cls("x", 1)
        assert repr(r) == "Rec(a='x', b=1, c='', d={})" and str(r) == "s"
        assert r == cls("x", 1) and r != cls("x", 2) and r != ("x", 1, "", {}) and r.d is not cls("x", 1).d
        assert cls(a="x", b=1, c="y", d={"k": "v"}).d == {"k": "v"} and cls.c == "" and not hasattr(cls, "d")
        assert hash(cls("x", 1, "", ())) == hash(("x", 1, "", ()))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            hash(r)
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'a'"):
            r.a = "y"
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'a'"):
            del r.a
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.other = 1
        with pytest.raises(TypeError):
            cls("x")
        assert copy.deepcopy(r) == r and copy.copy(r) == r
        assert cls.__match_args__ == ("a", "b", "c", "d")
        match r:
            case cls(a, b):  # type: ignore[misc]
                assert (a, b) == ("x", 1)


def test_light_types_match_their_dataclass_twins() -> None:
    for cls in (oci.Platform, oci.Descriptor, oci.Manifest, oci.Index, oci.ImageConfig,
                podconfig.PortMapping, podconfig.DNSConfig, podconfig.PodConfig):
        ann = dict(cls.__annotations__)
        body = {n: getattr(cls, n) for n in ann if n in cls.__dict__}
        sig = inspect.signature(cls)
        for n, p in sig.parameters.items():
            if p.default is not inspect.Parameter.empty and n not in body:
                body[n] = dataclasses.field(default_factory=dict)
        real, _ = twins(body, ann)
        assert str(inspect.signature(real)) == str(sig)
    p = oci.Platform("linux", "arm", "v7")
    d = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "0" * 64, 1, {"k": "v"}, p, ("u",))
    assert repr(d) == ("Descriptor(media_type='application/vnd.oci.image.manifest.v1+json', digest='sha256:"
                       + "0" * 64 + "', size=1, annotations={'k': 'v'}, platform=Platform(os='linux', "
                       "architecture='arm', variant='v7', os_version=''), urls=('u',))")
    assert str(p) == "linux/arm/v7" and hash(p) == hash(("linux", "arm", "v7", ""))
    assert pickle.loads(pickle.dumps(d)) == d and copy.deepcopy(d) == d
    assert oci.Index(oci.OCI_INDEX, (d,)) == oci.Index(oci.OCI_INDEX, (d,), {})


def test_pod_config_writes_and_reads_its_json_as_json_does() -> None:
    ports = (podconfig.PortMapping.parse("[::1]:8080:80/UDP"), podconfig.PortMapping(1, 2))
    pod = podconfig.PodConfig("web", podconfig.DNSConfig(("1.1.1.1",), ("x.local",), ("ndots:2",)), ports, True,
                              (("K8S_POD_NAME", "p"),))
    doc = {"hostname": "web", "host_network": True, "cni_args": [["K8S_POD_NAME", "p"]],
           "port_mappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "::1"},
                             {"hostPort": 1, "containerPort": 2, "protocol": "tcp", "hostIP": ""}],
           "dns": {"servers": ["1.1.1.1"], "searches": ["x.local"], "options": ["ndots:2"]}}
    assert pod.to_json() == json.dumps(doc, sort_keys=True).encode()
    assert podconfig.PodConfig.from_json(pod.to_json()) == pod and podconfig.PodConfig.from_json(b"") == podconfig.PodConfig()
    assert repr(ports[1]) == "PortMapping(host_port=1, container_port=2, protocol='tcp', host_ip='')"
    for bad in ("1.2.3.999:80:80", "80", "0:80", "80:80/icmp"):
        with pytest.raises(ValueError):
            podconfig.PortMapping.parse(bad)
    with pytest.raises(ValueError):
        podconfig.PodConfig.from_json("[]")


def test_host_platform_is_platform_machines() -> None:
    import platform

    assert oci.host_platform() == oci.normalize(oci.Platform("linux", platform.machine()))


DIGEST_RE = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}


def by_regex(d: str) -> bool:
    alg, sep, hexpart = d.partition(":")
    pat = DIGEST_RE.get(alg)
    return bool(sep) and pat is not None and pat.fullmatch(hexpart) is not None


HEXISH = st.text(alphabet="0123456789abcdefABCDEFg\n :٣", min_size=62, max_size=130)


@given(st.sampled_from(["sha256", "sha512", "md5", "", "SHA256"]), st.sampled_from([":", "", "::"]),
       HEXISH | st.text(max_size=140))
def test_validate_digest_accepts_what_the_regex_accepted(alg: str, sep: str, hexpart: str) -> None:
    d = alg + sep + hexpart
    try:
        ok = oci.validate_digest(d) == d
    except errdefs.InvalidArgument:
        ok = False
    assert ok == by_regex(d)


@pytest.mark.parametrize("d", ["sha256:" + "a" * 64, "sha512:" + "0" * 128, "sha256:" + "a" * 63 + "\n",
                               "sha256:" + "A" * 64, "sha256:" + "a" * 65, "sha512:" + "a" * 64, "sha256:"])
def test_validate_digest_examples(d: str) -> None:
    try:
        ok = oci.validate_digest(d) == d
    except errdefs.InvalidArgument:
        ok = False
    assert ok == by_regex(d)



DECORATORS = [(dataclasses.dataclass(frozen=True), dataclasses.field), (frozen.dataclass(frozen=True), frozen.field)]


def outcome(make: Callable[[Any, Any], Any]) -> list[str]:
    """What a class body decorated by dataclasses and by frozen.py gives (or raises)."""
    out = []
    for deco, fld in DECORATORS:
        try:
            out.append(repr(make(deco, fld)))
        except (TypeError, ValueError) as exc:
            out.append(f"{type(exc).__name__}: {exc}")
    return out


@pytest.mark.parametrize("default", [[], {}, set(), bytearray(), (), frozenset(), "", 0, None, b""])
def test_an_unhashable_default_is_a_value_error_as_in_dataclasses(default: Any) -> None:
    def make(deco: Any, fld: Any) -> Any:
        return deco(type("Rec", (), {"__annotations__": {"x": "Any"}, "x": default}))()

    real, light = outcome(make)
    assert real == light
    assert real.startswith("ValueError: mutable default") == (type(default).__hash__ is None)


@pytest.mark.parametrize("annotation", ["ClassVar[int]", "typing.ClassVar[int]", "ClassVar", "InitVar[int]",
                                        "dataclasses.InitVar[str]", " KW_ONLY", ClassVar[int], ClassVar,
                                        InitVar[int], KW_ONLY])
def test_classvar_initvar_and_kw_only_are_refused(annotation: Any) -> None:
    with pytest.raises(TypeError, match=r"^Rec\.k: frozen.dataclass takes no ClassVar, InitVar or KW_ONLY"):
        frozen.dataclass(frozen=True)(type("Rec", (), {"__annotations__": {"x": "int", "k": annotation}, "k": 3}))


@pytest.mark.parametrize("annotation", ["ClassVars[int]", "tuple[ClassVar, ...]", "Mapping[str, InitVar]", "MyKW_ONLY"])
def test_other_annotations_are_fields(annotation: str) -> None:
    cls = frozen.dataclass(frozen=True)(type("Rec", (), {"__annotations__": {"x": annotation}}))
    assert cls.__match_args__ == ("x",)


def test_a_base_with_annotations_is_refused_one_without_is_kept() -> None:
    @frozen.dataclass(frozen=True)
    class Base:
        x: int

    with pytest.raises(TypeError, match="does not inherit fields"):
        @frozen.dataclass(frozen=True)
        class Sub(Base):  # dataclasses: Sub(x, y)
            y: int = 0

    class Plain:  # no annotations: methods only
        def twice(self) -> int:
            return 2 * self.y  # type: ignore[attr-defined, no-any-return]

    @frozen.dataclass(frozen=True)
    class Rec(Plain):
        y: int = 0

    assert Rec(4).twice() == 8 and Rec.__match_args__ == ("y",)


def test_hash_and_match_args_set_in_the_body_are_kept_as_in_dataclasses() -> None:
    def hash_none(deco: Any, fld: Any) -> Any:
        @deco
        class A:
            x: int
            __hash__ = None  # type: ignore[assignment]
        return A.__hash__, A(1) == A(1)

    def own_eq(deco: Any, fld: Any) -> Any:  # Python's own __hash__ = None for a class with __eq__
        @deco
        class A:
            x: int

            def __eq__(self, other: object) -> bool:
                return True
        return hash(A(1)) == hash((1,)), A(1) == A(2)

    def own_hash(deco: Any, fld: Any) -> Any:
        @deco
        class A:
            x: int

            def __hash__(self) -> int:
                return 7
        return hash(A(1))

    def match_args(deco: Any, fld: Any) -> Any:
        @deco
        class A:
            x: int
            y: int = 0
            __match_args__ = ("y",)
        return A.__match_args__

    for make in (hash_none, own_eq, own_hash, match_args):
        real, light = outcome(make)
        assert real == light, make.__name__
    assert outcome(hash_none)[0] == "(None, True)" and outcome(match_args)[0] == "('y',)"


def test_what_dataclasses_refuses_frozen_refuses() -> None:
    def own_setattr(deco: Any, fld: Any) -> Any:
        return deco(type("A", (), {"__annotations__": {"x": "int"}, "__setattr__": lambda s, n, v: None}))

    def own_delattr(deco: Any, fld: Any) -> Any:
        return deco(type("A", (), {"__annotations__": {"x": "int"}, "__delattr__": lambda s, n: None}))

    def unannotated_field(deco: Any, fld: Any) -> Any:
        return deco(type("A", (), {"__annotations__": {"x": "int"}, "y": fld(default_factory=list)}))

    def default_first(deco: Any, fld: Any) -> Any:
        return deco(type("A", (), {"__annotations__": {"x": "int", "y": "int"}, "x": 0}))

    for make in (own_setattr, own_delattr, unannotated_field, default_first):
        real, light = outcome(make)
        assert real.split(":")[0] == light.split(":")[0] == "TypeError", (real, light)
    assert outcome(own_setattr)[0] == outcome(own_setattr)[1]
