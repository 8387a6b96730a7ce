"""reliability.md §4 case 13 on the wire: what a registry's 401 can make us send, and where.

registry/auth.py:check_realm promises: a Bearer realm must be http(s); plain http only when
the registry itself is plain http and the realm is on its host; credentials go only to a
realm on the registry's own host name (any port); a realm on another host is asked
anonymously. registry/http.py:Session.fetch_token promises the token endpoint's TLS is
always verified (with the CAs the registry endpoint trusts, never its skip_verify).

Every server here is a scripted one (fakeregistry.py) on loopback; "another host" is
``localhost`` for a registry at ``127.0.0.1`` (the test certificate names both).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage import errdefs
from moorage.services.transfer import oci
from moorage.services.transfer.registry.auth import CredentialStore, Credentials

from .fakeregistry import FakeRegistry
from .registry import TestCA
from .test_bad_registry import SECRET, manifest_doc, resolver

TOKEN = "anon-token-0123456789"
BASIC = "Basic " + base64.b64encode(f"moor:{SECRET}".encode()).decode()
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
MANIFEST = manifest_doc([], oci.Descriptor(oci.OCI_CONFIG, oci.digest_of(CONFIG), len(CONFIG)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, TestCA]:
    """The CA the registry's hosts.toml names, and a rogue one nobody trusts."""
    base = tmp_path_factory.mktemp("pki")
    return TestCA.create(base / "trusted"), TestCA.create(base / "rogue", name="rogue")


def serve(ca: TestCA | None = None) -> FakeRegistry:
    """A scripted server on 127.0.0.1, over TLS with ``ca``'s server certificate if given."""
    f = FakeRegistry().start()
    if ca is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.cert, ca.key)
        f.httpd.socket = ctx.wrap_socket(f.httpd.socket, server_side=True)  # nothing connected yet
    return f


@pytest.fixture
def servers() -> Iterator[list[FakeRegistry]]:
    started: list[FakeRegistry] = []
    try:
        yield started
    finally:
        for f in started:
            f.stop()


