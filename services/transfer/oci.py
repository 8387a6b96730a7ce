"""OCI and Docker image documents: media types, descriptors, digests, platforms.

Everything here treats its input as untrusted: `validate_digest` runs before a digest is
used in any path or URL; `parse_manifest` / `parse_index` refuse ambiguous documents (both
`manifests` and `layers`/`config`, CVE-2021-41190), a `mediaType` field that disagrees with
the type the document was fetched as, schema 1, and malformed fields (typed errors, never a
crash).
"""

from __future__ import annotations

import os

from moorage import errdefs, jsoncodec

TYPE_CHECKING = False
if TYPE_CHECKING:
    import hashlib
    from collections.abc import Mapping, Sequence
    from dataclasses import dataclass, field
    from typing import Any
else:  # `moor images ls` sizes images with this module: nothing costly to import (moorage/frozen.py)
    from moorage.frozen import dataclass, field

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYOUT = "oci-layout"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER, DOCKER_LAYER_GZIP,
                         DOCKER_FOREIGN_LAYER, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                         "application/vnd.oci.image.layer.nondistributable.v1.tar"})
ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, "*/*;q=0.8"])

MAX_MANIFEST_SIZE = 4 * 1048 * 1048  # containerd's MaxManifestSize, literally
MAX_JSON_SIZE = 20 << 20  # configs and archive JSON (containerd's importer cap)

_DIGEST_HEX = {"sha256": 64, "sha512": 128}  # lower hex digits: without re (~14 ms to import)


def validate_digest(d: object) -> str:
    """Return `d` if it is `sha256:<64 lower hex>` or `sha512:<128 lower hex>`, else InvalidArgument."""
    if not isinstance(d, str):
        raise errdefs.InvalidArgument("invalid digest: not a string")
    alg, sep, hexpart = d.partition(":")
    if not sep or len(hexpart) != _DIGEST_HEX.get(alg) or hexpart.strip("0123456789abcdef"):
        raise errdefs.InvalidArgument(f"invalid digest {d[:80]!r}")
    return d


def digest_of(data: bytes, alg: str = "sha256") -> str:
    import hashlib  # on use: its OpenSSL binding is ~5 ms of `moor images ls`

    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def hasher(d: str) -> hashlib._Hash:
    import hashlib

    return hashlib.new(validate_digest(d).partition(":")[0])


def verify_bytes(data: bytes, desc: Descriptor) -> None:
    """DataLoss unless `data` is exactly what `desc` names (size, then digest)."""
    if len(data) != desc.size:
        raise errdefs.DataLoss(f"{desc.digest}: size {len(data)} does not match descriptor size {desc.size}")
    import hashlib

    got = hashlib.new(desc.digest.partition(":")[0], data).hexdigest()
    if desc.digest.partition(":")[2] != got:
        raise errdefs.DataLoss(f"{desc.digest}: content digest does not match (got {desc.digest.partition(':')[0]}:{got})")


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def _norm_arch(arch: str, variant: str) -> tuple[str, str]:
    arch = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
            "armel": "arm", "i386": "386", "i686": "386"}.get(arch.lower(), arch.lower())
    if arch == "arm64" and variant in ("", "v8"):
        variant = ""
    if arch == "amd64" and variant == "v1":
        variant = ""
    if arch == "arm" and variant == "":
        variant = "v7"
    return arch, variant


def parse_platform(s: str) -> Platform:
    """`linux`, `linux/amd64`, `linux/arm/v7`, `amd64` (-> host os)."""
    parts = s.strip().split("/")
    if not s.strip() or len(parts) > 3 or any(not p for p in parts):
        raise errdefs.InvalidArgument(f"invalid platform {s!r}")
    if len(parts) == 1:
        if parts[0].lower() in ("linux", "windows", "darwin", "freebsd"):
            return normalize(Platform(parts[0].lower(), host_platform().architecture, host_platform().variant))
        return normalize(Platform("linux", parts[0]))
    return normalize(Platform(parts[0].lower(), parts[1], parts[2] if len(parts) == 3 else ""))


def normalize(p: Platform) -> Platform:
    arch, variant = _norm_arch(p.architecture, p.variant)
    return Platform(p.os.lower(), arch, variant, p.os_version)


def host_platform() -> Platform:
    arch, variant = _norm_arch(os.uname().machine, "")  # platform.machine() on Linux, without re
    return Platform("linux", arch, variant)


def platform_matches(want: Platform, have: Platform) -> bool:
    """containerd's default matcher: same os, arch; variant equal, or compatible arm fallbacks."""
    w, h = normalize(want), normalize(have)
    if w.os != h.os or w.architecture != h.architecture:
        return False
    if w.variant == h.variant:
        return True
    if w.architecture == "arm" and w.variant and h.variant:
        order = ["v5", "v6", "v7", "v8"]
        if w.variant in order and h.variant in order:
            return order.index(h.variant) <= order.index(w.variant)
    return False


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.urls:
            d["urls"] = list(self.urls)
        if self.platform:
            p: dict[str, Any] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            if self.platform.os_version:
                p["os.version"] = self.platform.os_version
            d["platform"] = p
        return d


def _str(obj: Mapping[str, Any], key: str, required: bool = True) -> str:
    v = obj.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise errdefs.InvalidArgument(f"invalid document: {key} must be a string")
    return v


