"""Process records: the explicit list of built-ins, lazily imported; missing ones skipped."""

from __future__ import annotations

import pytest

from moorage import registry


def test_builtins_in_start_order() -> None:
    names = registry.builtin_names()
    assert names[0] == "proxy"
    assert names == ["proxy", "content", "snapshots", "transfer", "sandbox", "runtime", "nri", "cri"]


def test_load_records_skips_missing_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "BUILTINS", (*registry.BUILTINS, ("ghost", "moorage.services.ghost.process:PROCESS")))
    records, missing = registry.load_records()
    assert records[0].name == "proxy"
    ghost = [m for m in missing if m.name == "ghost"]
    assert ghost and "not installed" in ghost[0].message()


def test_only_loads_what_is_asked() -> None:
    records, _ = registry.load_records(only=["proxy"])
    assert [r.name for r in records] == ["proxy"]


def test_plugins_by_dotted_path() -> None:
    records, _ = registry.load_records(["skeleton.echo:PROCESS"], only=[])
    assert [r.name for r in records] == ["echo"]
    with pytest.raises(ValueError):
        registry.load_records(["skeleton.echo"], only=[])
    with pytest.raises(ValueError, match="plugin"):
        registry.load_records(["skeleton.echo:NOPE"], only=[])
    with pytest.raises(ValueError, match="twice|named"):
        registry.load_records(["skeleton.echo:PROCESS", "skeleton.echo:PROCESS"], only=[])


def test_a_module_that_fails_inside_is_an_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        registry.load_records(["skeleton.broken:PROCESS"], only=[])
