"""Image archives: import an OCI layout tar or a `docker save` tar, export an OCI archive.

Import reads the archive once, entry by entry (`tarstream.TarReader`): `blobs/<alg>/<hex>`
stream into the content store with their expected digest (the store's commit verifies);
the JSON files (`index.json`, `oci-layout`, `manifest.json`, `repositories`) are read with
a 20 MiB cap; other docker-save files (`<id>/layer.tar`, `<id>.json`) are stored under the
digest computed while writing. Afterwards the documents are parsed (same rules as pulled
ones: ambiguity, schema 1, malformed fields refused), every referenced blob must be
present, docker-save layers must match the config's diff ids, and image records are
created last. Nothing is stored that was not verified.

Export writes an OCI image layout as a tar stream: `oci-layout`, the blobs of each image
(index children filtered by platform), `index.json` naming each image with
`io.containerd.image.name` and `org.opencontainers.image.ref.name`, and a docker
`manifest.json` for single-manifest images (readable by `docker load`).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from moorage import errdefs

from . import oci
from .blobs import GC_REF, Progress, add_labels, has_blob, read_blob, store_image, write_bytes
from .contract import ContentStore, Image, ImageStore
from .oci import Descriptor, Platform
from .reference import parse as parse_ref
from .tarstream import TarReader, tar_end, tar_header, tar_padding

NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
JSON_FILES = ("index.json", "oci-layout", "manifest.json", "repositories")


@dataclass
class ImportOptions:
    name: str = ""  # base name for images named only by a tag (or unnamed)
    labels: Mapping[str, str] = field(default_factory=dict)
    platforms: Sequence[Platform] | None = None


def _clean(name: str) -> str:
    n = name
    while n.startswith("./"):
        n = n[2:]
    return n.lstrip("/") if not n.startswith("../") else n


async def _store_stream(content: ContentStore, ref: str, reader: TarReader, size: int,
                        expected: str = "") -> tuple[str, bool]:
    """Write the current entry into content; returns (digest, written)."""
    try:
        w = await content.writer(ref, size, expected)
    except errdefs.AlreadyExists:
        return expected, False
    ok = False
    try:
        await w.truncate(0)
        async for chunk in reader.chunks():
            await w.write(chunk)
        try:
            d = await w.commit(size, expected, {})
        except errdefs.AlreadyExists:
            d = expected
        ok = True
        return d, True
    finally:
        if not ok:
            await w.close()
            try:
                await content.abort(ref)
            except errdefs.Error:
                pass


async def import_archive(source: AsyncIterator[bytes], content: ContentStore, images: ImageStore,
                         opts: ImportOptions | None = None, progress_fn: object = None) -> list[Image]:
    opts = opts or ImportOptions()
    progress = Progress(progress_fn)  # type: ignore[arg-type]
    reader = TarReader(source)
    docs: dict[str, bytes] = {}
    files: dict[str, Descriptor] = {}  # docker-save paths -> stored blob
    blobs: set[str] = set()
    while (entry := await reader.next()) is not None:
        name = _clean(entry.name)
        if entry.type not in ("0", "7"):
            continue
        if ".." in name.split("/"):
            raise errdefs.InvalidArgument(f"invalid archive: entry name {name[:100]!r}")
        if name in JSON_FILES:
            docs[name] = await reader.read(oci.MAX_JSON_SIZE)
            continue
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs":
            d = oci.validate_digest(f"{parts[1]}:{parts[2]}")
            await progress.emit("importing", d, 0, entry.size)
            got, _ = await _store_stream(content, f"import-{d}", reader, entry.size, d)
            blobs.add(got)
            continue
        if name.endswith(".tar") or name.endswith(".json"):
            got, _ = await _store_stream(content, f"import-{os.urandom(8).hex()}", reader, entry.size)
            files[name] = Descriptor("application/octet-stream", got, entry.size)
            blobs.add(got)
    if "index.json" in docs:
        return await _import_oci(docs, content, images, opts, progress)
    if "manifest.json" in docs:
        return await _import_docker(docs, files, content, images, opts, progress)
    raise errdefs.InvalidArgument("invalid archive: neither index.json nor manifest.json found")


async def _check_tree(content: ContentStore, desc: Descriptor, platforms: Sequence[Platform] | None,
                      depth: int = 0) -> None:
    """Every blob the document references is present (verified at its commit) and labelled."""
    if depth > 4:
        raise errdefs.InvalidArgument("index nesting too deep")
    if not await has_blob(content, desc.digest):
        raise errdefs.NotFound(f"invalid archive: missing blob {desc.digest}")
    if not (oci.is_index(desc.media_type) or oci.is_manifest(desc.media_type)):
        return
    data = await read_blob(content, desc, oci.MAX_MANIFEST_SIZE)
    doc = oci.parse_document(data, desc.media_type)
    if isinstance(doc, oci.Index):
        children = oci.select_manifests(doc, platforms)
        present = []
        for c in children:
            if await has_blob(content, c.digest):
                await _check_tree(content, c, platforms, depth + 1)
                present.append(c)
        if not present:
            raise errdefs.NotFound(f"invalid archive: no manifest of {desc.digest} is in the archive")
        await add_labels(content, desc.digest, {f"{GC_REF}.m.{i}": c.digest for i, c in enumerate(present)})
        return
    labels = {f"{GC_REF}.config": doc.config.digest}
    for i, layer in enumerate(doc.layers):
        labels[f"{GC_REF}.l.{i}"] = layer.digest
    for d in (doc.config, *doc.layers):
        if not await has_blob(content, d.digest):
            raise errdefs.NotFound(f"invalid archive: missing blob {d.digest}")
        if (await content.info(d.digest)).size != d.size:
            raise errdefs.DataLoss(f"invalid archive: {d.digest} size does not match its descriptor")
    cfg = oci.parse_config(await read_blob(content, doc.config, oci.MAX_JSON_SIZE))
    if len(cfg.diff_ids) != len(doc.layers):
        raise errdefs.InvalidArgument(f"{desc.digest}: {len(doc.layers)} layers but {len(cfg.diff_ids)} diff ids")
    await add_labels(content, desc.digest, labels)


def _image_name(ann: Mapping[str, str], base: str) -> str:
    full = ann.get(NAME_ANNOTATION, "")
    if full:
        return full
    ref = ann.get(REF_ANNOTATION, "")
    if ref and ("/" in ref or "." in ref.split(":")[0]) and not ref.startswith(":"):
        try:
            return str(parse_ref(ref))
        except errdefs.InvalidArgument:
            pass
    if ref and base:
        return f"{base}:{ref}"
    return base


async def _import_oci(docs: Mapping[str, bytes], content: ContentStore, images: ImageStore,
                      opts: ImportOptions, progress: Progress) -> list[Image]:
    idx = oci.parse_document(docs["index.json"], oci.OCI_INDEX)
    if not isinstance(idx, oci.Index):
        raise errdefs.InvalidArgument("invalid archive: index.json is not an index")
    out = []
    for i, desc in enumerate(idx.manifests):
        if not (oci.is_index(desc.media_type) or oci.is_manifest(desc.media_type)):
            continue
        await _check_tree(content, desc, opts.platforms)
        name = _image_name(desc.annotations, opts.name) or f"import-{desc.digest[7:19]}-{i}"
        plain = Descriptor(desc.media_type, desc.digest, desc.size)
        out.append(await store_image(images, Image(name, plain, dict(opts.labels))))
        await progress.emit("saved", name, desc=plain)
    return out


async def _import_docker(docs: Mapping[str, bytes], files: Mapping[str, Descriptor], content: ContentStore,
                         images: ImageStore, opts: ImportOptions, progress: Progress) -> list[Image]:
    try:
        entries = json.loads(docs["manifest.json"])
    except ValueError:
        raise errdefs.InvalidArgument("invalid archive: manifest.json is not JSON") from None
    if not isinstance(entries, list):
        raise errdefs.InvalidArgument("invalid archive: manifest.json must be a list")
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) or not isinstance(e.get("Layers"), list):
            raise errdefs.InvalidArgument("invalid archive: bad manifest.json entry")
        cfg_file = files.get(_clean(e["Config"]))
        if cfg_file is None:
            raise errdefs.NotFound(f"invalid archive: missing {e['Config'][:100]}")
        cfg_desc = Descriptor(oci.DOCKER_CONFIG, cfg_file.digest, cfg_file.size)
        cfg = oci.parse_config(await read_blob(content, cfg_desc, oci.MAX_JSON_SIZE))
        layers = []
        for lp in e["Layers"]:
            if not isinstance(lp, str) or _clean(lp) not in files:
                raise errdefs.NotFound(f"invalid archive: missing layer {str(lp)[:100]}")
            f = files[_clean(lp)]
            layers.append(Descriptor(oci.DOCKER_LAYER, f.digest, f.size))
        if list(cfg.diff_ids) != [d.digest for d in layers]:
            raise errdefs.DataLoss("invalid archive: layers do not match the config's diff ids")
        mdoc = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST,
                           "config": cfg_desc.to_json(), "layers": [d.to_json() for d in layers]},
                          separators=(",", ":")).encode()
        mdesc = Descriptor(oci.DOCKER_MANIFEST, oci.digest_of(mdoc), len(mdoc))
        labels = {f"{GC_REF}.config": cfg_desc.digest}
        labels.update({f"{GC_REF}.l.{i}": d.digest for i, d in enumerate(layers)})
        await write_bytes(content, mdesc, mdoc, labels)
        tags = e.get("RepoTags") or []
        names = [str(parse_ref(t)) for t in tags if isinstance(t, str)] or [opts.name or f"import-{mdesc.digest[7:19]}"]
        for n in names:
            out.append(await store_image(images, Image(n, mdesc, dict(opts.labels))))
            await progress.emit("saved", n, desc=mdesc)
    return out


# ---- export --------------------------------------------------------------------------------

async def _collect(content: ContentStore, desc: Descriptor, platforms: Sequence[Platform] | None,
                   out: dict[str, Descriptor], skip_nondist: bool, depth: int = 0) -> list[Descriptor]:
    """Descriptors to export under `desc` (into `out`); returns the manifests reached."""
    if depth > 4:
        raise errdefs.InvalidArgument("index nesting too deep")
    out[desc.digest] = desc
    if not (oci.is_index(desc.media_type) or oci.is_manifest(desc.media_type)):
        return []
    doc = oci.parse_document(await read_blob(content, desc, oci.MAX_MANIFEST_SIZE), desc.media_type)
    if isinstance(doc, oci.Index):
        found = []
        for c in oci.select_manifests(doc, platforms):
            if platforms is None and not await has_blob(content, c.digest):
                continue  # a pull limited to some platforms: export what is there
            found += await _collect(content, c, platforms, out, skip_nondist, depth + 1)
        return found
    out[doc.config.digest] = doc.config
    for layer in doc.layers:
        if skip_nondist and ("nondistributable" in layer.media_type or "foreign" in layer.media_type):
            continue
        out[layer.digest] = layer
    return [desc]


async def export_archive(imgs: Sequence[Image], content: ContentStore,
                         platforms: Sequence[Platform] | None = None,
                         skip_nondistributable: bool = False,
                         docker_manifest: bool = True) -> AsyncIterator[bytes]:
    """The OCI archive of `imgs` as tar bytes."""
    blobs: dict[str, Descriptor] = {}
    index: list[dict[str, object]] = []
    compat: list[dict[str, object]] = []
    for img in imgs:
        manifests = await _collect(content, img.target, platforms, blobs, skip_nondistributable)
        ann = {NAME_ANNOTATION: img.name}
        try:
            r = parse_ref(img.name)
            if r.tag:
                ann[REF_ANNOTATION] = r.tag
        except errdefs.InvalidArgument:
            pass
        entry = Descriptor(img.target.media_type, img.target.digest, img.target.size, ann).to_json()
        index.append(entry)
        if docker_manifest and len(manifests) == 1:
            m = oci.parse_document(await read_blob(content, manifests[0], oci.MAX_MANIFEST_SIZE))
            assert isinstance(m, oci.Manifest)
            tags = []
            try:
                r = parse_ref(img.name)
                tags = [f"{r.name}:{r.tag}"] if r.tag else []
            except errdefs.InvalidArgument:
                pass
            compat.append({"Config": f"blobs/{m.config.digest.replace(':', '/')}", "RepoTags": tags,
                           "Layers": [f"blobs/{d.digest.replace(':', '/')}" for d in m.layers]})
    layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    yield tar_header("oci-layout", len(layout)) + layout + tar_padding(len(layout))
    yield tar_header("blobs", 0, 0o755, b"5") + tar_header("blobs/sha256", 0, 0o755, b"5")
    for d in sorted(blobs.values(), key=lambda d: d.digest):
        if not await has_blob(content, d.digest):
            raise errdefs.NotFound(f"content {d.digest} of an exported image is missing")
        yield tar_header(f"blobs/{d.digest.replace(':', '/')}", d.size)
        n = 0
        async for chunk in content.read(d.digest):
            n += len(chunk)
            yield chunk
        if n != d.size:
            raise errdefs.DataLoss(f"content {d.digest}: size {n} does not match its descriptor")
        yield tar_padding(d.size)
    idx = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": index}).encode()
    yield tar_header("index.json", len(idx)) + idx + tar_padding(len(idx))
    if compat and len(compat) == len(imgs):
        mj = json.dumps(compat).encode()
        yield tar_header("manifest.json", len(mj)) + mj + tar_padding(len(mj))
    yield tar_end()