class Asked:
    """A credentials callback that answers for any host and records who asked."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def __call__(self, host: str, ref: str, challenge: str) -> Credentials:
        self.hosts.append(host)
        return Credentials("moor", SECRET)


def protected(reg: FakeRegistry, realm: str) -> None:
    """/v2/r/manifests/latest answers 401 naming ``realm`` unless it carries our token."""
    def manifest(h: object) -> tuple[int, dict[str, str], bytes]:
        if h.headers.get("Authorization") == f"Bearer {TOKEN}":  # type: ignore[attr-defined]
            return 200, {"Content-Type": oci.OCI_MANIFEST}, MANIFEST
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg",scope="repository:r:pull"'}, b""
    reg.routes["/v2/r/manifests/latest"] = manifest


def token_route(srv: FakeRegistry) -> None:
    srv.routes["/token"] = lambda h: (200, {"Content-Type": "application/json"},
                                      json.dumps({"token": TOKEN, "expires_in": 300}).encode())


def hosts_dir(tmp_path: Path, reg: FakeRegistry, scheme: str, tls: str = "") -> str:
    d = tmp_path / "certs.d" / reg.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(f'server = "{scheme}://{reg.host}"\n{tls}\n')
    return str(tmp_path / "certs.d")


def no_secret_anywhere(*servers: FakeRegistry) -> None:
    for f in servers:
        for s in f.seen:
            assert SECRET not in json.dumps(s.headers) and BASIC not in s.headers.values(), (f.host, s)


async def test_https_realm_on_another_host_is_asked_anonymously(
        pki: tuple[TestCA, TestCA], servers: list[FakeRegistry], tmp_path: Path) -> None:
    ca = pki[0]
    reg, tok = serve(ca), serve(ca)
    servers += [reg, tok]
    protected(reg, f"https://localhost:{tok.port}/token")
    token_route(tok)
    asked = Asked()
    async with resolver(f"{reg.host}/r:latest", credentials=CredentialStore(asked),
                        hosts_dir=hosts_dir(tmp_path, reg, "https", f'ca = "{ca.ca}"')) as res:
        desc, body = await res.resolve()
    assert body == MANIFEST and desc.digest == oci.digest_of(MANIFEST)
    assert [(s.method, s.path.split("?")[0]) for s in tok.seen] == [("GET", "/token")]
    assert "authorization" not in tok.seen[0].headers  # anonymous
    assert "service=reg" in tok.seen[0].path and "scope=repository%3Ar%3Apull" in tok.seen[0].path
    assert asked.hosts == []  # nobody even looked the credentials up
    assert [s.headers.get("authorization") for s in reg.seen] == [None, f"Bearer {TOKEN}"]
    no_secret_anywhere(reg, tok)


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_realm_on_the_registry_host_gets_the_credentials(
        scheme: str, pki: tuple[TestCA, TestCA], servers: list[FakeRegistry], tmp_path: Path) -> None:
    """The control: the same flow with the realm on the registry's own host name (another
    port over https; the registry itself over plain http) does send them, so the
    anonymous request above is the host rule at work."""
    ca = pki[0]
    reg = serve(ca if scheme == "https" else None)
    servers.append(reg)
    tok = serve(ca) if scheme == "https" else reg
    if tok is not reg:
        servers.append(tok)
    protected(reg, f"{scheme}://127.0.0.1:{tok.port}/token")
    token_route(tok)
    asked = Asked()
    tls = f'ca = "{ca.ca}"' if scheme == "https" else ""
    async with resolver(f"{reg.host}/r:latest", credentials=CredentialStore(asked),
                        hosts_dir=hosts_dir(tmp_path, reg, scheme, tls)) as res:
        await res.resolve()
    assert asked.hosts == [reg.host]
    token_requests = [s for s in tok.seen if s.path.startswith("/token")]
    assert [s.headers.get("authorization") for s in token_requests] == [BASIC]


@pytest.mark.parametrize("registry_scheme,why", [("https", "plain http for an https registry"),
                                                 ("http", "another host")])
async def test_http_realm_on_another_host_is_never_contacted(
        registry_scheme: str, why: str, pki: tuple[TestCA, TestCA], servers: list[FakeRegistry],
        tmp_path: Path) -> None:
    ca = pki[0]
    reg, tok = serve(ca if registry_scheme == "https" else None), serve()
    servers += [reg, tok]
    protected(reg, f"http://localhost:{tok.port}/token")
    token_route(tok)
    asked = Asked()
    tls = f'ca = "{ca.ca}"' if registry_scheme == "https" else ""
    async with resolver(f"{reg.host}/r:latest", credentials=CredentialStore(asked),
                        hosts_dir=hosts_dir(tmp_path, reg, registry_scheme, tls)) as res:
        with pytest.raises(errdefs.PermissionDenied, match=why) as ei:
            await res.resolve()
    assert SECRET not in str(ei.value)
    assert tok.seen == [] and asked.hosts == []
    assert [s.headers.get("authorization") for s in reg.seen] == [None]


@pytest.mark.parametrize("realm_host", ["localhost", "127.0.0.1"])
async def test_token_endpoint_tls_is_verified_even_when_the_registry_skips_verify(
        realm_host: str, pki: tuple[TestCA, TestCA], servers: list[FakeRegistry], tmp_path: Path) -> None:
    """The registry is configured ``skip_verify = true``; a token endpoint whose certificate
    comes from a CA nobody trusts is still refused before any request (on the registry's
    host, where the credentials would go, and elsewhere)."""
    trusted, rogue = pki
    reg, tok = serve(trusted), serve(rogue)
    servers += [reg, tok]
    protected(reg, f"https://{realm_host}:{tok.port}/token")
    token_route(tok)
    asked = Asked()
    async with resolver(f"{reg.host}/r:latest", credentials=CredentialStore(asked),
                        hosts_dir=hosts_dir(tmp_path, reg, "https", "skip_verify = true")) as res:
        with pytest.raises(errdefs.Unavailable, match="CERTIFICATE_VERIFY_FAILED") as ei:
            await res.resolve()
    assert SECRET not in str(ei.value) and "token request" in str(ei.value)
    assert tok.seen == []  # the handshake failed: no request, no header, went out
    assert [s.headers.get("authorization") for s in reg.seen] == [None]


async def test_token_endpoint_is_verified_with_the_registrys_ca_only(
        pki: tuple[TestCA, TestCA], servers: list[FakeRegistry], tmp_path: Path) -> None:
    """The CA the registry's hosts.toml names verifies its token endpoint on another host;
    a registry trusted by ``skip_verify`` alone lends its token endpoint nothing."""
    ca = pki[0]
    reg, tok = serve(ca), serve(ca)
    servers += [reg, tok]
    protected(reg, f"https://localhost:{tok.port}/token")
    token_route(tok)
    async with resolver(f"{reg.host}/r:latest", credentials=CredentialStore(Asked()),
                        hosts_dir=hosts_dir(tmp_path / "ca", reg, "https", f'ca = "{ca.ca}"')) as res:
        await res.resolve()
    assert len(tok.seen) == 1
    async with resolver(f"{reg.host}/r:latest", credentials=CredentialStore(Asked()),
                        hosts_dir=hosts_dir(tmp_path / "skip", reg, "https", "skip_verify = true")) as res:
        with pytest.raises(errdefs.Unavailable, match="CERTIFICATE_VERIFY_FAILED") as ei:
            await res.resolve()
    assert "token request" in str(ei.value)  # the registry answered; its token endpoint was refused
    assert len(tok.seen) == 1
