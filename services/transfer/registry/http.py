"""HTTP for the registry client: one httpx session per endpoint TLS setting, requests with
auth retry, manual redirects (Authorization dropped off-origin, no https->http downgrade),
bounded body reads, and status -> errdefs mapping with messages free of secrets (method,
host and path only; never query strings, headers or token bodies)."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from moorage import errdefs

from .auth import Challenge, CredentialStore, check_realm, parse_challenges
from .hosts import RegistryHost

MAX_ERROR_BODY = 64 << 10
MAX_TOKEN_BODY = 64 << 10
MAX_REDIRECTS = 5
USER_AGENT = "moorage/0.1"
# httpcore reads a response 64 KiB at a time; the event loop hands over up to 256 KiB per
# read: 256 KiB reads cut the CPU of a blob download by half (0.35 -> 0.16 s for 96 MiB)
READ_SIZE = 256 << 10


def safe_url(url: str) -> str:
    u = urlsplit(url)
    host = u.netloc.rpartition("@")[2]
    return f"{u.scheme}://{host}{u.path}"


async def read_limited(resp: httpx.Response, limit: int, what: str) -> bytes:
    """Read at most `limit` bytes of `resp`'s body; ResourceExhausted past it (stops reading at limit+1)."""
    cl = resp.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise errdefs.ResourceExhausted(f"{what}: body of {cl} bytes exceeds the {limit} byte limit")
    buf = bytearray()
    try:
        async for chunk in resp.aiter_bytes():
            buf += chunk
            if len(buf) > limit:
                raise errdefs.ResourceExhausted(f"{what}: body exceeds the {limit} byte limit")
    except (httpx.HTTPError, OSError) as e:
        raise errdefs.Unavailable(f"{what}: reading the body: {type(e).__name__}") from None
    return bytes(buf)


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        errs = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            e = errs[0]
            return f"{str(e.get('code', ''))[:64]}: {str(e.get('message', ''))[:200]}".strip(": ")
    except ValueError:
        pass
    return ""


def status_error(method: str, url: str, status: int, body: bytes = b"") -> errdefs.Error:
    text = _error_text(body)
    msg = f"{method} {safe_url(url)}: unexpected status {status}" + (f" ({text})" if text else "")
    kind: type[errdefs.Error]
    if status == 401:
        kind = errdefs.Unauthenticated
    elif status == 403:
        kind = errdefs.PermissionDenied
    elif status == 404:
        kind = errdefs.NotFound
    elif status == 416:
        kind = errdefs.OutOfRange
    elif status == 429 or status >= 500:
        kind = errdefs.Unavailable
    else:
        kind = errdefs.Unknown
    return kind(msg)


_CONTEXTS: dict[tuple[Any, ...], ssl.SSLContext] = {}


def ssl_context(h: RegistryHost) -> ssl.SSLContext:
    """The TLS context for an endpoint's settings, built once per process (loading the
    system CAs costs tens of milliseconds)."""
    key = (h.scheme, h.ca, h.client, h.skip_verify)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = _CONTEXTS[key] = _new_context(h)
    return ctx


def _plain_context() -> ssl.SSLContext:
    ctx = _CONTEXTS.get(("http",))
    if ctx is None:
        ctx = _CONTEXTS[("http",)] = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return ctx


def _new_context(h: RegistryHost) -> ssl.SSLContext:
    if h.skip_verify:
        # nothing is verified: the system CAs (~50 ms to load) would go unused
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context()
        for ca in h.ca:
            ctx.load_verify_locations(cafile=str(ca))
    for cert, key in h.client:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def _read_size() -> None:
    """httpcore's read size (a class attribute, READ_NUM_BYTES: 64 KiB) raised to READ_SIZE;
    left alone if a newer httpcore has no such attribute (then only slower, never broken)."""
    import httpcore

    if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = READ_SIZE


