"""The CRI ImageService end to end: a grpcio client on the proxy's gRPC door
(``<state>/moorage.sock``) of a real suite (proxy, content, snapshots, transfer and the
ImageService), images from real docker-registry instances on loopback (plain, basic
auth, token auth). Pull by tag, without tag, by digest, with every kind of AuthConfig,
a 1 ms deadline, a missing image; status by name, tag, digest and ID; listing; removal
(every tag, idempotent, concurrent); image filesystem usage."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from moorage.api.k8s.cri.v1 import api_pb2 as api
from transfer import registry as regfix
from transfer.conftest import hosts_dir_for

from .testimages import TestImages, build_busybox, push_test_images

SERVICE = "/runtime.v1.ImageService/"
NS = "k8s.io"


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moorage-crii-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def plain(workdir: Path) -> Iterator[regfix.Registry]:
    with regfix.running(workdir / "reg-plain", "plain") as reg:
        yield reg


@pytest.fixture(scope="module")
def images(plain: regfix.Registry, workdir: Path) -> TestImages:
    return push_test_images(plain, workdir / "images")


@pytest.fixture(scope="module")
def busybox_layout(workdir: Path) -> Path:
    return build_busybox(workdir / "box-private")


@pytest.fixture(scope="module")
def suite(workdir: Path, images: TestImages) -> Iterator[Any]:
    suite_mod = pytest.importorskip("suite")
    s = suite_mod.Suite(workdir / "suite", config={"transfer": {"hosts_dir": str(workdir / "certs.d")},
                                                   "cri": {"enabled": False},  # its ImageService is ours alone
                                                   # not configured: they hold nothing, so the GC runs
                                                   **{n: {"enabled": False} for n in ("sandbox", "runtime", "nri")},
                                                   "cri-images": {"sandbox_image": images.pause}},
                        plugins=["cri.imageproc:PROCESS"])
    try:
        for name in ("proxy", "content", "snapshots", "transfer", "cri-images"):
            s.start(name)
        yield s
    finally:
        s.close()
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in reversed(mounts):
            if m.startswith(str(workdir)):
                subprocess.run(["umount", "-l", m], capture_output=True)


class Cri:
    """runtime.v1.ImageService over a grpc.aio channel (no generated grpc stubs needed)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    async def call(self, method: str, request: Any, response: Any, timeout: float | None = 60.0) -> Any:
        fn = self.channel.unary_unary(SERVICE + method, request_serializer=type(request).SerializeToString,
                                      response_deserializer=response.FromString)
        return await fn(request, timeout=timeout)

    async def pull(self, ref: str, auth: api.AuthConfig | None = None, timeout: float | None = 60.0) -> str:
        req = api.PullImageRequest(image=api.ImageSpec(image=ref))
        if auth is not None:
            req.auth.CopyFrom(auth)
        r = await self.call("PullImage", req, api.PullImageResponse, timeout)
        return str(r.image_ref)

    async def status(self, ref: str, verbose: bool = False) -> api.ImageStatusResponse:
        return await self.call("ImageStatus", api.ImageStatusRequest(image=api.ImageSpec(image=ref), verbose=verbose),
                               api.ImageStatusResponse)

    async def list(self, ref: str = "") -> list[api.Image]:
        req = api.ListImagesRequest()
        if ref:
            req.filter.image.image = ref
        return list((await self.call("ListImages", req, api.ListImagesResponse)).images)

    async def stream(self) -> list[api.StreamImagesResponse]:
        fn = self.channel.unary_stream(SERVICE + "StreamImages",
                                       request_serializer=api.StreamImagesRequest.SerializeToString,
                                       response_deserializer=api.StreamImagesResponse.FromString)
        return [r async for r in fn(api.StreamImagesRequest(), timeout=60)]

    async def remove(self, ref: str) -> None:
        await self.call("RemoveImage", api.RemoveImageRequest(image=api.ImageSpec(image=ref)), api.RemoveImageResponse)

    async def fs(self) -> api.ImageFsInfoResponse:
        return await self.call("ImageFsInfo", api.ImageFsInfoRequest(), api.ImageFsInfoResponse)


