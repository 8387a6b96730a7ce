"""What `moor run` needs from an image, over a blocking client: config and chain id.

Image record (images.v1 Get) → manifest (through an index, for the host's platform) →
config (content.v1 Read) → the process config and the chain id the rootfs snapshot is
prepared on. Bounded reads; the documents are untrusted (parsed by transfer's oci module).
No asyncio here: the CLI imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from moorage.errdefs import InvalidArgument, NotFound

from .spec import ImageConfig

IMAGES = "containerd.services.images.v1.Images"
CONTENT = "containerd.services.content.v1.Content"
MAX_DOC = 4 << 20


@dataclass(frozen=True)
class ResolvedImage:
    name: str
    config: ImageConfig
    chain_id: str
    labels: dict[str, str]


def normalize(ref: str) -> str:
    from moorage.services.transfer.reference import parse  # type: ignore[import-not-found, unused-ignore]

    return str(parse(ref))


def read_blob(client: Any, md: dict[str, str], digest: str, timeout: float | None) -> bytes:
    from moorage.api.containerd.services.content.v1 import content_pb2 as cpb

    out = bytearray()
    for r in client.server_stream(CONTENT, "Read", cpb.ReadContentRequest(digest=digest),
                                  cpb.ReadContentResponse, timeout=timeout, metadata=md):
        out += r.data
        if len(out) > MAX_DOC:
            raise InvalidArgument(f"image document {digest} is larger than {MAX_DOC} bytes")
    return bytes(out)


def resolve(client: Any, md: dict[str, str], ref: str, timeout: float | None) -> ResolvedImage:
    from moorage.api.containerd.services.images.v1 import images_pb2 as ipb
    from moorage.services.transfer import oci  # type: ignore[import-not-found, unused-ignore]

    name = normalize(ref)
    try:
        img = client.unary(IMAGES, "Get", ipb.GetImageRequest(name=name), ipb.GetImageResponse,
                           timeout=timeout, metadata=md).image
    except NotFound:
        raise NotFound(f"image {name!r} not found: pull it first (moor pull {ref})") from None
    desc_type, digest = img.target.media_type, img.target.digest
    for _ in range(4):
        data = read_blob(client, md, digest, timeout)
        doc = oci.parse_document(data, desc_type)
        if isinstance(doc, oci.Index):
            found = oci.select_manifests(doc, [oci.host_platform()])
            if not found:
                raise NotFound(f"image {name!r} has no manifest for {oci.host_platform()}")
            desc_type, digest = found[0].media_type, found[0].digest
            continue
        config_data = read_blob(client, md, doc.config.digest, timeout)
        cfg = oci.parse_config(config_data)
        chain = oci.chain_ids(cfg.diff_ids)
        if not chain:
            raise InvalidArgument(f"image {name!r} has no layers")
        return ResolvedImage(name, ImageConfig.from_json(json.loads(config_data)), chain[-1],
                             dict(img.labels))
    raise InvalidArgument(f"image {name!r}: index nesting too deep")
