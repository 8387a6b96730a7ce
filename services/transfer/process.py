"""``moorage serve transfer``: the registration record and its build.

Serves Transfer, Streaming and Images. Content, snapshots and diff are reached through the
proxy. Not replica-safe: a transfer and the streams it names must meet in one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from moorage.registry import BuildContext, Process

from .config import TransferConfig
from .wire import IMAGES, STREAMING, TRANSFER


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.api.containerd.events import image_pb2 as events_pb

    from moorage.leasing import Leases, Recorder

    from .api import ImagesService, StreamingService, TransferService
    from .images import ImageDB
    from .peers import Peers, ProxyContent
    from .service import TransferSettings, Transferrer
    from .streams import StreamManager

    settings: TransferConfig = ctx.settings or TransferConfig()
    import logging
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

    async def publish(topic: str, name: str, labels: Mapping[str, str]) -> None:
        if topic == "/images/create":
            await ctx.publisher.publish(topic, events_pb.ImageCreate(name=name, labels=dict(labels)))
        elif topic == "/images/update":
            await ctx.publisher.publish(topic, events_pb.ImageUpdate(name=name, labels=dict(labels)))
        else:
            await ctx.publisher.publish(topic, events_pb.ImageDelete(name=name))

    images = ImageDB(ctx.root, publish)
    ctx.on_close(images.close)
    peers = Peers(ctx.proxy_address)
    ctx.on_close(peers.close)

    async def usage(namespace: str) -> Sequence[str]:
        return images.namespaces_in_use(namespace)

    ctx.namespace_usage(usage)
    streams = StreamManager()
    leases = Leases(ctx.proxy_address)
    ctx.on_close(leases.close)
    transferrer = Transferrer(ProxyContent(peers), images, peers.unpack_target, TransferSettings(
        max_concurrent_downloads=settings.max_concurrent_downloads,
        max_concurrent_uploads=settings.max_concurrent_uploaded_layers,
        hosts_dir=settings.hosts_dir, credentials_file=settings.credentials_file,
        default_snapshotter=settings.default_snapshotter, chunk_size=settings.upload_chunk_size),
        leases=leases)
    _preload()
    ctx.logger.info("transfer ready", extra={"root": str(ctx.root)})
    return [ImagesService(images, Recorder(leases), leases.collect), TransferService(transferrer, streams), StreamingService(streams)]


def _preload() -> None:
    """What a first pull would import (the registry client's stack, the peers' clients),
    loaded at start rather than on the first pull's critical path. Not on a thread: imports
    racing the first request's own can fail ("deadlock detected by _ModuleLock")."""
    from moorage.services.content.client import ContentClient  # noqa: F401
    from moorage.services.snapshots.client import RemoteDiffer  # noqa: F401

    from .registry.http import preload

    preload()


PROCESS = Process(
    name="transfer",
    services=(TRANSFER, STREAMING, IMAGES),
    build=build,
    replica_safe=False,
    config=TransferConfig,
    description="containerd transfer (pull, push, import, export, tag) and the image store",
)
