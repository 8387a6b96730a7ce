"""OCI distribution on top of hosts, auth and http: resolve a reference, fetch manifests and
blobs (verified, size-capped, resumable with Range), push blobs (existence check,
cross-repository mount, monolithic or chunked upload) and manifests.

Endpoints are tried in hosts.toml order among those with the needed capability (`resolve`
for tags, `pull` for digests, `push`); NotFound or an unreachable endpoint moves on to the
next, any other error stops. Nothing returned by `resolve`/`fetch_document` is unverified:
documents are digest-checked against the descriptor (or the Docker-Content-Digest when
resolving a tag); `open_blob` stops at the descriptor's size and `verify_stream` checks
the digest at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urljoin, urlsplit

import httpx

from moorage import errdefs

from .. import oci
from ..oci import Descriptor
from ..reference import Reference
from .auth import CredentialStore
from .hosts import RegistryHost, registry_hosts
from .http import Session, read_limited, safe_url

BlobReader = Callable[[], AsyncIterator[bytes]]


@dataclass
class ResolverOptions:
    hosts_dir: str | Sequence[str] | None = None
    default_scheme: str = ""
    headers: Mapping[str, str] | None = None
    credentials: CredentialStore | None = None
    chunk_size: int = 0  # >0: chunked uploads of that size for blobs larger than it
    timeout: float = 60.0


class Resolver:
    """Registry access for one repository host; `aclose()` when done."""

    def __init__(self, ref: Reference, opts: ResolverOptions | None = None) -> None:
        self.ref = ref
        self.opts = opts or ResolverOptions()
        self.hosts = registry_hosts(ref.host, self.opts.hosts_dir, self.opts.default_scheme, self.opts.headers)
        self.session = Session(self.opts.credentials, str(ref), self.opts.timeout)

    async def aclose(self) -> None:
        await self.session.aclose()

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _url(self, h: RegistryHost, repo: str, *parts: str, query: Mapping[str, str] | None = None) -> str:
        url = h.base + "/" + "/".join([quote(repo, safe="/"), *[quote(p, safe=":") for p in parts]])
        q = dict(query or {})
        if h.host != self.ref.host and (h.mirror_of or self.ref.host != "docker.io"):
            q["ns"] = self.ref.host
        return url + ("?" + urlencode(q) if q else "")

    def _endpoints(self, cap: str) -> list[RegistryHost]:
        hs = [h for h in self.hosts if cap in h.capabilities]
        if not hs:
            raise errdefs.NotFound(f"no registry host for {self.ref.host} with capability {cap}")
        return hs

    @staticmethod
    def scope(repo: str, push: bool = False) -> str:
        return f"repository:{repo}:{'pull,push' if push else 'pull'}"

    async def resolve(self, ref: Reference | None = None) -> tuple[Descriptor, bytes]:
        """The root descriptor of `ref` and its verified document bytes."""
        ref = ref or self.ref
        pinned = ref.digest
        cap = "pull" if pinned else "resolve"
        last: errdefs.Error | None = None
        for h in self._endpoints(cap):
            url = self._url(h, ref.path, "manifests", ref.object)
            try:
                async with self.session.request("GET", h, url, self.scope(ref.path),
                                                {"Accept": oci.ACCEPT_MANIFESTS}) as resp:
                    body = await read_limited(resp, oci.MAX_MANIFEST_SIZE, f"manifest {ref}")
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
                    header_digest = resp.headers.get("docker-content-digest", "")
            except _NEXT_HOST as e:
                last = _first(last, e)
                continue
            dgst = oci.digest_of(body, (pinned or "sha256:").partition(":")[0])
            if pinned and dgst != pinned:
                raise errdefs.DataLoss(f"manifest {ref}: content digest {dgst} does not match {pinned}")
            if header_digest and header_digest.startswith("sha256:") and header_digest != oci.digest_of(body):
                raise errdefs.DataLoss(f"manifest {ref}: content does not match Docker-Content-Digest")
            mt = oci.detect_type(oci.load_json(body, oci.MAX_MANIFEST_SIZE), ctype)
            return Descriptor(mt, dgst, len(body)), body
        assert last is not None
        raise last

    async def fetch_document(self, desc: Descriptor, limit: int = oci.MAX_MANIFEST_SIZE) -> bytes:
        """A manifest/index (via /manifests) or config (via /blobs), verified and capped."""
        oci.validate_digest(desc.digest)
        if desc.size > limit:
            raise errdefs.ResourceExhausted(f"{desc.digest}: size {desc.size} exceeds the {limit} byte limit")
        kind = "manifests" if (oci.is_index(desc.media_type) or oci.is_manifest(desc.media_type)) else "blobs"
        last: errdefs.Error | None = None
        for h in self._endpoints("pull"):
            url = self._url(h, self.ref.path, kind, desc.digest)
            try:
                async with self.session.request("GET", h, url, self.scope(self.ref.path),
                                                {"Accept": oci.ACCEPT_MANIFESTS if kind == "manifests" else "*/*"}) as resp:
                    body = await read_limited(resp, min(limit, desc.size), desc.digest)
                    ctype = resp.headers.get("content-type", "")
            except _NEXT_HOST as e:
                last = _first(last, e)
                continue
            oci.verify_bytes(body, desc)
            if kind == "manifests":
                oci.detect_type(oci.load_json(body, limit), ctype.split(";")[0].strip() or desc.media_type)
                oci.detect_type(oci.load_json(body, limit), desc.media_type)
            return body
        assert last is not None
        raise last

    @contextlib.asynccontextmanager
    async def open_blob(self, desc: Descriptor, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """Bytes of blob `desc` from `offset` to its end (never more than desc.size in all).

        Asks for `Range: bytes=<offset>-`; a registry that ignores Range (200) or answers a
        different Content-Range has the unwanted prefix discarded."""
        oci.validate_digest(desc.digest)
        if offset < 0 or offset > desc.size:
            raise errdefs.OutOfRange(f"{desc.digest}: offset {offset} outside 0..{desc.size}")
        last: errdefs.Error | None = None
        for h in self._endpoints("pull"):
            url = self._url(h, self.ref.path, "blobs", desc.digest)
            headers = {"Accept": "*/*"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            yielded = False
            try:
                async with self.session.request("GET", h, url, self.scope(self.ref.path), headers,
                                                ok=(200, 206)) as resp:
                    skip = 0
                    if offset:
                        cr = resp.headers.get("content-range", "")
                        if resp.status_code == 206 and cr.startswith(f"bytes {offset}-"):
                            skip = 0
                        elif resp.status_code == 200:
                            skip = offset
                        else:
                            raise errdefs.Unavailable(
                                f"{safe_url(url)}: unexpected Content-Range {cr[:64]!r} for offset {offset}")
                    yielded = True
                    yield _capped(resp.aiter_raw(), skip, desc.size - offset, desc.digest)
                    return
            except _NEXT_HOST as e:
                if yielded:
                    raise
                last = _first(last, e)
                continue
        assert last is not None
        raise last

    # ---- push ---------------------------------------------------------------------------

    async def blob_exists(self, h: RegistryHost, desc: Descriptor) -> bool:
        url = self._url(h, self.ref.path, "blobs", desc.digest)
        try:
            async with self.session.request("HEAD", h, url, self.scope(self.ref.path, True)):
                return True
        except errdefs.NotFound:
            return False

    async def push_blob(self, desc: Descriptor, reader: BlobReader,
                        mount_from: Sequence[str] = ()) -> str:
        """Upload `desc` unless present; tries a cross-repository mount from each repo of
        `mount_from` (same registry) first. Returns ``exists``, ``mounted`` or ``pushed``."""
        oci.validate_digest(desc.digest)
        h = self._endpoints("push")[0]
        scope = self.scope(self.ref.path, True)
        if await self.blob_exists(h, desc):
            return "exists"
        uploads = self._url(h, self.ref.path, "blobs", "uploads/")
        location = ""
        for repo in mount_from:
            if repo == self.ref.path:
                continue
            mscope = f"{scope} repository:{repo}:pull"
            async with self.session.request("POST", h, uploads + _q(uploads, {"mount": desc.digest, "from": repo}),
                                            mscope, {"Content-Length": "0"}, ok=(201, 202)) as resp:
                if resp.status_code == 201:
                    return "mounted"
                location = resp.headers.get("location", "")
            break
        if not location:
            async with self.session.request("POST", h, uploads, scope, {"Content-Length": "0"},
                                            ok=(202,)) as resp:
                location = resp.headers.get("location", "")
        if not location:
            raise errdefs.Unknown(f"POST {safe_url(uploads)}: no upload location")
        location = self._same_origin(h, urljoin(uploads, location))
        chunk = self.opts.chunk_size
        if chunk and desc.size > chunk:
            location = await self._upload_chunks(h, location, scope, reader, chunk)
            body: object = b""
            headers = {"Content-Length": "0"}
        else:
            body = reader
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)}
        put = location + _q(location, {"digest": desc.digest})
        async with self.session.request("PUT", h, put, scope, headers, content=body, ok=(201, 204)):
            pass
        return "pushed"

    def _same_origin(self, h: RegistryHost, url: str) -> str:
        u = urlsplit(url)
        if (u.scheme, u.netloc) != (h.scheme, h.host):
            raise errdefs.PermissionDenied(f"upload location on another host ({u.scheme}://{u.netloc}); refusing")
        return url

    async def _upload_chunks(self, h: RegistryHost, location: str, scope: str, reader: BlobReader,
                             chunk: int) -> str:
        offset = 0
        buf = bytearray()

        async def send(data: bytes) -> None:
            nonlocal location, offset
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                       "Content-Range": f"{offset}-{offset + len(data) - 1}"}
            async with self.session.request("PATCH", h, location, scope, headers, content=data, ok=(202,)) as resp:
                location = self._same_origin(h, urljoin(location, resp.headers.get("location", location)))
            offset += len(data)

        async for piece in reader():
            buf += piece
            while len(buf) >= chunk:
                await send(bytes(buf[:chunk]))
                del buf[:chunk]
        if buf:
            await send(bytes(buf))
        return location

    async def push_manifest(self, desc: Descriptor, data: bytes, tag: str = "") -> None:
        oci.verify_bytes(data, desc)
        h = self._endpoints("push")[0]
        url = self._url(h, self.ref.path, "manifests", tag or desc.digest)
        async with self.session.request("PUT", h, url, self.scope(self.ref.path, True),
                                        {"Content-Type": desc.media_type}, content=data, ok=(201, 202, 204)):
            pass


_NEXT_HOST = (errdefs.NotFound, errdefs.Unavailable, errdefs.Unauthenticated, errdefs.PermissionDenied,
              errdefs.Unknown)
"""Errors that move on to the next endpoint (containerd: any status > 399 or a dial error);
bad content (DataLoss, InvalidArgument, ResourceExhausted) stops at once."""


def _first(prev: errdefs.Error | None, e: errdefs.Error) -> errdefs.Error:
    """The error to report: the first one that is not NotFound (containerd's firstErr)."""
    if prev is None or (isinstance(prev, errdefs.NotFound) and not isinstance(e, errdefs.NotFound)):
        return e
    return prev


def _q(url: str, q: Mapping[str, str]) -> str:
    return ("&" if "?" in url else "?") + urlencode(q)


async def _capped(it: AsyncIterator[bytes], skip: int, size: int, what: str) -> AsyncIterator[bytes]:
    """The body after `skip` bytes, never more than `size`; DataLoss on too many or too few
    bytes, Unavailable when the connection breaks (what arrived before was yielded)."""
    got = 0
    try:
        async for chunk in it:
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            got += len(chunk)
            if got > size:
                raise errdefs.DataLoss(f"{what}: registry sent more bytes than the descriptor size")
            yield chunk
    except (httpx.HTTPError, OSError) as e:
        raise errdefs.Unavailable(f"{what}: download interrupted: {type(e).__name__}") from None
    if got != size:
        raise errdefs.DataLoss(f"{what}: short read ({got} of {size} bytes)")


async def verify_stream(it: AsyncIterator[bytes], desc: Descriptor) -> AsyncIterator[bytes]:
    """Pass `it` through, raising DataLoss at the end unless it hashes to desc.digest.
    The caller must not commit anything before the iterator is exhausted."""
    h = hashlib.new(desc.digest.partition(":")[0])
    n = 0
    async for chunk in it:
        h.update(chunk)
        n += len(chunk)
        yield chunk
    if n != desc.size or f"{desc.digest.partition(':')[0]}:{h.hexdigest()}" != desc.digest:
        raise errdefs.DataLoss(f"{desc.digest}: content does not match the descriptor")