def parse_descriptor(obj: object) -> Descriptor:
    if not isinstance(obj, dict):
        raise errdefs.InvalidArgument("invalid descriptor: not an object")
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > 1 << 50:
        raise errdefs.InvalidArgument("invalid descriptor: bad size")
    ann = obj.get("annotations") or {}
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise errdefs.InvalidArgument("invalid descriptor: bad annotations")
    plat = None
    if obj.get("platform") is not None:
        p = obj["platform"]
        if not isinstance(p, dict):
            raise errdefs.InvalidArgument("invalid descriptor: bad platform")
        plat = Platform(_str(p, "os"), _str(p, "architecture"), _str(p, "variant", False),
                        _str(p, "os.version", False))
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise errdefs.InvalidArgument("invalid descriptor: bad urls")
    return Descriptor(_str(obj, "mediaType"), validate_digest(obj.get("digest")), size, ann, plat, tuple(urls))


def load_json(data: bytes, limit: int = MAX_JSON_SIZE) -> dict[str, Any]:
    if len(data) > limit:
        raise errdefs.ResourceExhausted(f"document of {len(data)} bytes exceeds the {limit} byte limit")
    try:
        obj = jsoncodec.loads(data)
    except (ValueError, RecursionError) as e:
        raise errdefs.InvalidArgument(f"invalid JSON document: {str(e)[:100]}") from None
    if not isinstance(obj, dict):
        raise errdefs.InvalidArgument("invalid document: not a JSON object")
    return obj


def detect_type(obj: Mapping[str, Any], declared: str = "") -> str:
    """The one media type `obj` can be, checked against `declared` (Content-Type or the
    descriptor's type); refuses ambiguity, mismatch and schema 1."""
    mt = obj.get("mediaType")
    if mt is not None and not isinstance(mt, str):
        raise errdefs.InvalidArgument("invalid document: mediaType must be a string")
    if obj.get("schemaVersion") == 1 or declared in DOCKER_SCHEMA1 or mt in DOCKER_SCHEMA1:
        raise errdefs.NotImplemented("docker schema 1 manifests are not supported")
    has_index = "manifests" in obj
    has_manifest = "layers" in obj or "config" in obj
    if has_index and has_manifest:
        raise errdefs.InvalidArgument("ambiguous document: has both manifests and layers/config")
    if not has_index and not has_manifest:
        raise errdefs.InvalidArgument("document is neither a manifest nor an index")
    kind = INDEX_TYPES if has_index else MANIFEST_TYPES
    if mt and mt not in kind:
        raise errdefs.InvalidArgument(f"mediaType {mt!r} does not match the document's fields")
    base = declared.split(";")[0].strip()
    if mt and base and base not in ("application/json", "text/plain", "application/octet-stream") and mt != base:
        raise errdefs.InvalidArgument(f"mediaType {mt!r} does not match declared type {base!r}")
    if base in INDEX_TYPES | MANIFEST_TYPES and base not in kind:
        raise errdefs.InvalidArgument(f"document fields do not match declared type {base!r}")
    if mt:
        return mt
    if base in kind:
        return base
    return OCI_INDEX if has_index else OCI_MANIFEST


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


def _list(obj: Mapping[str, Any], key: str, limit: int = 100_000) -> list[Any]:
    v = obj.get(key)
    if not isinstance(v, list):
        raise errdefs.InvalidArgument(f"invalid document: {key} must be a list")
    if len(v) > limit:
        raise errdefs.ResourceExhausted(f"invalid document: more than {limit} {key}")
    return v


def parse_document(data: bytes, declared: str = "") -> Manifest | Index:
    obj = load_json(data, MAX_MANIFEST_SIZE)
    mt = detect_type(obj, declared)
    ann = obj.get("annotations") or {}
    if not isinstance(ann, dict):
        raise errdefs.InvalidArgument("invalid document: bad annotations")
    if mt in INDEX_TYPES:
        return Index(mt, tuple(parse_descriptor(d) for d in _list(obj, "manifests")), ann)
    layers = tuple(parse_descriptor(d) for d in _list(obj, "layers", 10_000))
    return Manifest(mt, parse_descriptor(obj.get("config")), layers, ann)


def is_index(mt: str) -> bool:
    return mt in INDEX_TYPES


def is_manifest(mt: str) -> bool:
    return mt in MANIFEST_TYPES


def is_layer(mt: str) -> bool:
    return mt in LAYER_TYPES or mt.startswith("application/vnd.oci.image.layer.")


def select_manifests(index: Index, platforms: Sequence[Platform] | None) -> list[Descriptor]:
    """Manifests of `index` matching any of `platforms` (None = all); attestation manifests
    (`unknown/unknown`) are dropped when filtering."""
    out = []
    for d in index.manifests:
        if platforms is None:
            out.append(d)
        elif d.platform is not None and any(platform_matches(p, d.platform) for p in platforms):
            out.append(d)
        elif d.platform is None and is_index(d.media_type):
            out.append(d)
    if platforms is not None:
        # best match first: exact variant before compatible ones, then index order
        out.sort(key=lambda d: 0 if d.platform and any(normalize(d.platform) == normalize(p) for p in platforms) else 1)
    return out


@dataclass(frozen=True)
class ImageConfig:
    diff_ids: tuple[str, ...]
    platform: Platform


def parse_config(data: bytes) -> ImageConfig:
    obj = load_json(data)
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict):
        raise errdefs.InvalidArgument("image config: missing rootfs")
    ids = rootfs.get("diff_ids")
    if not isinstance(ids, list):
        raise errdefs.InvalidArgument("image config: rootfs.diff_ids must be a list")
    return ImageConfig(tuple(validate_digest(d) for d in ids),
                       Platform(str(obj.get("os") or ""), str(obj.get("architecture") or ""),
                                str(obj.get("variant") or "")))


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    import hashlib

    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out
