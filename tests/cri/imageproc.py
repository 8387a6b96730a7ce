"""A test-only process serving runtime.v1.ImageService through ``build_images``, so the
image tests run through the proxy and its gRPC door without the whole ``cri`` process
(plugin spec ``cri.imageproc:PROCESS``)."""

from __future__ import annotations

from collections.abc import Sequence

from moorage.registry import BuildContext, Process


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.services.cri.images import build_images

    return [await build_images(ctx)]


PROCESS = Process(
    name="cri-images",
    services=("runtime.v1.ImageService",),
    build=build,
    description="the CRI ImageService alone (tests)",
)
