"""Namespace names follow containerd's identifier rules; the contextvar carries the call's."""

from __future__ import annotations

import pytest

from moorage import errdefs
from moorage.namespaces import current_namespace, from_metadata, metadata, namespace, validate_namespace

VALID = ["default", "k8s.io", "moby", "a", "A1", "a-b_c.d", "x" * 76, "0", "abc-123.def_ghi"]
INVALID = [
    "", "-a", "a-", ".a", "a.", "a..b", "a__b", "a-.b", "a/b", "a b", "a:b", "ns\x00", "é",
    "x" * 77, "../etc", "a\nb",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert validate_namespace(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names(name: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        validate_namespace(name)


def test_namespace_is_required() -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="namespace is required"):
        namespace()


def test_contextvar() -> None:
    token = current_namespace.set("prod")
    try:
        assert namespace() == "prod"
    finally:
        current_namespace.reset(token)


def test_metadata_round_trip() -> None:
    md = metadata("prod")
    assert md == {"containerd-namespace-ttrpc": "prod"}
    assert from_metadata({"containerd-namespace-ttrpc": ["prod", "other"]}) == "prod"
    assert from_metadata({}) is None
