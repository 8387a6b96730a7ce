"""Config: typed sections, defaults in one place, refused with the key named."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from moorage import config as cfg
from moorage.registry import Process, load_records

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Own:
    depth: int = 3
    name: str = "x"
    ratio: float = 0.5
    tags: tuple[str, ...] = ("a",)
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.depth < 0:
            raise ValueError("depth must be >= 0")


async def _build(ctx: object) -> list[object]:
    return []


RECORDS = [
    Process(name="proxy", services=(), build=_build),
    Process(name="svc", services=("x.v1.X",), build=_build, config=Own, replica_safe=True),
    Process(name="solo", services=("y.v1.Y",), build=_build),
]


def test_defaults() -> None:
    c = cfg.parse({}, RECORDS)
    assert c.suite.root == Path("/var/lib/moorage")
    assert c.suite.proxy_address == Path("/run/moorage/moorage.sock.ttrpc")
    assert c.settings("svc") == Own()
    assert c.settings("solo") is None
    assert c.backend_sockets("svc") == ["/run/moorage/services/svc.sock"]


def test_rendered_defaults_load_back_to_the_defaults() -> None:
    text = cfg.render_defaults(RECORDS)
    assert cfg.loads(text, RECORDS) == cfg.parse({}, RECORDS)


def test_values_are_typed() -> None:
    c = cfg.loads(
        '[suite]\nroot = "/r"\nshutdown_timeout = 3\n[svc]\nreplicas = 3\ndepth = 7\ntags = ["p", "q"]\nratio = 1\n',
        RECORDS,
    )
    assert c.suite.root == Path("/r") and c.suite.shutdown_timeout == 3.0
    assert c.settings("svc") == Own(depth=7, tags=("p", "q"), ratio=1.0)
    assert c.backend_sockets("svc") == [f"/run/moorage/services/svc-{n}.sock" for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "text, key",
    [
        ("[suite]\nbogus = 1\n", "suite.bogus"),
        ("[nosuch]\n", "nosuch"),
        ("[svc]\nbogus = 1\n", "svc.bogus"),
        ("[solo]\ndepth = 1\n", "solo.depth"),
        ('[suite]\nshutdown_timeout = "soon"\n', "suite.shutdown_timeout"),
        ("[suite]\nroot = 5\n", "suite.root"),
        ('[suite]\nlog_level = "loud"\n', "suite.log_level"),
        ("[svc]\ndepth = true\n", "svc.depth"),
        ("[svc]\ndepth = 1.5\n", "svc.depth"),
        ("[svc]\ntags = [1]\n", "svc.tags[0]"),
        ('[svc]\ntags = "a"\n', "svc.tags"),
        ("[svc]\nreplicas = 0\n", "svc"),
        ("[svc]\ndepth = -1\n", "svc"),
        ("[solo]\nreplicas = 2\n", "solo.replicas"),
        ("[svc]\nenabled = 1\n", "svc.enabled"),
        ('[suite]\nroot = "relative"\n', "suite"),
        ("suite = 1\n", "suite"),
    ],
)
def test_bad_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.loads(text, RECORDS)
    assert info.value.key == key
    assert key in str(info.value)


def test_skipped_sections_are_accepted_unchecked() -> None:
    c = cfg.parse({"later": {"anything": 1}}, RECORDS, skipped={"later"})
    assert "later" not in c.processes


def test_bad_toml_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[suite\n")
    with pytest.raises(cfg.ConfigError):
        cfg.load(bad, RECORDS)
    with pytest.raises(cfg.ConfigError, match="no such file"):
        cfg.load(tmp_path / "missing.toml", RECORDS)


def _moorage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moorage.daemon", *args], capture_output=True, text=True, timeout=60
    )


def test_config_default_prints_a_valid_config(tmp_path: Path) -> None:
    out = _moorage("config", "default")
    assert out.returncode == 0, out.stderr
    assert "[suite]" in out.stdout and "[proxy]" in out.stdout
    path = tmp_path / "defaults.toml"
    path.write_text(out.stdout)
    check = _moorage("config", "check", "--config", str(path))
    assert check.returncode == 0, check.stderr
    records, _ = load_records()
    assert cfg.load(path, records) == cfg.parse({}, records, source=path)


def test_deploy_config_is_valid() -> None:
    check = _moorage("config", "check", "--config", str(REPO / "deploy" / "config.toml"))
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    "text, key",
    [
        ("[proxy]\nhealth_timeout = \"1s\"\n", "proxy.health_timeout"),
        ("[proxy]\nlisten = \"/x\"\n", "proxy.listen"),
        ("[suite]\nshutdown_timeout = []\n", "suite.shutdown_timeout"),
    ],
)
def test_a_process_refuses_to_start_on_a_bad_config(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[suite]\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n' + text if "[suite]" not in text else text)
    for args in (["serve", "proxy"], ["up"], ["config", "check"]):
        out = _moorage(*args, "--config", str(path))
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert key in out.stderr, out.stderr
    assert not (tmp_path / "state" / "moorage.sock.ttrpc").exists()
