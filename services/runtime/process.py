"""`moorage serve runtime`: the registration record and its build."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moorage.registry import BuildContext, Process

from .config import RuntimeConfig

SERVICES = (
    "containerd.services.containers.v1.Containers",
    "containerd.services.tasks.v1.Tasks",
)


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage import rpc
    from moorage.events import QueuedPublisher

    from .api import ContainersService, TasksService
    from .bundle import Bundles
    from .containers import SqliteContainerStore
    from .nri import RuntimeNri
    from .shim import SCHEMA as SHIMS_SCHEMA
    from .shim import ShimFlags, ShimRecords
    from .tasks import TaskManager
    from .versions import RuntimePolicy, oci_binary

    from moorage import syscalls  # noqa: F401  (cffi set-up now, not in the first task delete)

    settings: RuntimeConfig = ctx.settings or RuntimeConfig()
    store = SqliteContainerStore(ctx.root / "runtime.db", SHIMS_SCHEMA)
    records = ShimRecords(store._db)
    flags = ShimFlags(address=str(ctx.proxy_address), ttrpc_address=str(ctx.proxy_address),
                      debug=settings.shim_debug)
    proxy_client: list[Any] = []

    async def proxy() -> Any:
        if not proxy_client or getattr(proxy_client[0], "closed", False):
            proxy_client[:] = [await rpc.connect(ctx.proxy_address)]
        return proxy_client[0]

    # calls do not wait for their events' round trip through the proxy (order kept)
    publisher = QueuedPublisher(ctx.publisher, logger=ctx.logger)
    nri = RuntimeNri(ctx.proxy_address, ctx.logger.getChild("nri"), enabled=settings.nri)
    search = os.pathsep.join(p for p in (settings.shim_path, os.environ.get("PATH", "")) if p)
    tasks = TaskManager(
        store, Bundles(ctx.state, ctx.root), records, flags, publisher, ctx.logger,
        runc_root=Path(settings.runc_root) if settings.runc_root else ctx.state / "runc",
        log_dir=ctx.root / "logs", connect=rpc.connect, proxy=proxy, shim_search_path=search,
        prestart=settings.shim_prestart, nri=nri)
    await tasks.recover()
    import asyncio

    follower = asyncio.get_running_loop().create_task(tasks.follow_events())
    policy = RuntimePolicy(ctx.logger, refuse_unpatched=settings.refuse_unpatched_runtimes)
    default_binary = oci_binary(settings.default_runtime, None)
    # judged now, off the start-up path: the log says at start what the runtime will refuse
    probe = None if default_binary is None else asyncio.get_running_loop().create_task(
        policy.verdict(default_binary))

    async def close() -> None:
        follower.cancel()
        if probe is not None:
            probe.cancel()
        policy.close()
        await tasks.close()
        await publisher.close()
        await nri.close()
        for c in proxy_client:
            await c.close()
        store.close()

    async def usage(ns: str) -> Sequence[str]:
        rows = store._db.execute("SELECT id FROM containers WHERE namespace=?", (ns,)).fetchall()
        return [f"container {r[0]}" for r in rows]

    ctx.on_close(close)
    ctx.namespace_usage(usage)
    ctx.health_notes(policy.notes)
    return [ContainersService(store, tasks, publisher), TasksService(tasks, policy)]


PROCESS = Process(
    name="runtime",
    services=SERVICES,
    build=build,
    replica_safe=False,
    config=RuntimeConfig,
    description="containers.v1 and tasks.v1 on runtime v2 shims",
)
