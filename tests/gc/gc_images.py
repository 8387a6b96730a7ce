"""OCI archives of small images that share layers, and their import into a suite.

``build(dst, name, layers)`` writes an OCI layout tar whose image has one gzip layer per entry
of ``layers`` (file name -> bytes, each layer a tar of those files; files under ``bin/`` are
executable); two images built with the
same first entry share that blob and its snapshot. ``import_image`` imports it through the
transfer service with an overlayfs unpack (as ``moor import``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Built:
    path: Path
    name: str
    layers: list[str]
    config: str
    manifest: str
    chain: list[str]

    @property
    def blobs(self) -> set[str]:
        return {*self.layers, self.config, self.manifest}


def _tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(dst: Path, name: str, layers: Sequence[Mapping[str, bytes]]) -> Built:
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> str:
        d = _sha(data)
        blobs[d] = data
        return d

    descs, diff_ids = [], []
    for files in layers:
        raw = _tar(files)
        gz = gzip.compress(raw, mtime=0)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": add(gz), "size": len(gz)})
        diff_ids.append(_sha(raw))
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"], "Labels": {"name": name}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    config_d = add(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": len(config)},
        "layers": descs,
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
    chain = [diff_ids[0]]
    for diff in diff_ids[1:]:
        chain.append(_sha(f"{chain[-1]} {diff}".encode()))
    return Built(dst, name, [d["digest"] for d in descs], config_d, manifest_d, chain)


async def import_image(address: str, built: Built, namespace: str = "default") -> None:
    from moorage.api.containerd.types import platform_pb2
    from moorage.api.containerd.types.transfer import imagestore_pb2, importexport_pb2
    from moorage.namespaces import current_namespace
    from moorage.rpc import connect
    from moorage.services.transfer.client import TransferClient

    token = current_namespace.set(namespace)
    conn = await connect(address)
    try:
        async def data() -> AsyncIterator[bytes]:
            yield built.path.read_bytes()

        dst = imagestore_pb2.ImageStore(name=built.name, unpacks=[imagestore_pb2.UnpackConfiguration(
            platform=platform_pb2.Platform(os="linux", architecture="amd64"), snapshotter="overlayfs")])
        await TransferClient(conn).transfer(importexport_pb2.ImageImportStream(), dst, data=data())
    finally:
        await conn.close()
        current_namespace.reset(token)


def blob_bytes(built: Built) -> dict[str, bytes]:
    """digest -> bytes of every blob of a built image (read back from its archive)."""
    out: dict[str, bytes] = {}
    with tarfile.open(built.path) as tf:
        for member in tf.getmembers():
            if member.name.startswith("blobs/sha256/"):
                f = tf.extractfile(member)
                assert f is not None
                out["sha256:" + member.name.rsplit("/", 1)[1]] = f.read()
    return out
