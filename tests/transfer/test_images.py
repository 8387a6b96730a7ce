"""The image store conformance suite: Get, List with filters, Create, Update with field
paths, Delete, namespaces kept apart; run against the SQLite store, its client over a real
unix socket, and the client through the proxy of a real suite. Events are checked on the
store (through the proxy in test_service.py)."""

from __future__ import annotations

from typing import Any

import pytest

from moorage import errdefs
from moorage.namespaces import current_namespace
from moorage.services.transfer import oci
from moorage.services.transfer.contract import Image

from .conftest import NS

D1 = oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + "1" * 64, 10)
D2 = oci.Descriptor(oci.OCI_INDEX, "sha256:" + "2" * 64, 20)


async def test_crud_and_events(store: Any) -> None:
    images = store
    created = await images.create(Image("docker.io/library/a:1", D1, {"k": "v"}))
    assert created.created_at and created.updated_at
    with pytest.raises(errdefs.AlreadyExists):
        await images.create(Image("docker.io/library/a:1", D1))
    assert (await images.get("docker.io/library/a:1")).labels == {"k": "v"}
    with pytest.raises(errdefs.NotFound):
        await images.get("nope")
    up = await images.update(Image("docker.io/library/a:1", D2, {"k2": "v2"}), ["labels.k2"])
    assert up.labels == {"k": "v", "k2": "v2"} and up.target == D1
    up = await images.update(Image("docker.io/library/a:1", D2, {}), ["target", "labels.k"])
    assert up.labels == {"k2": "v2"} and up.target.digest == D2.digest
    with pytest.raises(errdefs.InvalidArgument):
        await images.update(Image("docker.io/library/a:1", D2), ["name"])
    with pytest.raises(errdefs.FailedPrecondition):
        await images.delete("docker.io/library/a:1", target=D1.digest)
    await images.delete("docker.io/library/a:1")
    with pytest.raises(errdefs.NotFound):
        await images.delete("docker.io/library/a:1")
    if hasattr(images, "events"):
        assert [t for t, _ in images.events] == ["/images/create", "/images/update", "/images/update", "/images/delete"]


@pytest.mark.parametrize("bad", [Image("", D1), Image("x", oci.Descriptor("", D1.digest, 1)),
                                 Image("x", oci.Descriptor(oci.OCI_MANIFEST, "sha256:../x", 1)),
                                 Image("x", D1, {"k": "v" * 5000})])
async def test_invalid(bad: Image, store: Any) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        await store.create(bad)


async def test_list_filters(store: Any) -> None:
    images = store
    await images.create(Image("docker.io/library/a:1", D1, {"team": "x"}))
    await images.create(Image("docker.io/library/b:1", D2, {"team": "y"}))
    names = lambda imgs: [i.name for i in imgs]  # noqa: E731
    assert names(await images.list()) == ["docker.io/library/a:1", "docker.io/library/b:1"]
    assert names(await images.list(["labels.team==y"])) == ["docker.io/library/b:1"]
    assert names(await images.list([f"target.digest=={D1.digest}"])) == ["docker.io/library/a:1"]
    assert names(await images.list([f"target.mediatype=={oci.OCI_INDEX}", "name~=a:"])) == names(await images.list())
    assert names(await images.list(["name==nope"])) == []


async def test_namespaces_apart(store: Any) -> None:
    images = store
    await images.create(Image("n", D1))
    token = current_namespace.set("other")
    try:
        with pytest.raises(errdefs.NotFound):
            await images.get("n")
        await images.create(Image("n", D2))
        assert (await images.get("n")).target == D2
    finally:
        current_namespace.reset(token)
    assert (await images.get("n")).target == D1
    if hasattr(images, "namespaces_in_use"):
        assert images.namespaces_in_use(NS) == ["image n"]
