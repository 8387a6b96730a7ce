"""What `moor run` needs from an image, over a blocking client: config and chain id.

Image record (images.v1 Get) → manifest (through an index, for the host's platform) →
config (content.v1 Read) → the process config and the chain id the rootfs snapshot is
prepared on. The documents are untrusted: reads are bounded, digests are checked before
use, types are checked. Light imports only (no json package, re or typing; messages
through moorage.cli.wire, not protobuf): the CLI imports this.
"""

from __future__ import annotations

import os

from moorage.cli.wire import Fields, Msg
from moorage.errdefs import InvalidArgument, NotFound
from moorage.jsoncodec import loads
from ttrpc.lighttyping import NamedTuple

from .spec import ImageConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

IMAGES = "containerd.services.images.v1.Images"
CONTENT = "containerd.services.content.v1.Content"
MAX_DOC = 4 << 20
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


class ResolvedImage(NamedTuple):
    name: str
    config: ImageConfig
    chain_id: str
    labels: dict[str, str]


def is_digest(text: str) -> bool:
    """``sha256:`` and 64 lower-case hex digits (``^sha256:[0-9a-f]{64}$``, no newline)."""
    return len(text) == 71 and text.startswith("sha256:") and not text[7:].strip("0123456789abcdef")


def normalize(ref: str) -> str:
    """docker's normalisation: `busybox` → `docker.io/library/busybox:latest`."""
    if not ref or any(c.isspace() for c in ref) or "\0" in ref:
        raise InvalidArgument(f"invalid reference {ref!r}")
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        host, path = "docker.io", name
    else:
        host, path = first, rest
    if host == "docker.io" and "/" not in path.split(":")[0]:
        path = "library/" + path
    last = path.rsplit("/", 1)[-1]
    if ":" not in last and not at:
        path += ":latest"
    if at and not is_digest(digest):
        raise InvalidArgument(f"invalid digest in reference {ref!r}")
    return f"{host}/{path}" + (f"@{digest}" if at else "")


def host_arch() -> str:
    m = os.uname().machine
    return _ARCH.get(m, m)


def read_blob(client: Any, md: dict[str, str], digest: str, timeout: float | None,
              cache: str | None = None) -> bytes:
    """The document ``digest`` names, checked against it. With ``cache`` (a folder), a copy
    kept there by an earlier read is used instead of a Content.Read round trip through the
    proxy, and a document read is kept there. The copy is checked against its digest like
    the server's reply, so the folder needs no trust: a changed or broken copy is only
    read again from the server."""
    if not is_digest(digest):
        raise InvalidArgument(f"invalid digest {digest!r}")
    kept = os.path.join(cache, digest[len("sha256:"):]) if cache else ""
    if kept:
        try:
            with open(kept, "rb") as f:
                data = f.read(MAX_DOC + 1)
            if len(data) <= MAX_DOC and "sha256:" + _sha256(data) == digest:
                return data
        except OSError:
            pass
    out = bytearray()
    # ReadContentRequest{digest=1} -> stream of ReadContentResponse{offset=1, data=2}
    for r in client.server_stream(CONTENT, "Read", Msg({1: digest}), Fields, timeout=timeout,
                                  metadata=md):
        out += r.blob(2)
        if len(out) > MAX_DOC:
            raise InvalidArgument(f"image document {digest} is larger than {MAX_DOC} bytes")
    data = bytes(out)
    if "sha256:" + _sha256(data) != digest:
        raise InvalidArgument(f"image document {digest}: digest mismatch")
    if kept:
        _keep(kept, data)
    return data


def _keep(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (its folder made 0700); best effort."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _sha256(data: bytes) -> str:
    """Hex sha256 without hashlib where CPython has its own module: importing hashlib loads
    OpenSSL and a module per algorithm (several ms of every `moor run`), for a few small
    documents."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # <= 3.11
    except ImportError:
        from hashlib import sha256
    return sha256(data).hexdigest()  # type: ignore[no-any-return,unused-ignore]


def _doc(data: bytes, what: str) -> Mapping[str, Any]:
    try:
        doc = loads(data)
    except ValueError:
        raise InvalidArgument(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not an object")
    return doc


def _desc(obj: Any, what: str) -> tuple[str, str]:
    if not isinstance(obj, dict) or not isinstance(obj.get("digest"), str):
        raise InvalidArgument(f"{what}: bad descriptor")
    return str(obj.get("mediaType", "")), obj["digest"]


def chain_id(diff_ids: list[str]) -> str:
    chain = ""
    for d in diff_ids:
        if not isinstance(d, str) or not is_digest(d):
            raise InvalidArgument(f"image config: invalid diff id {d!r}")
        chain = d if not chain else "sha256:" + _sha256(f"{chain} {d}".encode())
    return chain


def resolve(client: Any, md: dict[str, str], ref: str, timeout: float | None,
            cache: str | None = None) -> ResolvedImage:
    """The image's config and chain id. The record (images.v1 Get) is always asked for;
    ``cache``: see :func:`read_blob` (the index, manifest and config are content-addressed)."""
    name = normalize(ref)
    try:
        # GetImageRequest{name=1} -> GetImageResponse{image=1 Image{labels=2, target=3}}
        img = client.unary(IMAGES, "Get", Msg({1: name}), Fields, timeout=timeout,
                           metadata=md).msg(1)
    except NotFound:
        raise NotFound(f"image {name!r} not found: pull it first (moor pull {ref})") from None
    target = img.msg(3)  # Descriptor{media_type=1, digest=2}
    mt, digest = target.text(1), target.text(2)
    for _ in range(4):
        doc = _doc(read_blob(client, md, digest, timeout, cache), f"image {name}: {digest}")
        if "manifests" in doc and ("layers" in doc or "config" in doc):
            raise InvalidArgument(f"image {name}: ambiguous document {digest}")
        if "manifests" in doc or mt in INDEX_TYPES:
            want = ("linux", host_arch())
            chosen = None
            for m in doc.get("manifests") or []:
                p = m.get("platform") if isinstance(m, dict) else None
                if isinstance(p, dict) and (p.get("os"), p.get("architecture")) == want:
                    chosen = m
                    break
            if chosen is None:
                raise NotFound(f"image {name!r} has no manifest for linux/{host_arch()}")
            mt, digest = _desc(chosen, f"image {name} index")
            continue
        cmt, cdigest = _desc(doc.get("config"), f"image {name} manifest config")
        raw = read_blob(client, md, cdigest, timeout, cache)
        cfg = _doc(raw, f"image {name} config")
        rootfs = cfg.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not diff_ids:
            raise InvalidArgument(f"image {name!r}: config has no rootfs.diff_ids")
        return ResolvedImage(name, ImageConfig.from_json(cfg), chain_id(diff_ids),
                             img.pairs(2))
    raise InvalidArgument(f"image {name!r}: index nesting too deep")
