"""The local snapshotters: the contract over the on-disk backends, for the running namespace.

``LocalSnapshotters(root)`` opens ``<root>/overlayfs`` and ``<root>/native`` (or the
``enabled`` subset) and hands out a ``LocalSnapshotter`` per name. Backend work runs on
worker threads (``asyncio.to_thread``); the namespace is read on the loop side.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence

from moorage import errdefs, filters
from moorage.namespaces import namespace

from .backend import Backend
from .contract import SNAPSHOTTERS, Info, Mount, Usage, Kind
from .native import NativeBackend
from .overlay import OverlayBackend

BACKENDS: dict[str, type[Backend]] = {"overlayfs": OverlayBackend, "native": NativeBackend}


def _adaptor(info: Info) -> filters.Adaptor:
    return filters.adaptor(
        {"name": info.name, "parent": info.parent, "kind": info.kind.label}, info.labels
    )


class LocalSnapshotter:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def name(self) -> str:
        return self.backend.name

    async def stat(self, key: str) -> Info:
        return await asyncio.to_thread(self.backend.stat, namespace(), key)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return await asyncio.to_thread(self.backend.update, namespace(), info, list(fieldpaths))

    async def usage(self, key: str) -> Usage:
        return await asyncio.to_thread(self.backend.usage, namespace(), key)

    async def mounts(self, key: str) -> list[Mount]:
        return await asyncio.to_thread(self.backend.mounts, namespace(), key)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return await asyncio.to_thread(
            self.backend.create, namespace(), key, parent, labels, Kind.ACTIVE
        )

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return await asyncio.to_thread(
            self.backend.create, namespace(), key, parent, labels, Kind.VIEW
        )

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        await asyncio.to_thread(self.backend.commit, namespace(), name, key, labels)

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(self.backend.remove, namespace(), key)

    async def remove_many(self, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Remove many snapshots at once, children first (see ``Backend.remove_many``)."""
        return await asyncio.to_thread(self.backend.remove_many, namespace(), list(keys))

    async def walk(self, filters_: Sequence[str] = ()) -> AsyncIterator[Info]:
        flt = filters.parse(list(filters_))
        infos = await asyncio.to_thread(self.backend.infos, namespace())
        for info in infos:
            if flt.match(_adaptor(info)):
                yield info

    async def cleanup(self) -> None:
        await asyncio.to_thread(self.backend.cleanup)


class LocalSnapshotters:
    """Every enabled snapshotter under ``root`` (``<root>/<name>``)."""

    def __init__(self, root: str, enabled: Sequence[str] = SNAPSHOTTERS) -> None:
        self._by_name: dict[str, LocalSnapshotter] = {}
        for name in enabled:
            if name not in BACKENDS:
                raise errdefs.InvalidArgument(f"unknown snapshotter {name!r}")
            path = os.path.join(root, name)
            os.makedirs(path, mode=0o700, exist_ok=True)
            self._by_name[name] = LocalSnapshotter(BACKENDS[name](path))

    def get(self, name: str) -> LocalSnapshotter:
        if not name:
            raise errdefs.InvalidArgument("snapshotter argument missing")
        found = self._by_name.get(name)
        if found is None:
            raise errdefs.InvalidArgument(f"snapshotter not loaded: {name}")
        return found

    def names(self) -> list[str]:
        return list(self._by_name)

    async def namespace_usage(self, ns: str) -> list[str]:
        out: list[str] = []
        for name, sn in self._by_name.items():
            keys = await asyncio.to_thread(sn.backend.keys, ns)
            out.extend(f"snapshot {name}/{k}" for k in keys)
        return out

    def close(self) -> None:
        for sn in self._by_name.values():
            sn.backend.close()