def preload() -> None:
    """Import what httpx loads on its first request (httpcore, h11, anyio's asyncio
    backend: 0.1-0.2 s), so that a service does it once at start, not in its first pull."""
    import anyio._backends._asyncio  # noqa: F401
    import httpcore._backends.anyio  # noqa: F401

    _read_size()
    httpx.AsyncHTTPTransport(verify=_plain_context())


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class Authorizer:
    """Per-endpoint-host auth state: the last challenge, basic headers, Bearer tokens per scope."""

    credentials: CredentialStore
    reference: str = ""
    challenges: dict[str, Challenge] = field(default_factory=dict)
    tokens: dict[tuple[str, str], _Token] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        out = [t.value for t in self.tokens.values()]
        for c in self.credentials.cached():
            out.append(c.secret)
            out.append(base64.b64encode(f"{c.username}:{c.secret}".encode()).decode())
        return out

    async def header(self, host: RegistryHost, scope: str) -> str | None:
        ch = self.challenges.get(host.host)
        if ch is None:
            return None
        if ch.scheme == "basic":
            creds = await self.credentials.get(host.host, self.reference, "basic")
            if creds is None:
                return None
            if creds.kind == "header":
                return creds.secret
            return "Basic " + base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()
        tok = self.tokens.get((host.host, scope))
        if tok and tok.expires > time.monotonic():
            return f"Bearer {tok.value}"
        return None

    async def challenge(self, client: Session, host: RegistryHost, resp: httpx.Response, scope: str,
                        had_auth: bool) -> bool:
        """Handle a 401: remember the challenge and fetch a token. True if a retry makes sense;
        never when the request already carried authorization (refused credentials)."""
        if had_auth:
            return False
        chs = parse_challenges(resp.headers.get_list("www-authenticate"))
        ch = next((c for c in chs if c.scheme == "bearer"), None) or next((c for c in chs if c.scheme == "basic"), None)
        if ch is None:
            return False
        self.challenges[host.host] = ch
        if ch.scheme == "basic":
            creds = await self.credentials.get(host.host, self.reference, "basic")
            return creds is not None
        realm, creds_ok = check_realm(ch.params.get("realm", ""), host.scheme, host.host)
        creds = await self.credentials.get(host.host, self.reference, "bearer") if creds_ok else None
        if creds is not None and creds.kind == "header":
            return False
        token, ttl = await client.fetch_token(realm, ch.params.get("service", ""),
                                              ch.params.get("scope", scope) if not scope else scope, creds, host)
        self.tokens[(host.host, scope)] = _Token(token, time.monotonic() + max(ttl - 10, 10))
        return True


