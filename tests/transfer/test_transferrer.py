"""The transferrer's dispatch and image-store options, on the local content store and
image store: extra references (add_digest, allow_overwrite), tag, unsupported pairs, unpack
requested without a snapshotter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.transfer import oci
from moorage.services.transfer.contract import (
    ExtraReference,
    ImageTarget,
    RegistryEndpoint,
    UnpackRequest,
)
from moorage.services.transfer.service import Transferrer

from . import registry as regfix


async def test_extra_references(plain_registry: regfix.Registry, layout: Path, content: Any, images: Any) -> None:
    ref = regfix.push(layout, plain_registry, "xfer/app")
    t = Transferrer(content, images)
    await t.transfer(RegistryEndpoint(ref), ImageTarget(ref, extra_references=(
        ExtraReference("example.com/extra/one:1"), ExtraReference("example.com/extra/dig", add_digest=True),
        ExtraReference("example.com/prefix", is_prefix=True))))
    img = await images.get(ref)
    names = sorted(i.name for i in await images.list())
    assert names == sorted([ref, "example.com/extra/one:1", f"example.com/extra/dig@{img.target.digest}"])
    # a name pointing elsewhere is only replaced with allow_overwrite
    other = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "4" * 64, 4)
    from moorage.services.transfer.contract import Image
    await images.update(Image("example.com/extra/one:1", other), ["target"])
    with pytest.raises(errdefs.AlreadyExists):
        await t.transfer(RegistryEndpoint(ref), ImageTarget(ref, extra_references=(ExtraReference("example.com/extra/one:1"),)))
    await t.transfer(RegistryEndpoint(ref), ImageTarget(ref, extra_references=(
        ExtraReference("example.com/extra/one:1", allow_overwrite=True),)))
    assert (await images.get("example.com/extra/one:1")).target == img.target


async def test_tag_and_bad_pairs(plain_registry: regfix.Registry, layout: Path, content: Any, images: Any) -> None:
    ref = regfix.push(layout, plain_registry, "xfer/tag")
    t = Transferrer(content, images)
    await t.transfer(RegistryEndpoint(ref), ImageTarget(ref))
    await t.transfer(ImageTarget(ref), ImageTarget("local/copy:1", labels={"k": "v"}))
    copy = await images.get("local/copy:1")
    assert copy.labels == {"k": "v"} and copy.target == (await images.get(ref)).target
    with pytest.raises(errdefs.NotFound):
        await t.transfer(ImageTarget("nope:1"), ImageTarget("x:1"))
    with pytest.raises(errdefs.NotImplemented, match="not implemented"):
        await t.transfer(RegistryEndpoint(ref), RegistryEndpoint(ref))
    with pytest.raises(errdefs.FailedPrecondition, match="no unpack platforms"):
        await t.transfer(RegistryEndpoint(ref), ImageTarget(ref, unpacks=(UnpackRequest(oci.host_platform()),)))
