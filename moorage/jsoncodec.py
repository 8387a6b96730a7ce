"""JSON for ``moor``: ``loads`` and ``dumps`` on CPython's ``_json`` accelerator, without the
``json`` package, whose decoder and encoder import ``re`` (together ~10 ms of a command).

Same C scanner and encoder as ``json.loads`` / ``json.dumps`` with default settings, so the
results are the same: ``dumps`` writes what ``json.dumps`` writes (ASCII, NaN allowed,
circular references refused); ``loads`` accepts what ``json.loads`` accepts. Input the fast
path does not take (a BOM, UTF-16, an error of any kind) goes to ``json.loads`` itself, so
the errors are json's too (``ValueError`` subclasses). Without ``_json`` (not CPython)
both are json's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["dumps", "loads"]

_WHITESPACE = " \t\n\r"


class _Context:
    """What the C scanner reads from json.JSONDecoder (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


try:
    import _json
except ImportError:  # pragma: no cover - not CPython
    _json = None  # type: ignore[assignment]
    _scan = None
else:
    _scan = _json.make_scanner(_Context())  # type: ignore[arg-type]


def loads(data: str | bytes | bytearray) -> Any:
    """A JSON document as Python objects (as ``json.loads(data)``)."""
    if _scan is not None:
        try:
            text = data if isinstance(data, str) else bytes(data).decode("utf-8")
            start = len(text) - len(text.lstrip(_WHITESPACE))
            value, end = _scan(text, start)
            if not text[end:].strip(_WHITESPACE):
                return value
        except (ValueError, StopIteration, RecursionError):
            pass
    import json

    return json.loads(data)


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


def dumps(
    value: Any,
    *,
    separators: tuple[str, str] = (", ", ": "),
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``value`` as JSON text (as ``json.dumps`` with the same arguments)."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value) if _json else _fallback(value, separators, sort_keys, default)
    if _json is None:  # pragma: no cover - not CPython
        return _fallback(value, separators, sort_keys, default)
    item_sep, key_sep = separators
    encode = _json.make_encoder(
        {}, default or _unserializable, _json.encode_basestring_ascii, None, key_sep, item_sep, sort_keys, False, True
    )
    return "".join(encode(value, 0))


def _fallback(value: Any, separators: tuple[str, str], sort_keys: bool, default: Callable[[Any], Any] | None) -> str:
    import json

    return json.dumps(value, separators=separators, sort_keys=sort_keys, default=default)
