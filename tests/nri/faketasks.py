"""A stand-in runtime for NRI tests: serves containerd.services.tasks.v1.Tasks Update and
Kill, appending each call as a JSON line to ``[faketasks] out``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import empty_pb2

from moorage.api.containerd.services.tasks.v1 import tasks_pb2
from moorage.api.containerd.services.tasks.v1.tasks_ttrpc import TasksServicer
from moorage.namespaces import namespace
from moorage.registry import BuildContext, Process


@dataclass(frozen=True)
class FakeTasksConfig:
    out: str = ""


class Tasks(TasksServicer):
    def __init__(self, out: str) -> None:
        self.out = out

    def _log(self, entry: dict[str, Any]) -> None:
        with open(self.out, "a") as f:
            f.write(json.dumps(entry) + "\n")

    async def Update(self, request: tasks_pb2.UpdateTaskRequest, ctx: Any) -> empty_pb2.Empty:
        if request.container_id == "missing":
            from moorage import errdefs

            raise errdefs.NotFound("container missing")
        self._log({"op": "update", "id": request.container_id, "ns": namespace(),
                   "origin": ctx.metadata.get("moorage-nri-origin"),
                   "type_url": request.resources.type_url, "resources": json.loads(request.resources.value)})
        return empty_pb2.Empty()

    async def Kill(self, request: tasks_pb2.KillRequest, ctx: Any) -> empty_pb2.Empty:
        self._log({"op": "kill", "id": request.container_id, "ns": namespace(), "signal": request.signal,
                   "all": request.all})
        return empty_pb2.Empty()


async def build(ctx: BuildContext) -> Sequence[object]:
    return [Tasks(ctx.settings.out)]


PROCESS = Process(name="faketasks", services=("containerd.services.tasks.v1.Tasks",), build=build,
                  config=FakeTasksConfig)
