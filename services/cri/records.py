"""The CRI process's own durable records: one JSON file per pod and per container.

``<root>/pods/<id>.json`` and ``<root>/containers/<id>.json`` hold the contract's
:class:`~.contract.Pod` and :class:`~.contract.Container` (written atomically: temp file,
fsync, rename). Everything is loaded into memory at start; the files are only written.
The peers (sandbox and runtime services) keep their own records under the same ids.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from .contract import Container, Pod

T = TypeVar("T", Pod, Container)


def encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    return obj


def decode(tp: Any, value: Any) -> Any:
    """The value of type ``tp`` that :func:`encode` produced ``value`` from."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return decode(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in value)
        return tuple(decode(a, v) for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict, Mapping):
        vt = args[1] if len(args) == 2 else Any
        return {str(k): decode(vt, v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: decode(hints[k], v) for k, v in value.items() if k in known})
    return value


class Records(Generic[T]):
    """Records of one type, by id, in memory and on disk."""

    def __init__(self, directory: Path, kind: type[T]) -> None:
        self.dir = directory
        self.kind: type[T] = kind
        self.items: dict[str, T] = {}
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in sorted(directory.glob("*.json")):
            try:
                self.items[p.stem] = decode(kind, json.loads(p.read_bytes()))
            except (ValueError, TypeError, KeyError):
                p.rename(p.with_suffix(".corrupt"))

    def __iter__(self) -> Iterator[T]:
        return iter(list(self.items.values()))

    def get(self, id: str) -> T | None:
        return self.items.get(id)

    def put(self, rec: T) -> None:
        path = self.dir / f"{rec.id}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(json.dumps(encode(rec), sort_keys=True).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.items[rec.id] = rec

    def delete(self, id: str) -> None:
        self.items.pop(id, None)
        (self.dir / f"{id}.json").unlink(missing_ok=True)
