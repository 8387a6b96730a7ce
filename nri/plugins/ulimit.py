"""An NRI plugin setting rlimits of new containers.

Defaults from its config, per container from the annotation
``ulimits.noderesource.dev`` (also ``.../container.<name>`` and ``.../pod``), a JSON list::

    # config
    [rlimits]
    nofile = { soft = 4096, hard = 8192 }

    # annotation
    ulimits.noderesource.dev/container.web='[{"type": "nofile", "soft": 1024, "hard": 2048}]'

Types are OCI's (``RLIMIT_NOFILE``) or short (``nofile``, ``NOFILE``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.stub import Adjustment, Plugin, run

from .common import annotation, parse_toml, parser, stub_args

ANNOTATION = "ulimits.noderesource.dev"
log = logging.getLogger("nri-ulimit")


def rlimit_type(name: str) -> str:
    name = name.strip().upper()
    return name if name.startswith("RLIMIT_") else "RLIMIT_" + name


def parse_limit(entry: Any) -> tuple[str, int, int]:
    if not isinstance(entry, dict) or "type" not in entry:
        raise ValueError(f"bad rlimit {entry!r}")
    soft = int(entry.get("soft", entry.get("hard")) or 0)
    hard = int(entry.get("hard", soft))
    if soft > hard:
        raise ValueError(f"rlimit {entry['type']}: soft {soft} > hard {hard}")
    return rlimit_type(str(entry["type"])), hard, soft


class Ulimit(Plugin):
    def __init__(self) -> None:
        self.defaults: dict[str, tuple[int, int]] = {}

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        for name, value in parse_toml(config).get("rlimits", {}).items():
            t, hard, soft = parse_limit({"type": name, **value})
            self.defaults[t] = (hard, soft)

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Adjustment | None:
        limits = dict(self.defaults)
        raw = annotation(ANNOTATION, pod, container)
        if raw:
            for entry in json.loads(raw):
                t, hard, soft = parse_limit(entry)
                limits[t] = (hard, soft)
        if not limits:
            return None
        adj = Adjustment()
        for t, (hard, soft) in sorted(limits.items()):
            adj.add_rlimit(t, hard, soft)
        return adj


def main(argv: list[str] | None = None) -> int:
    p = parser("nri-ulimit", __doc__ or "")
    ns = p.parse_args(argv)
    return run(Ulimit(), **stub_args(ns, "ulimit"))


if __name__ == "__main__":
    sys.exit(main())
