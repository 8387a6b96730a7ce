"""The registry client against Debian's docker-registry: plain, TLS, basic and token auth;
pushes read back by skopeo; chunked uploads, cross-repository mounts, Range resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.services.transfer import oci, reference
from moorage.services.transfer.registry.auth import CredentialStore, Credentials
from moorage.services.transfer.registry.resolver import Resolver, ResolverOptions, verify_stream

from . import registry as regfix
from .conftest import hosts_dir_for


def creds_for(reg: regfix.Registry, calls: list[tuple[str, str]] | None = None) -> CredentialStore:
    async def cb(host: str, ref: str, challenge: str) -> Credentials | None:
        if calls is not None:
            calls.append((host, challenge))
        if reg.username and host == reg.host:
            return Credentials(reg.username, reg.password or "")
        return None
    return CredentialStore(cb)


async def pull_all(res: Resolver) -> dict[str, bytes]:
    desc, body = await res.resolve()
    doc = oci.parse_document(body, desc.media_type)
    assert isinstance(doc, oci.Manifest)
    out = {desc.digest: body, doc.config.digest: await res.fetch_document(doc.config, oci.MAX_JSON_SIZE)}
    for layer in doc.layers:
        async with res.open_blob(layer) as it:
            out[layer.digest] = b"".join([c async for c in verify_stream(it, layer)])
    return out


@pytest.mark.parametrize("variant", ["plain", "tls", "basic", "token"])
async def test_pull_each_variant(variant: str, request: pytest.FixtureRequest, layout: Path, tmp_path: Path) -> None:
    reg: regfix.Registry = request.getfixturevalue(f"{variant}_registry")
    ref = regfix.push(layout, reg, f"pull/{variant}")
    calls: list[tuple[str, str]] = []
    opts = ResolverOptions(hosts_dir=hosts_dir_for(reg, tmp_path), credentials=creds_for(reg, calls))
    async with Resolver(reference.parse(ref), opts) as res:
        blobs = await pull_all(res)
    assert len(blobs) == 6  # manifest, config, 4 layers
    for d, data in blobs.items():
        assert oci.digest_of(data) == d
    if variant in ("basic", "token"):
        assert calls and all(h == reg.host for h, _ in calls)
    else:
        assert calls == []


async def test_wrong_credentials_refused_without_leaking(basic_registry: regfix.Registry, layout: Path,
                                                         tmp_path: Path) -> None:
    ref = regfix.push(layout, basic_registry, "pull/wrongcreds")

    async def cb(host: str, r: str, ch: str) -> Credentials:
        return Credentials("moor", "not-the-password-XYZZY")
    opts = ResolverOptions(hosts_dir=hosts_dir_for(basic_registry, tmp_path), credentials=CredentialStore(cb))
    async with Resolver(reference.parse(ref), opts) as res:
        with pytest.raises(errdefs.Unauthenticated) as ei:
            await res.resolve()
    assert "XYZZY" not in str(ei.value) and "Basic" not in str(ei.value)


async def test_anonymous_refused_by_basic_registry(basic_registry: regfix.Registry, layout: Path,
                                                   tmp_path: Path) -> None:
    ref = regfix.push(layout, basic_registry, "pull/anon")
    async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=hosts_dir_for(basic_registry, tmp_path))) as res:
        with pytest.raises(errdefs.Unauthenticated):
            await res.resolve()


async def test_credentials_file(token_registry: regfix.Registry, layout: Path, tmp_path: Path) -> None:
    from moorage.services.transfer.registry.auth import load_credentials_file
    import base64
    ref = regfix.push(layout, token_registry, "pull/credsfile")
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"auths": {token_registry.host: {
        "auth": base64.b64encode(f"{regfix.USER}:{regfix.PASSWORD}".encode()).decode()}}}))
    opts = ResolverOptions(hosts_dir=hosts_dir_for(token_registry, tmp_path),
                           credentials=CredentialStore(None, load_credentials_file(f)))
    async with Resolver(reference.parse(ref), opts) as res:
        assert len(await pull_all(res)) == 6


async def test_tls_without_ca_fails(tls_registry: regfix.Registry, layout: Path) -> None:
    ref = regfix.push(layout, tls_registry, "pull/noca")
    async with Resolver(reference.parse(ref), ResolverOptions(default_scheme="https")) as res:
        with pytest.raises(errdefs.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await res.resolve()


async def test_tls_skip_verify(tls_registry: regfix.Registry, layout: Path, tmp_path: Path) -> None:
    ref = regfix.push(layout, tls_registry, "pull/skipverify")
    d = tmp_path / "certs.d" / tls_registry.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(f'server = "https://{tls_registry.host}"\nskip_verify = true\n')
    async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=str(tmp_path / "certs.d"))) as res:
        assert len(await pull_all(res)) == 6


async def test_certs_d_docker_style_ca(tls_registry: regfix.Registry, layout: Path, tmp_path: Path) -> None:
    ref = regfix.push(layout, tls_registry, "pull/certsd")
    d = tmp_path / "certs.d" / tls_registry.host
    d.mkdir(parents=True)
    assert tls_registry.ca
    (d / "ca.crt").write_bytes(tls_registry.ca.ca.read_bytes())
    async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=str(tmp_path / "certs.d"),
                                                              default_scheme="https")) as res:
        assert len(await pull_all(res)) == 6


async def test_mirror_tried_first_then_server(plain_registry: regfix.Registry, tls_registry: regfix.Registry,
                                              layout: Path, tmp_path: Path) -> None:
    """A mirror that lacks the repo (NotFound) falls through to the server; a mirror that
    has it serves it (with ?ns=)."""
    ref = regfix.push(layout, plain_registry, "mirror/app")
    d = tmp_path / "certs.d" / plain_registry.host
    d.mkdir(parents=True)
    assert tls_registry.ca
    (d / "hosts.toml").write_text(
        f'server = "http://{plain_registry.host}"\n'
        f'[host."https://{tls_registry.host}"]\n  capabilities = ["pull", "resolve"]\n  ca = "{tls_registry.ca.ca}"\n')
    async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=str(tmp_path / "certs.d"))) as res:
        assert [h.host for h in res.hosts] == [tls_registry.host, plain_registry.host]
        assert len(await pull_all(res)) == 6
    # now the mirror has it under the same path
    regfix.push(layout, tls_registry, "mirror/app")
    async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=str(tmp_path / "certs.d"))) as res:
        desc, _ = await res.resolve()
        assert desc.digest


async def test_digest_reference_verified(plain_registry: regfix.Registry, layout: Path) -> None:
    ref = regfix.push(layout, plain_registry, "pull/bydigest")
    async with Resolver(reference.parse(ref)) as res:
        desc, _ = await res.resolve()
    pinned = reference.parse(f"{plain_registry.host}/pull/bydigest@{desc.digest}")
    async with Resolver(pinned) as res:
        d2, _ = await res.resolve()
        assert d2.digest == desc.digest
    wrong = reference.parse(f"{plain_registry.host}/pull/bydigest@sha256:{'0' * 64}")
    async with Resolver(wrong) as res:
        with pytest.raises(errdefs.NotFound):
            await res.resolve()


async def test_range_resume(plain_registry: regfix.Registry, layout: Path) -> None:
    ref = regfix.push(layout, plain_registry, "pull/range")
    async with Resolver(reference.parse(ref)) as res:
        desc, body = await res.resolve()
        doc = oci.parse_document(body, desc.media_type)
        assert isinstance(doc, oci.Manifest)
        big = max(doc.layers, key=lambda d: d.size)
        async with res.open_blob(big) as it:
            full = b"".join([c async for c in it])
        async with res.open_blob(big, 1000) as it:
            tail = b"".join([c async for c in it])
        assert tail == full[1000:]
        with pytest.raises(errdefs.OutOfRange):
            async with res.open_blob(big, big.size + 1):
                pass


async def test_schema2_docker_manifest(plain_registry: regfix.Registry, layout: Path) -> None:
    ref = regfix.push(layout, plain_registry, "pull/v2s2", fmt="v2s2")
    async with Resolver(reference.parse(ref)) as res:
        desc, _ = await res.resolve()
        assert desc.media_type == oci.DOCKER_MANIFEST
        assert len(await pull_all(res)) == 6


async def _push_from(src: dict[str, bytes], res: Resolver, root: oci.Descriptor, tag: str,
                     mount_from: tuple[str, ...] = ()) -> list[str]:
    doc = oci.parse_document(src[root.digest], root.media_type)
    assert isinstance(doc, oci.Manifest)
    outcomes = []
    for d in (doc.config, *doc.layers):
        data = src[d.digest]

        async def reader(data: bytes = data) -> Any:
            for i in range(0, len(data), 7000):
                yield data[i:i + 7000]
        outcomes.append(await res.push_blob(d, reader, mount_from))
    await res.push_manifest(root, src[root.digest], tag)
    return outcomes


@pytest.mark.parametrize("variant", ["plain", "basic", "token"])
async def test_push_read_back_by_skopeo(variant: str, request: pytest.FixtureRequest, layout: Path,
                                        tmp_path: Path) -> None:
    reg: regfix.Registry = request.getfixturevalue(f"{variant}_registry")
    src_ref = regfix.push(layout, reg, f"push/src-{variant}")
    opts = ResolverOptions(hosts_dir=hosts_dir_for(reg, tmp_path), credentials=creds_for(reg))
    async with Resolver(reference.parse(src_ref), opts) as res:
        root, _ = await res.resolve()
        blobs = await pull_all(res)
    dst = reference.parse(f"{reg.host}/push/dst-{variant}:v1")
    async with Resolver(dst, ResolverOptions(hosts_dir=hosts_dir_for(reg, tmp_path), credentials=creds_for(reg),
                                             chunk_size=100_000)) as res:
        outcomes = await _push_from(blobs, res, root, "v1")
        assert set(outcomes) == {"pushed"}
        # second push: everything exists
        assert set(await _push_from(blobs, res, root, "v1")) == {"exists"}
    raw = regfix.skopeo_inspect(str(dst).replace(":v1", ":v1"), reg, raw=True)
    assert hashlib.sha256(json.dumps(raw).encode()).hexdigest() or raw["layers"]
    insp = regfix.skopeo_inspect(str(dst), reg)
    assert insp["Digest"] == root.digest


async def test_cross_repository_mount(plain_registry: regfix.Registry, layout: Path) -> None:
    src_ref = regfix.push(layout, plain_registry, "mount/src")
    async with Resolver(reference.parse(src_ref)) as res:
        root, _ = await res.resolve()
        blobs = await pull_all(res)
    dst = reference.parse(f"{plain_registry.host}/mount/dst:v1")
    async with Resolver(dst) as res:
        outcomes = await _push_from(blobs, res, root, "v1", mount_from=("mount/src",))
    assert set(outcomes) == {"mounted"}
    assert regfix.skopeo_inspect(str(dst), plain_registry)["Digest"] == root.digest


async def test_client_certificate_from_hosts_toml(mtls_registry: regfix.Registry, layout: Path,
                                                  tmp_path: Path) -> None:
    ref = regfix.push(layout, mtls_registry, "pull/mtls")
    assert mtls_registry.ca
    without = hosts_dir_for(mtls_registry, tmp_path / "without")
    async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=without)) as res:
        with pytest.raises(errdefs.Unavailable):
            await res.resolve()
    cert, key = mtls_registry.ca.client_pair("moor")
    with_pair = hosts_dir_for(mtls_registry, tmp_path / "with", f'client = [["{cert}", "{key}"]]\n')
    async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=with_pair)) as res:
        assert len(await pull_all(res)) == 6


async def test_refresh_token_and_header_credentials(token_registry: regfix.Registry, basic_registry: regfix.Registry,
                                                    layout: Path, tmp_path: Path) -> None:
    import base64
    ref = regfix.push(layout, token_registry, "pull/refresh")

    async def refresh(host: str, r: str, ch: str) -> Credentials:
        return Credentials("", regfix.REFRESH_TOKEN, "refresh")
    opts = ResolverOptions(hosts_dir=hosts_dir_for(token_registry, tmp_path / "t"), credentials=CredentialStore(refresh))
    async with Resolver(reference.parse(f"{token_registry.host}/pull/refresh-copy:1"), opts) as res:
        async with Resolver(reference.parse(ref), opts) as src:
            root, _ = await src.resolve()
            blobs = await pull_all(src)
        assert set(await _push_from(blobs, res, root, "1")) == {"pushed"}  # push scope granted via refresh
    assert token_registry.token and "refresh" in token_registry.token.seen_auth

    bref = regfix.push(layout, basic_registry, "pull/header")
    header = "Basic " + base64.b64encode(f"{regfix.USER}:{regfix.PASSWORD}".encode()).decode()

    async def hdr(host: str, r: str, ch: str) -> Credentials:
        return Credentials("", header, "header")
    opts = ResolverOptions(hosts_dir=hosts_dir_for(basic_registry, tmp_path / "b"), credentials=CredentialStore(hdr))
    async with Resolver(reference.parse(bref), opts) as res:
        assert len(await pull_all(res)) == 6


async def test_http_host_with_tls_settings_tries_https_first(plain_registry: regfix.Registry,
                                                            tls_registry: regfix.Registry, layout: Path,
                                                            tmp_path: Path) -> None:
    """containerd's HTTPFallback: `http://` + TLS settings -> https first, http if TLS fails."""
    assert tls_registry.ca
    for reg, expect in ((tls_registry, "https"), (plain_registry, "http")):
        ref = regfix.push(layout, reg, "pull/fallback")
        d = tmp_path / reg.variant / "certs.d" / reg.host
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text(f'server = "http://{reg.host}"\nca = "{tls_registry.ca.ca}"\n')
        async with Resolver(reference.parse(ref), ResolverOptions(hosts_dir=str(tmp_path / reg.variant / "certs.d"))) as res:
            assert len(await pull_all(res)) == 6
            assert bool(res.session._plain.get(reg.host)) == (expect == "http")
