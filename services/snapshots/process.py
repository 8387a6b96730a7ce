"""``moorage serve snapshots``: the registration record and its build.

Serves Snapshots (overlayfs, native) and Diff. Diff reads and writes layers through the
content service, reached through the proxy (connected on first use, reconnected after a
loss). Not replica-safe: one process owns a snapshots root.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from moorage import errdefs
from moorage.registry import BuildContext, Process

from .config import SnapshotsConfig
from .wire import DIFF, SNAPSHOTS, SWEEP


class ProxyContent:
    """The two content calls Diff needs, over one lazily (re)connected proxy client."""

    def __init__(self, address: Path) -> None:
        self.address = address
        self._client: Any = None

    async def _content(self) -> Any:
        from moorage.rpc import connect
        from moorage.services.content.client import ContentClient

        if self._client is None or self._client.closed:
            self._client = await connect(self.address)
        return ContentClient(self._client)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        content = await self._content()
        async for chunk in content.read(digest, offset, size):
            yield chunk

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Any:
        content = await self._content()
        return await content.writer(ref, total, expected)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.leasing import Leases, Recorder

    from .api import DiffService, SnapshotsService
    from .differ import LocalDiffer
    from .store import LocalSnapshotters

    from moorage.events import QueuedPublisher

    settings: SnapshotsConfig = ctx.settings or SnapshotsConfig()
    try:
        snapshotters = LocalSnapshotters(str(ctx.root), settings.snapshotters)
    except OSError as exc:
        raise errdefs.FailedPrecondition(f"snapshots root {ctx.root}: {exc}") from exc
    ctx.on_close(snapshotters.close)
    content = ProxyContent(ctx.proxy_address)
    ctx.on_close(content.close)
    differ = LocalDiffer(content, settings.limits, tmpdir=str(ctx.state), workers=settings.apply_workers)
    ctx.namespace_usage(snapshotters.namespace_usage)
    recorder = Recorder(Leases(ctx.proxy_address))
    ctx.on_close(recorder.close)
    ctx.logger.info("snapshotters ready: %s", ", ".join(snapshotters.names()))
    # calls do not wait for their events' round trip through the proxy (order kept)
    publisher = QueuedPublisher(ctx.publisher, logger=ctx.logger)
    ctx.on_close(publisher.close)
    snaps = SnapshotsService(snapshotters, publisher, recorder)
    return [snaps, snaps.raw(), DiffService(differ)]


PROCESS = Process(
    name="snapshots",
    services=(SNAPSHOTS, DIFF, SWEEP),
    build=build,
    replica_safe=False,
    config=SnapshotsConfig,
    description="containerd snapshots (overlayfs, native) and diff (apply, diff)",
)
