"""Registry hosts from containerd's hosts.toml (docs/hosts.md).

`registry_hosts(host, hosts_dir)` returns the endpoints to try for one registry host, in order:
the `[host."<url>"]` mirrors of the file (file order), then `server` (or the host itself).
Lookup under `hosts_dir` (a `:`-separated list of roots, first root with a match wins):
`<root>/<host:port>`, `<root>/<host>_<port>_`, `<root>/_default`. Without hosts.toml a
directory's Docker-style files apply (`*.crt` CA, `*.cert` + `*.key` client pair).

Defaults without config: `docker.io` -> https://registry-1.docker.io; a localhost host uses
`default_scheme` when given, else http (containerd's behaviour, TLS verification skipped);
anything else uses `default_scheme` or https.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from moorage import errdefs

ALL_CAPS = frozenset({"pull", "resolve", "push"})
MAX_HOSTS_FILE = 1 << 20


@dataclass(frozen=True)
class RegistryHost:
    """One endpoint: `scheme://host` + `path` (the API root, `/v2` unless override_path)."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPS
    ca: tuple[Path, ...] = ()
    client: tuple[tuple[Path, Path | None], ...] = ()
    skip_verify: bool = False
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    mirror_of: str = ""  # set for mirrors: requests carry ?ns=<mirror_of>

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"


