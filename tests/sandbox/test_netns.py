"""Network namespace files: create, inspect, remove (root)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from moorage.services.sandbox import netns

from .conftest import in_netns

pytestmark = pytest.mark.root


@pytest.fixture
def path() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = f"/var/run/netns/mrgn-{secrets.token_hex(4)}"
    yield p
    netns.remove(p)


def test_create_inspect_remove(path: str, tmp_path: Path) -> None:
    own = os.readlink("/proc/thread-self/ns/net")
    netns.create(path)
    assert os.readlink("/proc/thread-self/ns/net") == own  # the caller never moved
    assert netns.is_netns(path)
    links = in_netns(path, "ip", "-o", "link")
    assert links.returncode == 0 and len(links.stdout.splitlines()) == 1 and "lo:" in links.stdout and "UP" in links.stdout
    assert os.path.basename(path) in os.listdir("/var/run/netns")
    assert path in netns.listdir("/var/run/netns", os.path.basename(path)[:5])
    with pytest.raises(FileExistsError):
        netns.create(path)
    assert netns.is_netns(path)  # a failed create leaves the existing one alone
    netns.remove(path)
    netns.remove(path)  # idempotent
    assert not os.path.exists(path) and not netns.is_netns(path)
    plain = tmp_path / "plain"
    plain.write_text("")
    assert not netns.is_netns(str(plain))
    assert f" {path} " not in Path("/proc/self/mounts").read_text()
