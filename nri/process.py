"""``moorage serve nri``: the registration record and its build.

Build order, as containerd/nri: pre-installed plugins are started and synchronized first,
then the NRI socket opens for external plugins; then the hook API is served.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from moorage import errdefs
from moorage.registry import BuildContext, Process

from .config import NriConfig

if TYPE_CHECKING:
    from moorage.api.containerd.services.tasks.v1.tasks_ttrpc import TasksClient

SERVICES = ("moorage.nri.v1.Hooks",)
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.api.nri.pkg.api import api_pb2 as api
    from moorage.namespaces import current_namespace

    from .adaptation import Adaptation, Options
    from .adjust import resources_to_oci
    from .api import HooksService

    cfg: NriConfig = ctx.settings or NriConfig()
    namespaces: dict[str, str] = {}

    def remember(container_id: str) -> None:
        ns = current_namespace.get(None)
        if ns:
            namespaces[container_id] = ns

    async def tasks() -> TasksClient:
        from moorage.api.containerd.services.tasks.v1.tasks_ttrpc import TasksClient
        from moorage.rpc import connect

        return TasksClient(await connect(ctx.proxy_address))

    async def updater(updates: Sequence[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        from google.protobuf import any_pb2

        from moorage.api.containerd.services.tasks.v1 import tasks_pb2
        from moorage.namespaces import NAMESPACE_KEY
        from moorage.services.runtime.nri import NRI_ORIGIN_KEY  # the runtime's wire contract

        if not cfg.apply_updates:
            ctx.logger.warning("nri: plugin updates are disabled; %d reported failed", len(updates))
            return list(updates)
        failed = []
        client = await tasks()
        try:
            for u in updates:
                ns = namespaces.get(u.container_id, "default")
                body = json.dumps(resources_to_oci(u.linux.resources)).encode()
                req = tasks_pb2.UpdateTaskRequest(container_id=u.container_id,
                                                  resources=any_pb2.Any(type_url=RESOURCES_URL, value=body))
                try:
                    await client.Update(req, timeout=10.0, metadata={NAMESPACE_KEY: ns, NRI_ORIGIN_KEY: "1"})
                except Exception as exc:  # noqa: BLE001 - each failure is reported back
                    ctx.logger.warning("nri: update of %s failed: %s", u.container_id, exc)
                    failed.append(u)
        finally:
            await client.client.close()
        return failed

    async def evicter(evictions: Sequence[api.ContainerEviction]) -> None:
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2
        from moorage.namespaces import NAMESPACE_KEY

        if not cfg.apply_updates:
            return
        client = await tasks()
        try:
            for e in evictions:
                ns = namespaces.get(e.container_id, "default")
                ctx.logger.info("nri: evicting %s: %s", e.container_id, e.reason)
                try:
                    await client.Kill(tasks_pb2.KillRequest(container_id=e.container_id, signal=signal.SIGKILL, all=True),
                                      timeout=10.0, metadata={NAMESPACE_KEY: ns})
                except Exception as exc:  # noqa: BLE001
                    ctx.logger.warning("nri: eviction of %s failed: %s", e.container_id, exc)
        finally:
            await client.client.close()

    try:
        from importlib.metadata import version

        runtime_version = version("moorage")
    except Exception:  # noqa: BLE001
        runtime_version = "dev"
    options = Options(
        socket_path=cfg.socket_path,
        registration_timeout=cfg.registration_timeout,
        request_timeout=cfg.request_timeout,
        sync_timeout=cfg.sync_timeout,
        disable_connections=cfg.disable_connections,
        runtime_name="moorage",
        runtime_version=runtime_version,
        required_plugins=cfg.required_plugins,
        request_timeout_strikes=cfg.request_timeout_strikes,
        restart_delay=cfg.restart_delay,
        restart_max_delay=cfg.restart_max_delay,
    )
    nri = Adaptation(options, updater, evicter)
    ctx.on_close(nri.close)
    launched = await nri.launch_preinstalled(Path(cfg.plugin_path), Path(cfg.plugin_config_path), ctx.state / "plugins")
    if launched:
        ctx.logger.info("nri: %d pre-installed plugin(s) running: %s", len(launched), ", ".join(p.id for p in launched))
    try:
        await nri.listen()
    except (errdefs.AlreadyExists, OSError) as exc:
        # another runtime owns the NRI socket: keep serving pre-installed plugins and hooks
        ctx.logger.error("nri: not listening for external plugins: %s", exc)
    return [HooksService(nri, remember)]


PROCESS = Process(
    name="nri",
    services=SERVICES,
    build=build,
    replica_safe=False,
    config=NriConfig,
    description="NRI v2 runtime side: plugins on the NRI socket, the lifecycle hook API for runtime and sandbox",
)
