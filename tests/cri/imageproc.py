"""A test-only process serving runtime.v1.ImageService through ``build_images`` alone
(plugin spec ``cri.imageproc:PROCESS``; the built-in ``cri`` disabled in that suite), so
the image tests run through the proxy and its gRPC door without pods, CNI or streaming."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moorage.registry import BuildContext, Process


@dataclass(frozen=True)
class ImagesOnlyConfig:
    """The keys of ``[cri]`` that ``build_images`` reads."""

    namespace: str = "k8s.io"
    snapshotter: str = "overlayfs"
    sandbox_image: str = ""


async def build(ctx: BuildContext) -> Sequence[object]:
    from moorage.services.cri.images import build_images

    return [await build_images(ctx)]


PROCESS = Process(
    name="cri-images",
    services=("runtime.v1.ImageService",),
    build=build,
    config=ImagesOnlyConfig,
    description="the CRI ImageService alone (tests)",
)