def is_localhost(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    return name in ("localhost", "127.0.0.1", "::1") or name.startswith("127.")


def _host_dirs(host: str) -> list[str]:
    out = [host]
    if ":" in host and not host.startswith("["):
        h, port = host.rsplit(":", 1)
        out.append(f"{h}_{port}_")
    out.append("_default")
    return out


def _paths(v: object, base: Path, key: str) -> tuple[Path, ...]:
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise errdefs.InvalidArgument(f"hosts.toml: {key} must be a path or a list of paths")
    return tuple(p if p.is_absolute() else base / p for p in map(Path, items))


def _client(v: object, base: Path) -> tuple[tuple[Path, Path | None], ...]:
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise errdefs.InvalidArgument("hosts.toml: client must be a path or list")
    out: list[tuple[Path, Path | None]] = []
    for i in items:
        if isinstance(i, str):
            out.append((_paths(i, base, "client")[0], None))
        elif isinstance(i, list) and len(i) == 2 and all(isinstance(x, str) for x in i):
            c, k = _paths(i, base, "client")
            out.append((c, k))
        else:
            raise errdefs.InvalidArgument("hosts.toml: client entries are paths or [cert, key] pairs")
    return tuple(out)


def _headers(v: object) -> dict[str, tuple[str, ...]]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise errdefs.InvalidArgument("hosts.toml: header must be a table")
    out: dict[str, tuple[str, ...]] = {}
    for k, val in v.items():
        vals = [val] if isinstance(val, str) else val
        if not isinstance(vals, list) or not all(isinstance(x, str) for x in vals):
            raise errdefs.InvalidArgument(f"hosts.toml: header {k} must be a string or list")
        out[str(k)] = tuple(vals)
    return out


def _caps(v: object) -> frozenset[str]:
    if v is None:
        return ALL_CAPS
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise errdefs.InvalidArgument("hosts.toml: capabilities must be a list of strings")
    unknown = set(v) - ALL_CAPS - {"referrers"}
    if unknown:
        raise errdefs.InvalidArgument(f"hosts.toml: unknown capabilities {sorted(unknown)}")
    return frozenset(v) & ALL_CAPS


def _entry(url: str, t: Mapping[str, Any], base: Path, default_scheme: str, mirror_of: str) -> RegistryHost:
    if "://" not in url:
        url = f"{default_scheme}://{url}"
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc or "@" in u.netloc:
        raise errdefs.InvalidArgument(f"hosts.toml: invalid host url {url!r}")
    override = t.get("override_path", False)
    if not isinstance(override, bool):
        raise errdefs.InvalidArgument("hosts.toml: override_path must be a boolean")
    path = u.path.rstrip("/")
    if not override:
        path = path + "/v2" if not path.endswith("/v2") else path
    skip = t.get("skip_verify", False)
    if not isinstance(skip, bool):
        raise errdefs.InvalidArgument("hosts.toml: skip_verify must be a boolean")
    return RegistryHost(u.scheme, u.netloc, path, _caps(t.get("capabilities")),
                        _paths(t.get("ca"), base, "ca"), _client(t.get("client"), base), skip,
                        _headers(t.get("header")), mirror_of)


def _certs_d(d: Path) -> tuple[tuple[Path, ...], tuple[tuple[Path, Path | None], ...]]:
    cas = tuple(sorted(d.glob("*.crt")))
    clients = []
    for c in sorted(d.glob("*.cert")):
        k = c.with_suffix(".key")
        if not k.exists():
            raise errdefs.InvalidArgument(f"missing key {k.name} for client certificate {c.name}")
        clients.append((c, k))
    return cas, tuple(clients)


def default_host(host: str, default_scheme: str = "") -> RegistryHost:
    if host == "docker.io":
        return RegistryHost("https", "registry-1.docker.io")
    if is_localhost(host):
        scheme = default_scheme or ("https" if host.endswith(":443") or ":" not in host else "http")
        return RegistryHost(scheme, host, skip_verify=scheme == "http")
    return RegistryHost(default_scheme or "https", host)


def registry_hosts(host: str, hosts_dir: str | Sequence[str] | None = None,
                   default_scheme: str = "",
                   headers: Mapping[str, str] | None = None) -> list[RegistryHost]:
    """Endpoints for `host` in the order to try them. `headers` (from the request) are added
    to every endpoint's own headers."""
    extra = {k: (v,) for k, v in (headers or {}).items()}
    roots = [r for r in (hosts_dir.split(":") if isinstance(hosts_dir, str) else hosts_dir or []) if r]
    for root in roots:
        for name in _host_dirs(host):
            d = Path(root) / name
            if not d.is_dir():
                continue
            f = d / "hosts.toml"
            if f.is_file():
                return _load(f, host, default_scheme, extra)
            cas, clients = _certs_d(d)
            h = default_host(host, default_scheme)
            if cas or clients:
                h = RegistryHost("https" if h.scheme == "http" and not default_scheme else h.scheme,
                                 h.host, h.path, h.capabilities, cas, clients, False, extra)
            return [_with_headers(h, extra)]
    return [_with_headers(default_host(host, default_scheme), extra)]


def _with_headers(h: RegistryHost, extra: Mapping[str, tuple[str, ...]]) -> RegistryHost:
    if not extra:
        return h
    return RegistryHost(h.scheme, h.host, h.path, h.capabilities, h.ca, h.client, h.skip_verify,
                        {**h.headers, **extra}, h.mirror_of)


def _load(f: Path, host: str, default_scheme: str,
          extra: Mapping[str, tuple[str, ...]]) -> list[RegistryHost]:
    raw = f.read_bytes()
    if len(raw) > MAX_HOSTS_FILE:
        raise errdefs.InvalidArgument(f"{f}: too large")
    try:
        doc = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise errdefs.InvalidArgument(f"{f}: {e}") from None
    base = f.parent
    scheme = default_scheme or "https"
    out: list[RegistryHost] = []
    mirrors = doc.get("host") or {}
    if not isinstance(mirrors, dict):
        raise errdefs.InvalidArgument(f"{f}: host must be a table of tables")
    for url, t in mirrors.items():
        if not isinstance(t, dict):
            raise errdefs.InvalidArgument(f"{f}: host.{url} must be a table")
        out.append(_with_headers(_entry(url, t, base, scheme, host), extra))
    server = doc.get("server")
    if server is not None:
        if not isinstance(server, str):
            raise errdefs.InvalidArgument(f"{f}: server must be a string")
        out.append(_with_headers(_entry(server, doc, base, scheme, ""), extra))
    else:
        d = default_host(host, default_scheme)
        top = _entry(f"{d.scheme}://{d.host}", doc, base, scheme, "")
        out.append(_with_headers(top, extra))
    return out
