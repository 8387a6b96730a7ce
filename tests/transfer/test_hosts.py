"""hosts.toml (certs.d) as containerd reads it: lookup order, mirrors first, capabilities,
ca / client / skip_verify / header / override_path, docker-style certs, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage import errdefs
from moorage.services.transfer.registry.hosts import registry_hosts


def write(root: Path, name: str, text: str) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(text)
    return d


def test_defaults() -> None:
    [h] = registry_hosts("docker.io")
    assert (h.scheme, h.host, h.path) == ("https", "registry-1.docker.io", "/v2")
    [h] = registry_hosts("localhost:5000")
    assert h.scheme == "http"
    [h] = registry_hosts("localhost:5000", default_scheme="https")
    assert h.scheme == "https"
    [h] = registry_hosts("example.com")
    assert (h.scheme, h.host) == ("https", "example.com")


def test_mirrors_in_order_then_server(tmp_path: Path) -> None:
    write(tmp_path, "example.com", '''
server = "https://upstream.example.com"
capabilities = ["pull", "resolve", "push"]
[host."https://m1.local"]
  capabilities = ["pull"]
  ca = "m1.crt"
  [host."https://m1.local".header]
    x-one = "1"
    x-many = ["a", "b"]
[host."http://m2.local:5000/custom/api"]
  override_path = true
  skip_verify = true
  client = [["c.cert", "c.key"]]
''')
    hs = registry_hosts("example.com", str(tmp_path), headers={"X-Req": "r"})
    assert [(h.scheme, h.host, h.path) for h in hs] == [
        ("https", "m1.local", "/v2"), ("http", "m2.local:5000", "/custom/api"),
        ("https", "upstream.example.com", "/v2")]
    assert hs[0].capabilities == frozenset({"pull"})
    assert hs[0].ca == (tmp_path / "example.com" / "m1.crt",)
    assert hs[0].headers["x-many"] == ("a", "b") and hs[0].headers["X-Req"] == ("r",)
    assert hs[1].skip_verify and hs[1].client == ((tmp_path / "example.com" / "c.cert", tmp_path / "example.com" / "c.key"),)
    assert hs[0].mirror_of == "example.com" and hs[2].mirror_of == ""


def test_lookup_order_and_default(tmp_path: Path) -> None:
    write(tmp_path, "_default", 'server = "https://default.local"\n')
    write(tmp_path, "reg.local_5000_", 'server = "https://underscore.local"\n')
    assert registry_hosts("other.local", str(tmp_path))[-1].host == "default.local"
    assert registry_hosts("reg.local:5000", str(tmp_path))[-1].host == "underscore.local"
    write(tmp_path, "reg.local:5000", 'server = "https://exact.local"\n')
    assert registry_hosts("reg.local:5000", str(tmp_path))[-1].host == "exact.local"
    # several roots: first with a match wins
    other = tmp_path / "second"
    write(other, "only.here", 'server = "https://second.local"\n')
    assert registry_hosts("only.here", f"{tmp_path / 'nothing'}:{other}")[-1].host == "second.local"


def test_no_server_means_the_host_itself(tmp_path: Path) -> None:
    write(tmp_path, "reg.example", 'ca = "/etc/ca.crt"\n[host."https://mirror.example"]\n')
    hs = registry_hosts("reg.example", str(tmp_path))
    assert [h.host for h in hs] == ["mirror.example", "reg.example"]
    assert hs[-1].ca == (Path("/etc/ca.crt"),)


def test_docker_style_certs(tmp_path: Path) -> None:
    d = tmp_path / "reg.example"
    d.mkdir()
    (d / "ca.crt").write_text("x")
    (d / "client.cert").write_text("x")
    (d / "client.key").write_text("x")
    [h] = registry_hosts("reg.example", str(tmp_path))
    assert h.ca == (d / "ca.crt",) and h.client == ((d / "client.cert", d / "client.key"),)
    (d / "lonely.cert").write_text("x")
    with pytest.raises(errdefs.InvalidArgument, match="missing key"):
        registry_hosts("reg.example", str(tmp_path))


@pytest.mark.parametrize("text", [
    'server = 5', 'capabilities = ["fly"]', 'skip_verify = "yes"', '[host."ftp://x"]',
    '[host."https://u:p@x"]', 'this is not toml', 'client = [1]',
])
def test_invalid_files(tmp_path: Path, text: str) -> None:
    write(tmp_path, "bad.example", text)
    with pytest.raises(errdefs.InvalidArgument):
        registry_hosts("bad.example", str(tmp_path))