class Session:
    """All HTTP for one transfer: sessions per TLS setting, one Authorizer."""

    def __init__(self, credentials: CredentialStore | None = None, reference: str = "",
                 timeout: float = 60.0) -> None:
        self.auth = Authorizer(credentials or CredentialStore(), reference)
        self._clients: dict[tuple[Any, ...], httpx.AsyncClient] = {}
        self._timeout = timeout
        self._plain: dict[str, bool] = {}  # http endpoints whose https attempt failed

    def _client(self, h: RegistryHost) -> httpx.AsyncClient:
        key = (h.scheme, h.ca, h.client, h.skip_verify)
        c = self._clients.get(key)
        if c is None:
            _read_size()
            verify = ssl_context(h) if h.scheme == "https" else _plain_context()
            c = httpx.AsyncClient(verify=verify, follow_redirects=False, trust_env=False,
                                  timeout=httpx.Timeout(self._timeout, connect=30.0),
                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                                  headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            self._clients[key] = c
        return c

    def redact(self, err: errdefs.Error) -> errdefs.Error:
        """Remove every secret this session holds (passwords, tokens, header values and their
        Basic encodings) from an error built from registry-supplied text."""
        msg = str(err)
        for secret in self.auth.secrets():
            if len(secret) >= 4 and secret in msg:
                msg = msg.replace(secret, "<redacted>")
        return err if msg == str(err) else type(err)(msg)

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()

    async def fetch_token(self, realm: str, service: str, scope: str, creds: Any,
                          issuer: RegistryHost) -> tuple[str, float]:
        """Token from `realm`; TLS trusts what the issuing endpoint trusts (its CAs and client
        certificates) but is always verified."""
        q = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        h = RegistryHost(urlsplit(realm).scheme, urlsplit(realm).netloc, ca=issuer.ca,
                         client=issuer.client if creds_host_match(realm, issuer) else ())
        client = self._client(h)
        headers: dict[str, str] = {}
        try:
            if creds is not None and creds.kind == "refresh":
                form = {"grant_type": "refresh_token", "refresh_token": creds.secret,
                        "client_id": "moorage", **q}
                req = client.build_request("POST", realm, data=form)
            else:
                if creds is not None:
                    headers["Authorization"] = "Basic " + base64.b64encode(
                        f"{creds.username}:{creds.secret}".encode()).decode()
                sep = "&" if "?" in realm else "?"
                req = client.build_request("GET", realm + (sep + urlencode(q) if q else ""), headers=headers)
            resp = await client.send(req, stream=True)
        except (httpx.HTTPError, OSError) as e:
            raise errdefs.Unavailable(f"token request to {safe_url(realm)}: {type(e).__name__}: {_safe_exc(e)}") from None
        try:
            if resp.status_code != 200:
                await read_limited(resp, MAX_ERROR_BODY, f"token endpoint {safe_url(realm)}")
                kind = errdefs.Unauthenticated if resp.status_code in (401, 403) else errdefs.Unavailable
                raise kind(f"token request to {safe_url(realm)} failed with status {resp.status_code}")
            body = await read_limited(resp, MAX_TOKEN_BODY, f"token endpoint {safe_url(realm)}")
        finally:
            await resp.aclose()
        try:
            doc = json.loads(body)
        except ValueError:
            raise errdefs.Unauthenticated(f"token endpoint {safe_url(realm)}: invalid JSON") from None
        tok = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(tok, str) or not tok or len(tok) > MAX_TOKEN_BODY:
            raise errdefs.Unauthenticated(f"token endpoint {safe_url(realm)}: no token in response")
        ttl = doc.get("expires_in", 60)
        return tok, float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else 60.0

    @contextlib.asynccontextmanager
    async def request(self, method: str, host: RegistryHost, url: str, scope: str,
                      headers: Mapping[str, str] | None = None, content: Any = None,
                      ok: tuple[int, ...] = (200,)) -> AsyncIterator[httpx.Response]:
        """Send with auth; yields a streaming response whose status is in `ok` (else raises
        the mapped error). Bodies that are callables are re-created per attempt."""
        for attempt in range(3):
            hdrs = {k: ", ".join(v) for k, v in host.headers.items()}
            hdrs.update(headers or {})
            auth = await self.auth.header(host, scope)
            if auth:
                hdrs["Authorization"] = auth
            body = content() if callable(content) else content
            resp = await self._send_fallback(method, host, url, hdrs, body, content)
            try:
                if resp.status_code == 401 and attempt < 2:
                    await read_limited(resp, MAX_ERROR_BODY, f"{method} {safe_url(url)}")
                    if await self.auth.challenge(self, host, resp, scope, auth is not None):
                        continue
                    raise status_error(method, url, 401)
                if resp.status_code not in ok:
                    body_bytes = b""
                    with contextlib.suppress(errdefs.ResourceExhausted, httpx.HTTPError):
                        body_bytes = await read_limited(resp, MAX_ERROR_BODY, "error body")
                    raise self.redact(status_error(method, url, resp.status_code, body_bytes))
                yield resp
                return
            finally:
                await resp.aclose()
        raise errdefs.Unauthenticated(f"{method} {safe_url(url)}: authorization failed")

    async def _send_fallback(self, method: str, host: RegistryHost, url: str, headers: dict[str, str],
                             body: Any, content: Any) -> httpx.Response:
        """containerd's HTTPFallback: an `http://` endpoint that also has TLS settings (ca,
        client, skip_verify) and is not on port 80 is tried over https first; when the TLS
        handshake fails the endpoint is used over plain http from then on."""
        if not (host.scheme == "http" and (host.ca or host.client or host.skip_verify)
                and not host.host.endswith(":80")) or self._plain.get(host.host):
            return await self._send(method, host, url, headers, body)
        tls = RegistryHost("https", host.host, host.path, host.capabilities, host.ca, host.client,
                           host.skip_verify, host.headers, host.mirror_of)
        try:
            return await self._send(method, tls, "https" + url[len("http"):], headers, body)
        except errdefs.Unavailable as e:
            if "SSL" not in str(e) and "TLS" not in str(e):
                raise
        self._plain[host.host] = True
        return await self._send(method, host, url, headers, content() if callable(content) else body)

    async def _send(self, method: str, host: RegistryHost, url: str, headers: dict[str, str],
                    content: Any) -> httpx.Response:
        client = self._client(host)
        origin = urlsplit(url)[:2]
        for _ in range(MAX_REDIRECTS + 1):
            try:
                req = client.build_request(method, url, headers=headers, content=content)
                resp = await client.send(req, stream=True)
            except (httpx.HTTPError, OSError) as e:
                raise errdefs.Unavailable(f"{method} {safe_url(url)}: {type(e).__name__}: {_safe_exc(e)}") from None
            if resp.status_code not in (301, 302, 303, 307, 308) or method not in ("GET", "HEAD"):
                return resp
            loc = resp.headers.get("location", "")
            await resp.aclose()
            nxt = urljoin(url, loc)
            u = urlsplit(nxt)
            if u.scheme not in ("http", "https") or (urlsplit(url).scheme == "https" and u.scheme == "http"):
                raise errdefs.PermissionDenied(f"{method} {safe_url(url)}: refusing redirect to {u.scheme}://{u.netloc}")
            if (u.scheme, u.netloc) != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                client = self._client(RegistryHost(u.scheme, u.netloc))
            url = nxt
        raise errdefs.Unavailable(f"{method}: too many redirects")


def creds_host_match(url: str, h: RegistryHost) -> bool:
    from .auth import hostname
    return hostname(urlsplit(url).netloc).lower() == hostname(h.host).lower()


def _safe_exc(e: BaseException) -> str:
    s = str(e)[:300]
    return s.split("Authorization")[0]
