"""An NRI plugin that logs every event it receives, one line each (to stdout or --log-file)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.stub import Plugin, run

from .common import parser, stub_args


class Logger(Plugin):
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def log(self, event: str, *parts: Any) -> None:
        self.out.write(" ".join([event, *map(str, parts)]) + "\n")
        self.out.flush()

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        self.log("configure", runtime_name, runtime_version)

    async def synchronize(self, pods: Any, containers: Any) -> None:
        self.log("synchronize", f"pods={len(pods)}", f"containers={len(containers)}")

    async def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.log("run_pod_sandbox", pod.id)

    async def update_pod_sandbox(self, pod: api.PodSandbox, overhead: Any, resources: Any) -> None:
        self.log("update_pod_sandbox", pod.id)

    async def post_update_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.log("post_update_pod_sandbox", pod.id)

    async def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.log("stop_pod_sandbox", pod.id)

    async def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        self.log("remove_pod_sandbox", pod.id)

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.log("create_container", container.id, container.name)

    async def post_create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.log("post_create_container", container.id)

    async def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.log("start_container", container.id)

    async def post_start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.log("post_start_container", container.id, f"pid={container.pid}")

    async def update_container(self, pod: api.PodSandbox, container: api.Container, resources: Any) -> None:
        self.log("update_container", container.id)

    async def post_update_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.log("post_update_container", container.id)

    async def stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.log("stop_container", container.id)

    async def remove_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.log("remove_container", container.id)

    async def validate_container_adjustment(self, request: api.ValidateContainerAdjustmentRequest) -> None:
        self.log("validate_container_adjustment", request.container.id)


def main(argv: list[str] | None = None) -> int:
    p = parser("nri-logger", __doc__ or "")
    p.add_argument("--log-file", default=None)
    p.add_argument("--events", default=None, help="comma-separated events (default: all)")
    ns = p.parse_args(argv)
    out = open(ns.log_file, "a") if ns.log_file else sys.stdout  # noqa: SIM115 - lives as long as the plugin
    plugin = Logger(out)
    if ns.events:
        events = [e for e in ns.events.split(",") if e]

        async def configure(config: str, runtime_name: str, runtime_version: str) -> list[str]:
            plugin.log("configure", runtime_name, runtime_version)
            return events

        plugin.configure = configure  # type: ignore[method-assign,assignment]
    return run(plugin, **stub_args(ns, "logger"))


if __name__ == "__main__":
    sys.exit(main())