@pytest.fixture
async def client(suite: Any) -> AsyncIterator[Cri]:
    async with grpc.aio.insecure_channel(f"unix:{suite.state / 'moorage.sock'}") as ch:
        yield Cri(ch)


def _code(exc: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return exc.value.code()


# ---- pull and status -------------------------------------------------------------------------


@pytest.mark.root
async def test_pull_by_tag_then_status_by_name_tag_digest_and_id(client: Cri, images: TestImages,
                                                                  plain: regfix.Registry) -> None:
    image_id = await client.pull(images.busybox)
    assert image_id.startswith("sha256:") and len(image_id) == 71
    st = (await client.status(images.busybox)).image
    assert st.id == image_id
    assert st.repo_tags == [images.busybox]
    digest = regfix.skopeo_inspect(images.busybox, plain)["Digest"]
    repo_digest = f"{images.busybox.rsplit(':', 1)[0]}@{digest}"
    assert repo_digest in st.repo_digests
    raw = regfix.skopeo_inspect(images.busybox, plain, raw=True)
    manifest_len = len(json.dumps(raw, separators=(",", ":")))
    layers = int(raw["config"]["size"]) + sum(int(x["size"]) for x in raw["layers"])  # type: ignore[index, union-attr]
    assert layers < st.size <= layers + max(manifest_len * 2, 4096)
    assert st.spec.image == image_id
    for ref in (images.busybox.rsplit(":", 1)[0], repo_digest, image_id, image_id[7:], image_id[:19]):
        found = await client.status(ref)
        assert found.HasField("image"), ref
        assert found.image.id == image_id, ref


@pytest.mark.root
async def test_concurrent_pulls_of_one_image(client: Cri, plain: regfix.Registry, busybox_layout: Path) -> None:
    ref = regfix.push(busybox_layout, plain, "together/box", tag="t")
    others = [regfix.push(busybox_layout, plain, f"together/{n}", tag="t") for n in ("x", "y")]
    ids = await asyncio.gather(*(client.pull(r) for r in [ref, ref, ref, ref, *others]))
    assert len(set(ids)) == 1  # the same content under three names, pulled at once
    st = (await client.status(ref)).image
    assert st.id == ids[0] and set(st.repo_tags) == {ref, *others} and len(st.repo_digests) == 3


@pytest.mark.root
async def test_pull_without_tag_means_latest(client: Cri, images: TestImages) -> None:
    untagged = images.busybox.rsplit(":", 1)[0]
    image_id = await client.pull(untagged)
    st = (await client.status(untagged)).image
    assert st.id == image_id
    assert f"{untagged}:latest" in st.repo_tags


@pytest.mark.root
async def test_pull_by_digest(client: Cri, images: TestImages, plain: regfix.Registry) -> None:
    digest = regfix.skopeo_inspect(images.busybox_uid, plain)["Digest"]
    by_digest = f"{images.busybox_uid.rsplit(':', 1)[0]}@{digest}"
    image_id = await client.pull(by_digest)
    st = (await client.status(by_digest)).image
    assert st.id == image_id
    assert by_digest in st.repo_digests
    assert (await client.pull(images.busybox_uid)) == image_id  # the tag is the same image


@pytest.mark.root
async def test_user_from_image_config(client: Cri, images: TestImages) -> None:
    await client.pull(images.busybox_uid)
    await client.pull(images.busybox_user)
    await client.pull(images.pause)
    uid = (await client.status(images.busybox_uid)).image
    assert uid.HasField("uid") and uid.uid.value == 1000 and uid.username == ""
    named = (await client.status(images.busybox_user)).image
    assert not named.HasField("uid") and named.username == "nobody"
    pause = (await client.status(images.pause)).image
    assert pause.uid.value == 65535
    assert pause.pinned  # the sandbox image
    await client.pull(images.busybox)
    nobody = (await client.status(images.busybox)).image
    assert not nobody.HasField("uid") and nobody.username == "" and not nobody.pinned


@pytest.mark.root
async def test_verbose_status_names_the_unpacked_snapshot(client: Cri, images: TestImages, suite: Any) -> None:
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.snapshots.client import RemoteSnapshotter

    await client.pull(images.pause)
    st = await client.status(images.pause, verbose=True)
    info = json.loads(st.info["info"])
    assert info["imageSpec"]["config"]["Entrypoint"] == ["/pause"]
    chain = info["chainID"]
    conn = await connect(suite.address)
    token = current_namespace.set(NS)
    try:
        assert (await RemoteSnapshotter(conn, "overlayfs").stat(chain)).name == chain
    finally:
        current_namespace.reset(token)
        await conn.close()


@pytest.mark.root
async def test_absent_or_unparseable_image_has_nil_status(client: Cri, images: TestImages) -> None:
    for ref in (images.busybox.replace("busybox", "nothing-here"), "sha256:" + "0" * 64, "Not/A:Valid@@ref", ""):
        st = await client.status(ref)
        assert not st.HasField("image"), ref
    assert await client.list("sha256:" + "0" * 64) == []


@pytest.mark.root
async def test_pull_errors(client: Cri, images: TestImages) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await client.pull(images.busybox.replace("busybox:latest", "busybox:no-such-tag"))
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await client.pull(images.busybox.replace("busybox", "no-such-repo"))
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    for bad in ("", "UPPER/Case", "busybox:bad tag", "x@sha256:123"):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await client.pull(bad)
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT, bad


@pytest.mark.root
async def test_pull_with_1ms_deadline(client: Cri, images: TestImages) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await client.pull(images.busybox_user.replace(":user", ":never-pulled"), timeout=0.001)
    assert _code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED


# ---- listing and removal ---------------------------------------------------------------------


@pytest.mark.root
async def test_list_aggregates_tags_per_image_id(client: Cri, images: TestImages, plain: regfix.Registry,
                                                 busybox_layout: Path) -> None:
    first = regfix.push(busybox_layout, plain, "agg/one", tag="v1")
    second = regfix.push(busybox_layout, plain, "agg/two", tag="v2")
    id1 = await client.pull(first)
    id2 = await client.pull(second)
    assert id1 == id2
    listed = await client.list()
    assert len({i.id for i in listed}) == len(listed)
    entry = next(i for i in listed if i.id == id1)
    assert first in entry.repo_tags and second in entry.repo_tags
    assert {d.split("@")[0] for d in entry.repo_digests} >= {first.rsplit(":", 1)[0], second.rsplit(":", 1)[0]}
    assert [i.id for i in await client.list(second)] == [id1]
    streamed = [i for r in await client.stream() for i in r.images]
    assert [i.id for i in streamed] == sorted(i.id for i in listed)


@pytest.mark.root
async def test_remove_by_id_removes_every_tag(client: Cri, plain: regfix.Registry, busybox_layout: Path) -> None:
    a = regfix.push(busybox_layout, plain, "rm/a", tag="one")
    b = regfix.push(busybox_layout, plain, "rm/b", tag="two")
    image_id = await client.pull(a)
    assert await client.pull(b) == image_id
    await client.remove(image_id)
    for ref in (a, b, image_id):
        assert not (await client.status(ref)).HasField("image"), ref
    assert image_id not in {i.id for i in await client.list()}
    await client.remove(image_id)  # again: not an error
    await client.remove(a)
    await client.remove("never/pulled:at-all")
    await client.remove("Not A Ref")


@pytest.mark.root
async def test_remove_by_tag_removes_the_image(client: Cri, plain: regfix.Registry, busybox_layout: Path) -> None:
    a = regfix.push(busybox_layout, plain, "rmtag/a", tag="x")
    image_id = await client.pull(a)
    await client.remove(a)
    assert not (await client.status(image_id)).HasField("image")


@pytest.mark.root
async def test_concurrent_removals(client: Cri, plain: regfix.Registry, busybox_layout: Path) -> None:
    refs = [regfix.push(busybox_layout, plain, f"conc/{n}", tag="t") for n in ("a", "b", "c")]
    ids = {await client.pull(r) for r in refs}
    assert len(ids) == 1
    image_id = ids.pop()
    await asyncio.gather(*(client.remove(r) for r in [*refs, image_id, image_id, refs[0]]))
    assert image_id not in {i.id for i in await client.list()}
    for ref in refs:
        assert not (await client.status(ref)).HasField("image")


# ---- auth ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic(workdir: Path, busybox_layout: Path) -> Iterator[tuple[regfix.Registry, str]]:
    with regfix.running(workdir / "reg-basic", "basic") as reg:
        hosts_dir_for(reg, workdir)
        yield reg, regfix.push(busybox_layout, reg, "private/box", tag="basic")


@pytest.fixture(scope="module")
def token(workdir: Path, busybox_layout: Path) -> Iterator[tuple[regfix.Registry, str]]:
    with regfix.running(workdir / "reg-token", "token") as reg:
        hosts_dir_for(reg, workdir)
        ref = regfix.push(busybox_layout, reg, "private/box", tag="token")
        assert reg.token is not None
        reg.token.anonymous_pull = False
        yield reg, ref


@pytest.mark.root
async def test_pull_with_username_password_and_auth(client: Cri, basic: tuple[regfix.Registry, str]) -> None:
    reg, ref = basic
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await client.pull(ref)
    assert _code(exc) != grpc.StatusCode.OK
    with pytest.raises(grpc.aio.AioRpcError):
        await client.pull(ref, api.AuthConfig(username=regfix.USER, password="wrong"))
    with pytest.raises(grpc.aio.AioRpcError):  # credentials for another registry are not sent
        await client.pull(ref, api.AuthConfig(username=regfix.USER, password=regfix.PASSWORD,
                                              server_address="https://other.example.com"))
    image_id = await client.pull(ref, api.AuthConfig(username=regfix.USER, password=regfix.PASSWORD,
                                                     server_address=reg.host))
    await client.remove(image_id)
    encoded = base64.b64encode(f"{regfix.USER}:{regfix.PASSWORD}".encode()).decode()
    assert await client.pull(ref, api.AuthConfig(auth=encoded)) == image_id
    await client.remove(image_id)
    for bad in ("%%%not-base64", base64.b64encode(b"no-colon").decode()):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await client.pull(ref, api.AuthConfig(auth=bad))
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.root
async def test_pull_with_identity_and_registry_tokens(client: Cri, token: tuple[regfix.Registry, str]) -> None:
    reg, ref = token
    assert reg.token is not None
    with pytest.raises(grpc.aio.AioRpcError):
        await client.pull(ref)
    image_id = await client.pull(ref, api.AuthConfig(identity_token=regfix.REFRESH_TOKEN))
    assert "refresh" in reg.token.seen_auth
    await client.remove(image_id)
    bearer = reg.token.sign(regfix.USER, [{"type": "repository", "name": "private/box", "actions": ["pull"]}])
    assert await client.pull(ref, api.AuthConfig(registry_token=bearer)) == image_id


# ---- image filesystem ------------------------------------------------------------------------


@pytest.mark.root
async def test_image_fs_info(client: Cri, images: TestImages, suite: Any) -> None:
    await client.pull(images.busybox)
    info = await client.fs()
    assert len(info.image_filesystems) == 1
    fs = info.image_filesystems[0]
    assert fs.fs_id.mountpoint == str(suite.root / "snapshots" / "overlayfs")
    assert Path(fs.fs_id.mountpoint).is_dir()
    assert fs.used_bytes.value >= os.path.getsize("/bin/busybox")
    assert fs.inodes_used.value >= 2
    assert fs.timestamp > 0
    together = await asyncio.gather(*(client.fs() for _ in range(8)))
    assert all(t.image_filesystems[0].used_bytes.value > 0 for t in together)


@pytest.mark.root
async def test_removed_image_frees_its_layers(client: Cri, plain: regfix.Registry, workdir: Path) -> None:
    """kubelet's image GC: RemoveImage, then the collector frees the unpacked layers (the
    proxy's scheduler collects after deletions; waited on as a condition)."""
    layout = regfix.build_image(workdir / "unique", [{"var/unique": os.urandom(1 << 20)}])
    ref = regfix.push(layout, plain, "gc/unique")
    await client.pull(ref)
    before = (await client.fs()).image_filesystems[0].used_bytes.value
    await client.remove(ref)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        # a new measurement each time: calls in flight share one, so none is in flight here
        now = (await client.fs()).image_filesystems[0].used_bytes.value
        if now <= before - (1 << 20):
            break
        assert asyncio.get_running_loop().time() < deadline, f"still {now} bytes used (was {before})"
        await asyncio.sleep(0.2)


# ---- through the cri process ----------------------------------------------------------------


@pytest.mark.root
def test_through_the_cri_process(pods: Any) -> None:
    """The ImageService the real `cri` process builds from its [cri] config: critest's
    connection check, the sandbox image pulled by RunPodSandbox and pinned, the image
    filesystem under the suite's root."""
    fs = pods.img("ImageFsInfo", api.ImageFsInfoRequest()).image_filesystems[0]
    assert fs.fs_id.mountpoint == str(pods.suite.root / "snapshots" / "overlayfs")
    pods.img("RemoveImage", api.RemoveImageRequest(image=api.ImageSpec(image=pods.images.pause)))
    assert not pods.img("ImageStatus", api.ImageStatusRequest(image=api.ImageSpec(image=pods.images.pause))).HasField(
        "image")
    pods.run_pod("pinned")
    st = pods.img("ImageStatus", api.ImageStatusRequest(image=api.ImageSpec(image=pods.images.pause))).image
    assert st.pinned and st.uid.value == 65535
    listed = pods.img("ListImages", api.ListImagesRequest()).images
    assert {i.id for i in listed} >= {st.id}


# ---- no root -----------------------------------------------------------------------------------


def test_grpc_door_knows_the_cri_services() -> None:
    from moorage.proxy.grpc_front import MethodTable

    table = MethodTable()
    assert table.lookup("runtime.v1.ImageService", "PullImage") == (False, False)
    assert table.lookup("runtime.v1.RuntimeService", "GetContainerEvents") == (False, True)
    assert table.lookup("containerd.services.content.v1.Content", "Write") == (True, True)
    assert table.lookup("runtime.v1.ImageService", "Nope") == "unknown method Nope for service runtime.v1.ImageService"


def test_auth_config_decoding() -> None:
    from moorage import errdefs
    from moorage.services.cri.images import RegistryAuth

    assert RegistryAuth().credentials() is None
    assert RegistryAuth(username="u", password="p").credentials() == ("credentials", "u", "p")
    assert RegistryAuth(auth=base64.b64encode(b"u:p:q\x00").decode()).credentials() == ("credentials", "u", "p:q")
    assert RegistryAuth(identity_token="t").credentials() == ("refresh", "", "t")
    assert RegistryAuth(registry_token="r").credentials() == ("header", "", "Bearer r")
    with pytest.raises(errdefs.InvalidArgument):
        RegistryAuth(auth="!!").credentials()
    assert RegistryAuth(server_address="https://index.docker.io/v1/").applies_to("registry-1.docker.io")
    assert RegistryAuth(server_address="127.0.0.1:5000").applies_to("127.0.0.1:5000")
    assert not RegistryAuth(server_address="127.0.0.1:5001").applies_to("127.0.0.1:5000")
    assert "secret" not in repr(RegistryAuth(password="secret"))


def test_references_users_and_record_names() -> None:
    from moorage import errdefs
    from moorage.services.cri.images import _tag_or_digest, normalise, user_of

    assert str(normalise("busybox")) == "docker.io/library/busybox:latest"
    assert str(normalise("127.0.0.1:5000/a/b")) == "127.0.0.1:5000/a/b:latest"
    pinned = "busybox:1.36@sha256:" + "a" * 64
    assert str(normalise(pinned)) == "docker.io/library/busybox@sha256:" + "a" * 64
    with pytest.raises(errdefs.InvalidArgument):
        normalise("UPPER")
    assert user_of({"config": {"User": "1000:50"}}) == (1000, "")
    assert user_of({"config": {"User": "www-data:www-data"}}) == (None, "www-data")
    assert user_of({"config": {"User": ""}}) == (None, "")
    assert user_of({"config": {}}) == (None, "")
    assert user_of({"config": {"User": 5}}) == (None, "")
    assert _tag_or_digest("sha256:" + "b" * 64) == ("", "")
    assert _tag_or_digest("docker.io/library/busybox:latest") == ("tag", "docker.io/library/busybox:latest")
    digest_ref = "docker.io/library/busybox@sha256:" + "c" * 64
    assert _tag_or_digest(digest_ref) == ("digest", digest_ref)
    assert _tag_or_digest("not a reference") == ("", "")
