"""Async clients with the contract's shapes over ttrpc (the proxy's socket or the runtime's).

`ContainersClient` implements contract.ContainerStore, `TasksClient` the parts of
contract.TaskService other processes use (create, start, delete, get, list, kill, wait).
The namespace travels from the caller's context (`moorage.namespaces.namespace()`).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2, field_mask_pb2

from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.namespaces import metadata, namespace

from . import wire
from .contract import Container, CreateTask, ExitInfo, ProcessState, Status, StdIO

if TYPE_CHECKING:
    from ttrpc.client import Client

CONTAINERS = "containerd.services.containers.v1.Containers"
TASKS = "containerd.services.tasks.v1.Tasks"


def _from_pb(m: cpb.Container) -> Container:
    c = wire.container_from_pb(m)
    c.created_at = wire.ns_of(m.created_at)
    c.updated_at = wire.ns_of(m.updated_at)
    return c


class ContainersClient:
    def __init__(self, client: Client, timeout: float | None = 30.0) -> None:
        self.client = client
        self.timeout = timeout

    async def _call(self, method: str, req: object, resp: type) -> object:
        return await self.client.unary(CONTAINERS, method, req, resp, timeout=self.timeout,
                                       metadata=metadata(namespace()))

    async def get(self, id: str) -> Container:
        r = await self._call("Get", cpb.GetContainerRequest(id=id), cpb.GetContainerResponse)
        assert isinstance(r, cpb.GetContainerResponse)
        return _from_pb(r.container)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Container]:
        r = await self._call("List", cpb.ListContainersRequest(filters=list(filters)),
                             cpb.ListContainersResponse)
        assert isinstance(r, cpb.ListContainersResponse)
        return [_from_pb(c) for c in r.containers]

    async def create(self, container: Container) -> Container:
        r = await self._call("Create", cpb.CreateContainerRequest(
            container=wire.container_to_pb(container)), cpb.CreateContainerResponse)
        assert isinstance(r, cpb.CreateContainerResponse)
        return _from_pb(r.container)

    async def update(self, container: Container, fieldpaths: Sequence[str] = ()) -> Container:
        req = cpb.UpdateContainerRequest(container=wire.container_to_pb(container))
        if fieldpaths:
            req.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(fieldpaths)))
        r = await self._call("Update", req, cpb.UpdateContainerResponse)
        assert isinstance(r, cpb.UpdateContainerResponse)
        return _from_pb(r.container)

    async def delete(self, id: str) -> None:
        await self._call("Delete", cpb.DeleteContainerRequest(id=id), empty_pb2.Empty)


class TasksClient:
    def __init__(self, client: Client, timeout: float | None = 30.0) -> None:
        self.client = client
        self.timeout = timeout

    async def _call(self, method: str, req: object, resp: type,
                    timeout: float | None = -1.0) -> object:
        return await self.client.unary(TASKS, method, req, resp,
                                       timeout=self.timeout if timeout == -1.0 else timeout,
                                       metadata=metadata(namespace()))

    async def create(self, req: CreateTask) -> ProcessState:
        m = tpb.CreateTaskRequest(container_id=req.container_id,
                                  rootfs=wire.mounts_out(req.rootfs), stdin=req.stdio.stdin,
                                  stdout=req.stdio.stdout, stderr=req.stdio.stderr,
                                  terminal=req.stdio.terminal, runtime_path=req.runtime_path)
        if req.options is not None:
            m.options.CopyFrom(wire.any_out(req.options))
        r = await self._call("Create", m, tpb.CreateTaskResponse)
        assert isinstance(r, tpb.CreateTaskResponse)
        return ProcessState(req.container_id, req.container_id, r.pid, Status.CREATED, req.stdio)

    async def start(self, container_id: str, exec_id: str = "") -> int:
        r = await self._call("Start", tpb.StartRequest(container_id=container_id,
                                                       exec_id=exec_id), tpb.StartResponse)
        assert isinstance(r, tpb.StartResponse)
        return int(r.pid)

    async def delete(self, container_id: str) -> ExitInfo:
        r = await self._call("Delete", tpb.DeleteTaskRequest(container_id=container_id),
                             tpb.DeleteResponse)
        assert isinstance(r, tpb.DeleteResponse)
        return ExitInfo(r.pid, r.exit_status, wire.ns_of(r.exited_at))

    async def get(self, container_id: str, exec_id: str = "") -> ProcessState:
        r = await self._call("Get", tpb.GetRequest(container_id=container_id, exec_id=exec_id),
                             tpb.GetResponse)
        assert isinstance(r, tpb.GetResponse)
        p = r.process
        return ProcessState(p.container_id, p.id, p.pid, Status(p.status),
                            StdIO(p.stdin, p.stdout, p.stderr, p.terminal), p.exit_status,
                            wire.ns_of(p.exited_at))

    async def kill(self, container_id: str, signal: int, exec_id: str = "",
                   all: bool = False) -> None:
        await self._call("Kill", tpb.KillRequest(container_id=container_id, exec_id=exec_id,
                                                 signal=signal, all=all), empty_pb2.Empty)

    async def wait(self, container_id: str, exec_id: str = "") -> ExitInfo:
        r = await self._call("Wait", tpb.WaitRequest(container_id=container_id,
                                                     exec_id=exec_id), tpb.WaitResponse,
                             timeout=None)
        assert isinstance(r, tpb.WaitResponse)
        return ExitInfo(0, r.exit_status, wire.ns_of(r.exited_at))
