"""``moorage serve content``: the registration record and its build."""

from __future__ import annotations

from collections.abc import Sequence

from moorage.registry import BuildContext, Process

from .config import ContentConfig
from .wire import SERVICE, SWEEP_SERVICE


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.leasing import Leases, Recorder

    from .api import servicers
    from .memory import keep_freed_memory
    from .store import LocalStore

    keep_freed_memory()
    settings: ContentConfig = ctx.settings or ContentConfig()
    store = LocalStore(str(ctx.root), workers=settings.workers)
    ctx.on_close(store.close)

    async def usage(namespace: str) -> Sequence[str]:
        blobs, ingests = await store.usage(namespace)
        held = []
        if blobs:
            held.append(f"content: {blobs} blob{'s' if blobs != 1 else ''}")
        if ingests:
            held.append(f"content: {ingests} active ingest{'s' if ingests != 1 else ''}")
        return held

    ctx.namespace_usage(usage)
    recorder = Recorder(Leases(ctx.proxy_address))
    ctx.on_close(recorder.close)
    ctx.logger.info("content store ready", extra={"root": str(ctx.root)})
    return servicers(store, ctx.publisher, recorder)


PROCESS = Process(
    name="content",
    services=(SERVICE, SWEEP_SERVICE),
    build=build,
    replica_safe=True,
    config=ContentConfig,
    description="containerd content store: blobs, ingests, labels per namespace",
)
