"""``moorage serve cri``: the registration record and its build.

Serves runtime.v1.RuntimeService (this package's store and api) and runtime.v1.ImageService
(images.py) on its backend socket; the proxy routes both, and its gRPC front door
(``<state>/moorage.sock``) is where kubelet and crictl connect. The streaming server for
Exec/Attach/PortForward listens on ``[cri] stream_address:stream_port``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from moorage.registry import BuildContext, Process

from .config import CriConfig

SERVICES = ("runtime.v1.RuntimeService", "runtime.v1.ImageService")
RECOVER_ATTEMPTS = 60


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.errdefs import Unavailable

    from .api import RuntimeService
    from .images import build_images
    from .peers import Peers
    from .store import CriRuntime

    cfg: CriConfig = ctx.settings or CriConfig()
    images = await build_images(ctx)
    peers = Peers(ctx.proxy_address)
    runtime = CriRuntime(cfg, peers, images.images, ctx.root, ctx.state, ctx.logger)
    if runtime.clamp.enabled:
        ctx.logger.warning("oom_score_adj requests below %d are clamped to it (restrict_oom_score_adj=%s%s)",
                           runtime.clamp.current, cfg.restrict_oom_score_adj,
                           ": no CAP_SYS_RESOURCE" if cfg.restrict_oom_score_adj == "auto" else "")

    async def recover() -> None:
        for _ in range(RECOVER_ATTEMPTS):
            try:
                await runtime.recover()
                removed = await runtime.reconcile()
                if removed:
                    ctx.logger.warning("removed what no record names (a crash mid-create): %s", ", ".join(removed))
                return
            except Unavailable as exc:  # the proxy or a peer is still starting
                ctx.logger.debug("recover: %s", exc)
                await asyncio.sleep(1.0)
        ctx.logger.error("recover: peers unavailable; running containers are not watched")

    recovering = asyncio.get_running_loop().create_task(recover())
    streaming = None
    try:
        import importlib

        st: Any = importlib.import_module(f"{__package__}.streaming")
        backend = st.build_backend(ctx)
        backend.io_of = runtime.container_io
        streaming = st.StreamingServer(backend, host=cfg.stream_address, port=cfg.stream_port)
        await streaming.start()
    except (ImportError, AttributeError) as exc:
        ctx.logger.warning("no streaming server (%s): Exec, Attach and PortForward are unavailable", exc)
        streaming = None

    async def close() -> None:
        recovering.cancel()
        if streaming is not None:
            await streaming.stop()
        await runtime.close()
        await peers.close()

    ctx.on_close(close)
    return [RuntimeService(runtime, cfg, streaming), images]


PROCESS = Process(
    name="cri",
    services=SERVICES,
    build=build,
    replica_safe=False,
    config=CriConfig,
    description="Kubernetes CRI v1: RuntimeService and ImageService on the sandbox, runtime and images services",
)
