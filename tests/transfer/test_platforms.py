"""Platform matching on a multi-arch index from the real registry: only the asked
platform's manifest and blobs are fetched; all platforms on request; gc labels for the
fetched children only; export keeps what is present."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.transfer import oci, reference
from moorage.services.transfer.pull import PullOptions, pull
from moorage.services.transfer.registry.resolver import Resolver

from . import registry as regfix


@pytest.fixture(scope="module")
def multi_ref(layout: Path, plain_registry: regfix.Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    lay = tmp_path_factory.mktemp("multi") / "layout"
    shutil.copytree(layout, lay)
    digest = regfix.add_multiarch(lay, arches=("amd64", "arm64", "riscv64"))
    return regfix.push_all(lay, plain_registry, "multi/app", "multi"), digest


async def test_one_platform(multi_ref: tuple[str, str], content: Any, images: Any) -> None:
    ref, index_digest = multi_ref
    async with Resolver(reference.parse(ref)) as res:
        img = await pull(res, reference.parse(ref), content, images,
                         PullOptions(platforms=[oci.parse_platform("linux/arm64")]))
    assert img.target.digest == index_digest and img.target.media_type == oci.OCI_INDEX
    labels = (await content.info(index_digest)).labels
    children = [v for k, v in labels.items() if k.startswith("containerd.io/gc.ref.content.m.")]
    assert len(children) == 1
    manifest = oci.parse_document(b"".join([c async for c in content.read(children[0])]))
    assert isinstance(manifest, oci.Manifest)
    cfg = oci.parse_config(b"".join([c async for c in content.read(manifest.config.digest)]))
    assert cfg.platform.architecture == "arm64"
    index = oci.parse_document(b"".join([c async for c in content.read(index_digest)]))
    assert isinstance(index, oci.Index)
    others = [m.digest for m in index.manifests if m.digest != children[0]]
    for d in others:
        with pytest.raises(errdefs.NotFound):
            await content.info(d)


async def test_all_platforms(multi_ref: tuple[str, str], content: Any, images: Any) -> None:
    ref, index_digest = multi_ref
    async with Resolver(reference.parse(ref)) as res:
        await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None))
    labels = (await content.info(index_digest)).labels
    assert len([k for k in labels if k.startswith("containerd.io/gc.ref.content.m.")]) == 3


async def test_missing_platform(multi_ref: tuple[str, str], content: Any, images: Any) -> None:
    ref, _ = multi_ref
    async with Resolver(reference.parse(ref)) as res:
        with pytest.raises(errdefs.NotFound, match="no manifest"):
            await pull(res, reference.parse(ref), content, images, PullOptions(platforms=[oci.parse_platform("windows/amd64")]))
    assert await images.list() == []


def test_platform_rules() -> None:
    p = oci.parse_platform
    assert oci.platform_matches(p("linux/arm64"), oci.Platform("linux", "arm64", "v8"))
    assert oci.platform_matches(p("linux/arm/v7"), oci.Platform("linux", "arm", "v6"))
    assert not oci.platform_matches(p("linux/arm/v6"), oci.Platform("linux", "arm", "v7"))
    assert not oci.platform_matches(p("linux/amd64"), oci.Platform("linux", "arm64"))
    assert str(p("x86_64")) == "linux/amd64"
    for bad in ["", "a/b/c/d", "linux//x"]:
        with pytest.raises(errdefs.InvalidArgument):
            p(bad)


async def test_all_metadata_and_manifest_limit(multi_ref: tuple[str, str], content: Any, images: Any) -> None:
    ref, index_digest = multi_ref
    async with Resolver(reference.parse(ref)) as res:
        await pull(res, reference.parse(ref), content, images,
                   PullOptions(platforms=[oci.parse_platform("linux/arm64")], all_metadata=True))
    index = oci.parse_document(b"".join([c async for c in content.read(index_digest)]))
    assert isinstance(index, oci.Index)
    for m in index.manifests:  # every manifest and config is here
        doc = oci.parse_document(b"".join([c async for c in content.read(m.digest)]))
        assert isinstance(doc, oci.Manifest)
        await content.info(doc.config.digest)
        labels = (await content.info(m.digest)).labels
        assert ("containerd.io/gc.ref.content.l.0" in labels) == (m.platform.architecture == "arm64")  # type: ignore[union-attr]


async def test_manifest_limit(multi_ref: tuple[str, str], content: Any, images: Any) -> None:
    ref, index_digest = multi_ref
    async with Resolver(reference.parse(ref)) as res:
        await pull(res, reference.parse(ref), content, images, PullOptions(platforms=None, manifest_limit=2))
    labels = (await content.info(index_digest)).labels
    assert len([k for k in labels if k.startswith("containerd.io/gc.ref.content.m.")]) == 2
