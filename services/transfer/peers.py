"""The transfer process's peers, reached through the proxy over one lazily (re)connected
ttrpc client: the content store (contract.ContentStore), snapshotters and the differ
(contract.Snapshotter / contract.Applier) for unpacking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from .contract import BlobInfo, BlobWriter, UnpackTarget
from .oci import Descriptor, Platform


class Peers:
    def __init__(self, address: Path) -> None:
        self.address = address
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None or self._client.closed:
                from moorage.rpc import connect
                self._client = await connect(self.address)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def content(self) -> Any:
        from moorage.services.content.client import ContentClient
        return ContentClient(await self.client())

    def unpack_target(self, platform: Platform, snapshotter: str) -> UnpackTarget:
        return UnpackTarget(platform, snapshotter, ProxySnapshotter(self, snapshotter), ProxyApplier(self))


class ProxyContent:
    """contract.ContentStore through the proxy."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def info(self, digest: str) -> BlobInfo:
        return await (await self.peers.content()).info(digest)  # type: ignore[no-any-return]

    async def update(self, info: BlobInfo, fieldpaths: Sequence[str] = ()) -> BlobInfo:
        return await (await self.peers.content()).update(info, fieldpaths)  # type: ignore[no-any-return]

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> BlobWriter:
        return await (await self.peers.content()).writer(ref, total, expected)  # type: ignore[no-any-return]

    async def abort(self, ref: str) -> None:
        await (await self.peers.content()).abort(ref)

    async def list_statuses(self, filters: Sequence[str] = ()) -> Any:
        return await (await self.peers.content()).list_statuses(filters)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        async for chunk in (await self.peers.content()).read(digest, offset, size):
            yield chunk


class ProxySnapshotter:
    def __init__(self, peers: Peers, name: str) -> None:
        self.peers = peers
        self.name = name

    async def _sn(self) -> Any:
        from moorage.services.snapshots.client import RemoteSnapshotter
        return RemoteSnapshotter(await self.peers.client(), self.name)

    async def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> Sequence[object]:
        return await (await self._sn()).prepare(key, parent, labels)  # type: ignore[no-any-return]

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        await (await self._sn()).commit(name, key, labels)

    async def stat(self, key: str) -> object:
        return await (await self._sn()).stat(key)

    async def remove(self, key: str) -> None:
        await (await self._sn()).remove(key)


class ProxyApplier:
    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def apply(self, desc: Descriptor, mounts: Sequence[object]) -> str:
        from moorage.services.snapshots.client import RemoteDiffer
        from moorage.services.snapshots.contract import Descriptor as SDescriptor
        differ = RemoteDiffer(await self.peers.client())
        applied = await differ.apply(SDescriptor(desc.media_type, desc.digest, desc.size, dict(desc.annotations)),
                                     cast("Sequence[Any]", mounts))
        return str(applied.digest)
