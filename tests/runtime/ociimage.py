"""A busybox OCI image built from busybox-static (no network), and its import into a suite.

`build_archive(dst)` writes an OCI layout tar: one gzip layer (the rootfs of conftest's
make_rootfs), a config with Cmd ["sh"], an index naming it docker.io/library/busybox:latest.
`import_image(address, archive)` imports it through the transfer service with an overlayfs
unpack (what `moor import` / `ctr images import` do). Also used by bench/run.py.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

NAME = "docker.io/library/busybox:latest"


def _tar_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(root.rglob("*")):
            info = tf.gettarinfo(str(p), arcname=str(p.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(p, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    return buf.getvalue()


def build_archive(dst: Path, name: str = NAME) -> Path:
    from .conftest import make_rootfs

    with tempfile.TemporaryDirectory() as tmp:
        layer_tar = _tar_dir(make_rootfs(Path(tmp) / "rootfs"))
    layer = gzip.compress(layer_tar, mtime=0)
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return d

    layer_d = add(layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["sh"]},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }).encode()
    config_d = add(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_d, "size": len(layer)}],
    }).encode()
    manifest_d = add(manifest)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_d,
        "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}).encode()
    with tarfile.open(dst, "w") as tf:
        def put(arc: str, data: bytes) -> None:
            info = tarfile.TarInfo(arc)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", index)
        for d, data in blobs.items():
            put(f"blobs/sha256/{d[7:]}", data)
    return dst


async def _import(address: str, archive: Path, namespace: str, name: str) -> None:
    from moorage.api.containerd.types import platform_pb2
    from moorage.api.containerd.types.transfer import imagestore_pb2, importexport_pb2
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.transfer.client import TransferClient

    token = current_namespace.set(namespace)
    conn = await connect(address)
    try:
        async def data() -> AsyncIterator[bytes]:
            with open(archive, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        dst = imagestore_pb2.ImageStore(name=name, unpacks=[imagestore_pb2.UnpackConfiguration(
            platform=platform_pb2.Platform(os="linux", architecture="amd64"),
            snapshotter="overlayfs")])
        await TransferClient(conn).transfer(importexport_pb2.ImageImportStream(), dst, data=data())
    finally:
        await conn.close()
        current_namespace.reset(token)


def import_image(address: str, archive: Path, namespace: str = "default", name: str = NAME) -> None:
    asyncio.run(_import(address, archive, namespace, name))
