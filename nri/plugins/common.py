"""What the sample plugins share: flags, config parsing, annotation lookup."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from moorage.api.nri.pkg.api import api_pb2 as api


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=name, description=doc)
    p.add_argument("--name", default=None, help="plugin name (default: $NRI_PLUGIN_NAME or argv[0])")
    p.add_argument("--idx", default=None, help="plugin index, two digits")
    p.add_argument("--socket-path", default=None, help="NRI socket (default /var/run/nri/nri.sock)")
    return p


def stub_args(ns: argparse.Namespace, default_name: str) -> dict[str, Any]:
    import os

    name = ns.name or os.environ.get("NRI_PLUGIN_NAME") or None
    if name is None:
        import sys

        base = os.path.basename(sys.argv[0])
        name = None if (len(base) > 3 and base[:2].isdigit() and base[2] == "-") else default_name
    return {"name": name, "idx": ns.idx, "socket_path": ns.socket_path}


def parse_toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text) if text.strip() else {}


def pairs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def annotation(key: str, pod: api.PodSandbox, container: api.Container) -> str | None:
    """The effective value of annotation ``key`` for ``container``: ``key/container.<name>``
    then ``key/pod`` then ``key``, looked up in the container's then the pod's annotations."""
    for source in (container.annotations, pod.annotations):
        for k in (f"{key}/container.{container.name}", f"{key}/pod", key):
            if k in source:
                return source[k]
    return None


def merged(*maps: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in maps:
        out.update(m)
    return out
