"""A pull's unpack when a chain snapshot it found present is collected before it prepares a
child on it (the image that held it removed meanwhile): it starts over and extracts again."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from moorage import errdefs
from moorage.services.transfer import oci
from moorage.services.transfer.contract import BlobInfo, UnpackTarget
from moorage.services.transfer.oci import Descriptor, Platform
from moorage.services.transfer.pull import unpack

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class Snapshots:
    def __init__(self, present: set[str]) -> None:
        self.present = set(present)
        self.active: dict[str, str] = {}
        self.sweep_on_child_of: str | None = None

    async def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> Sequence[object]:
        if parent and parent == self.sweep_on_child_of:
            self.present.discard(parent)  # a collection took it just before
            self.sweep_on_child_of = None
        if parent and parent not in self.present:
            raise errdefs.NotFound(f"parent snapshot {parent} does not exist")
        self.active[key] = parent
        return [key]

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        del self.active[key]
        self.present.add(name)

    async def stat(self, key: str) -> object:
        if key not in self.present:
            raise errdefs.NotFound(key)
        return key

    async def remove(self, key: str) -> None:
        self.active.pop(key, None)


class Applier:
    def __init__(self, diff_ids: Mapping[str, str]) -> None:
        self.diff_ids = diff_ids
        self.applied: list[str] = []

    async def apply(self, desc: Descriptor, mounts: Sequence[object]) -> str:
        self.applied.append(desc.digest)
        return self.diff_ids[desc.digest]


class Content:
    async def info(self, digest: str) -> BlobInfo:
        now = datetime.now(timezone.utc)
        return BlobInfo(digest, 1, now, now, {})

    async def update(self, info: BlobInfo, fieldpaths: Sequence[str] = ()) -> BlobInfo:
        return info


def test_a_parent_swept_mid_unpack_is_extracted_again() -> None:
    layers = tuple(Descriptor(LAYER, f"sha256:{n:064x}", 1) for n in (1, 2))
    diff_ids = (f"sha256:{11:064x}", f"sha256:{12:064x}")
    chain = oci.chain_ids(diff_ids)
    manifest = oci.Manifest("application/vnd.oci.image.manifest.v1+json",
                            Descriptor("application/vnd.oci.image.config.v1+json", f"sha256:{3:064x}", 1), layers)
    config = oci.ImageConfig(diff_ids, Platform("linux", "amd64"))
    sn = Snapshots({chain[0]})  # the base is another image's
    sn.sweep_on_child_of = chain[0]
    applier = Applier({layers[0].digest: diff_ids[0], layers[1].digest: diff_ids[1]})

    async def run() -> str:
        done: dict[str, asyncio.Future[None]] = {}
        for layer in layers:
            done[layer.digest] = asyncio.get_running_loop().create_future()
            done[layer.digest].set_result(None)
        target = UnpackTarget(Platform("linux", "amd64"), "overlayfs", sn, applier)
        return await unpack(target, manifest, config, done, Content())  # type: ignore[arg-type]

    assert asyncio.run(run()) == chain[1]
    assert sn.present == set(chain) and not sn.active
    assert applier.applied == [layers[0].digest, layers[1].digest]  # the base extracted again
