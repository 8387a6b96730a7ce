"""Registry authentication: where credentials come from and how challenges are answered.

Credentials are always looked up for the exact host a request goes to (host[:port]); a
mirror, a foreign URL or a token realm on another host never receives the credentials of
the registry the image was named after. Sources, tried in order:
- a callback (the transfer client's auth stream): `async (host, reference, challenge) -> Credentials | None`
- a docker-style credentials file (`{"auths": {"host": {"auth": b64(user:pass)} | {"username", "password"} | {"identitytoken"}}}`)

Challenges: `Basic` (credentials sent as is) and `Bearer` (token from the realm). Realm rules:
https only (http only when the registry endpoint itself is plain http on the same host);
credentials go to a realm only on the registry's own host name (any port) or a known pair
(docker.io -> auth.docker.io); a realm elsewhere gets an anonymous request or nothing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from moorage import errdefs

MAX_CREDENTIALS_FILE = 1 << 20
TRUSTED_REALMS = {"registry-1.docker.io": ("auth.docker.io",), "docker.io": ("auth.docker.io",)}


@dataclass(frozen=True)
class Credentials:
    """`kind`: ``credentials`` (username + secret), ``refresh`` (identity/refresh token in
    secret), ``header`` (secret is a raw Authorization value)."""

    username: str = ""
    secret: str = ""
    kind: str = "credentials"

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, kind={self.kind!r}, secret=<redacted>)"


CredentialCallback = Callable[[str, str, str], Awaitable[Credentials | None]]


def load_credentials_file(path: Path) -> dict[str, Credentials]:
    """Parse a docker config.json-style file into {host: Credentials}."""
    raw = path.read_bytes()
    if len(raw) > MAX_CREDENTIALS_FILE:
        raise errdefs.InvalidArgument(f"credentials file {path} too large")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise errdefs.InvalidArgument(f"credentials file {path}: invalid JSON") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise errdefs.InvalidArgument(f"credentials file {path}: no auths table")
    out: dict[str, Credentials] = {}
    for host, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        key = urlsplit(host).netloc if "://" in host else host.split("/")[0]
        if key in ("index.docker.io", "registry-1.docker.io"):
            key = "docker.io"
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            out[key] = Credentials(str(entry.get("username", "")), entry["identitytoken"], "refresh")
        elif isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                raise errdefs.InvalidArgument(f"credentials file {path}: bad auth for {key}") from None
            out[key] = Credentials(user, pw)
        elif isinstance(entry.get("username"), str):
            out[key] = Credentials(entry["username"], str(entry.get("password", "")))
    return out


class CredentialStore:
    """Credentials for a host: callback first, then the file entries. Caches per host."""

    def __init__(self, callback: CredentialCallback | None = None,
                 entries: dict[str, Credentials] | None = None) -> None:
        self._callback = callback
        self._entries = dict(entries or {})
        self._cache: dict[str, Credentials | None] = {}

    def cached(self) -> list[Credentials]:
        """Credentials handed out so far (for redaction)."""
        return [c for c in self._cache.values() if c is not None]

    async def get(self, host: str, reference: str, challenge: str) -> Credentials | None:
        if host in self._cache:
            return self._cache[host]
        creds = None
        if self._callback is not None:
            creds = await self._callback(host, reference, challenge)
        if creds is None:
            alias = "docker.io" if host == "registry-1.docker.io" else host
            creds = self._entries.get(host) or self._entries.get(alias)
        self._cache[host] = creds
        return creds


_PARAM = re.compile(r'\s*([a-zA-Z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-case: basic, bearer
    params: dict[str, str]


def parse_challenges(headers: list[str]) -> list[Challenge]:
    """Parse WWW-Authenticate values (bounded); unknown schemes are kept, caller picks."""
    out = []
    for h in headers[:8]:
        h = h[:8192]
        scheme, _, rest = h.strip().partition(" ")
        params: dict[str, str] = {}
        pos = 0
        while pos < len(rest):
            m = _PARAM.match(rest, pos)
            if not m or m.end() == pos:
                break
            params[m.group(1).lower()] = (m.group(2) if m.group(2) is not None else m.group(3) or "").replace('\\"', '"')
            pos = m.end()
        out.append(Challenge(scheme.lower(), params))
    return out


def hostname(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[1:netloc.index("]")]
    return netloc.rsplit(":", 1)[0] if ":" in netloc else netloc


def check_realm(realm: str, endpoint_scheme: str, endpoint_host: str) -> tuple[str, bool]:
    """Validate a Bearer realm against the endpoint that issued the challenge.

    Returns (realm, credentials_allowed). Raises PermissionDenied for a realm that must not
    be contacted at all (not http(s), userinfo, or http when the registry speaks https, or
    http to another host)."""
    u = urlsplit(realm)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise errdefs.PermissionDenied(f"token realm {realm[:200]!r} is not an http(s) URL")
    if "@" in u.netloc:
        raise errdefs.PermissionDenied("token realm must not carry user information")
    same_host = hostname(u.netloc).lower() == hostname(endpoint_host).lower()
    trusted = same_host or hostname(u.netloc).lower() in TRUSTED_REALMS.get(hostname(endpoint_host).lower(), ())
    if u.scheme == "http":
        if endpoint_scheme == "https":
            raise errdefs.PermissionDenied(
                f"token realm {u.scheme}://{u.netloc} is plain http for an https registry; refusing")
        if not same_host:
            raise errdefs.PermissionDenied(
                f"token realm http://{u.netloc} is on another host than {endpoint_host}; refusing")
    return realm, trusted
