"""An NRI plugin adding environment variables and annotations to every new container.

Values come from flags (``--env K=V``, ``--annotation K=V``) and from its config (the
runtime passes ``/etc/nri/conf.d/NN-inject.conf`` to a pre-installed plugin)::

    [env]
    HELLO = "world"
    [annotations]
    "example.com/injected" = "yes"
"""

from __future__ import annotations

import sys

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.stub import Adjustment, Plugin, run

from .common import merged, pairs, parse_toml, parser, stub_args


class Injector(Plugin):
    def __init__(self, env: dict[str, str], annotations: dict[str, str]) -> None:
        self.env = env
        self.annotations = annotations

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        conf = parse_toml(config)
        self.env = merged(self.env, {str(k): str(v) for k, v in conf.get("env", {}).items()})
        self.annotations = merged(self.annotations, {str(k): str(v) for k, v in conf.get("annotations", {}).items()})

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Adjustment:
        adj = Adjustment()
        for k, v in self.env.items():
            adj.add_env(k, v)
        for k, v in self.annotations.items():
            adj.add_annotation(k, v)
        return adj


def main(argv: list[str] | None = None) -> int:
    p = parser("nri-inject", __doc__ or "")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--annotation", action="append", default=[])
    ns = p.parse_args(argv)
    return run(Injector(pairs(ns.env), pairs(ns.annotation)), **stub_args(ns, "inject"))


if __name__ == "__main__":
    sys.exit(main())
