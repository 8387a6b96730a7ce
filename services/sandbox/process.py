"""``moorage serve sandbox``: the registration record and its build."""

from __future__ import annotations

from collections.abc import Sequence

from moorage.registry import BuildContext, Process

from .config import SandboxConfig
from .contract import PodHooks

SERVICES = ("containerd.services.sandbox.v1.Store", "containerd.services.sandbox.v1.Controller")


def pod_hooks(ctx: BuildContext) -> PodHooks:
    """The pod lifecycle hooks: NRI's RunPodSandbox/StopPodSandbox/RemovePodSandbox, sent to
    the nri process through the proxy (a suite without it behaves as one with no plugins)."""
    from moorage.nri.client import NriPodHooks

    hooks = NriPodHooks(ctx.proxy_address)
    ctx.on_close(hooks.close)
    return hooks


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.namespaces import current_namespace

    from .api import ControllerService, StoreService
    from .contract import Controller
    from .controller import PublisherSink, Sandboxers
    from .db import Database
    from .pod import PodController
    from .reconcile import reconcile
    from .shim import ShimController
    from .store import SqliteStore

    cfg: SandboxConfig = ctx.settings or SandboxConfig()
    hooks = pod_hooks(ctx)
    db = Database(ctx.root / "sandbox.db")
    store = SqliteStore(db)
    sink = PublisherSink(ctx.publisher)
    controllers: dict[str, Controller] = {}
    pods: list[PodController] = []
    shims: list[ShimController] = []
    for name, kind in cfg.sandboxers.items():
        if kind == "pod":
            pod = PodController(name, db, store, cfg, ctx.root, sink, hooks)
            pods.append(pod)
            controllers[name] = pod
        else:
            shim = ShimController(name, db, store, cfg, ctx.state / "shims" / name, str(ctx.proxy_address), sink)
            shims.append(shim)
            controllers[name] = shim
    if cfg.reconcile:
        report = await reconcile(pods, shims)
        ctx.logger.info(
            "reconciled: %d marked not ready, %d teardowns retried (%d still failing), %d namespaces and %d addresses released,"
            " %d stale pod dirs removed, %d half-created shim sandboxes cleaned",
            len(report.marked_failed),
            len(report.retried),
            len(report.still_failing),
            len(report.netns_removed),
            len(report.ips_released),
            len(report.dirs_removed),
            len(report.shims_cleaned),
        )

    async def usage(ns: str) -> Sequence[str]:
        token = current_namespace.set(ns)
        try:
            return [f"sandbox {s.id}" for s in await store.list()]
        finally:
            current_namespace.reset(token)

    async def close() -> None:
        for pod in pods:
            await pod.drain(cfg.cni_del_timeout)
        for shim in shims:
            await shim.close()
        await sink.close()
        db.close()

    ctx.namespace_usage(usage)
    ctx.on_close(close)
    return [StoreService(store), ControllerService(Sandboxers(controllers))]


PROCESS = Process(
    name="sandbox",
    services=SERVICES,
    build=build,
    replica_safe=False,
    config=SandboxConfig,
    description="sandbox.v1 Store and Controller: pod sandboxes (netns + CNI) and shim sandboxes",
)
