"""ttrpc servicers for containers.v1 Containers and tasks.v1 Tasks: decode, call, encode.

Errors cross as errdefs kinds. Containers publishes /containers/{create,update,delete};
the /tasks/* events come from the shims (and from the task manager for dead shims).
The log label: a container created with `moorage/logging=file` has its task's stdout and
stderr logged by the runtime; the runtime (never the client) sets `moorage/log-path`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from moorage.api.containerd.events import container_pb2 as cev
from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
from moorage.api.containerd.services.containers.v1.containers_ttrpc import ContainersServicer
from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.api.containerd.services.tasks.v1.tasks_ttrpc import TasksServicer
from moorage.api.containerd.types import metrics_pb2
from moorage.errdefs import FailedPrecondition, InvalidArgument, NotImplemented
from moorage.namespaces import namespace

from . import wire
from .containers import SqliteContainerStore
from .contract import Container, CreateTask, StdIO
from .nri import NRI_ORIGIN_KEY
from .tasks import LOG_LABEL, LOG_PATH_LABEL, TaskManager
from .versions import RuntimePolicy, oci_binary

if TYPE_CHECKING:
    from ttrpc.server import Context

    from moorage.events import EventPublisher


def _fix_log_labels(c: Container, tasks: TaskManager) -> None:
    c.labels.pop(LOG_PATH_LABEL, None)
    if c.labels.get(LOG_LABEL) == "file":
        c.labels[LOG_PATH_LABEL] = str(tasks.log_path(namespace(), c.id))


class ContainersService(ContainersServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, store: SqliteContainerStore, tasks: TaskManager,
                 publisher: EventPublisher) -> None:
        self.store = store
        self.tasks = tasks
        self.publisher = publisher

    async def _publish(self, topic: str, event: object) -> None:
        with contextlib.suppress(Exception):
            await self.publisher.publish(topic, event)  # type: ignore[arg-type]

    async def Get(self, request: cpb.GetContainerRequest, ctx: Context) -> cpb.GetContainerResponse:
        return cpb.GetContainerResponse(
            container=wire.container_to_pb(await self.store.get(request.id)))

    async def List(self, request: cpb.ListContainersRequest,
                   ctx: Context) -> cpb.ListContainersResponse:
        cs = await self.store.list(list(request.filters))
        return cpb.ListContainersResponse(containers=[wire.container_to_pb(c) for c in cs])

    async def ListStream(self, request: cpb.ListContainersRequest,
                         ctx: Context) -> AsyncIterator[cpb.ListContainerMessage]:
        for c in await self.store.list(list(request.filters)):
            yield cpb.ListContainerMessage(container=wire.container_to_pb(c))

    async def Create(self, request: cpb.CreateContainerRequest,
                     ctx: Context) -> cpb.CreateContainerResponse:
        c = wire.container_from_pb(request.container)
        _fix_log_labels(c, self.tasks)
        c = await self.store.create(c)
        ev = cev.ContainerCreate(id=c.id, image=c.image)
        ev.runtime.name = c.runtime.name
        if c.runtime.options is not None:
            ev.runtime.options.CopyFrom(wire.any_out(c.runtime.options))
        await self._publish("/containers/create", ev)
        return cpb.CreateContainerResponse(container=wire.container_to_pb(c))

    async def Update(self, request: cpb.UpdateContainerRequest,
                     ctx: Context) -> cpb.UpdateContainerResponse:
        c = wire.container_from_pb(request.container)
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        if any(p == f"labels.{LOG_PATH_LABEL}" for p in paths):
            raise InvalidArgument(f"label {LOG_PATH_LABEL} is set by the runtime")
        current = await self.store.get(c.id)
        if LOG_PATH_LABEL in current.labels:
            c.labels[LOG_PATH_LABEL] = current.labels[LOG_PATH_LABEL]
        elif not paths or "labels" in paths:
            c.labels.pop(LOG_PATH_LABEL, None)
        c = await self.store.update(c, paths)
        await self._publish("/containers/update", cev.ContainerUpdate(
            id=c.id, image=c.image, labels=c.labels, snapshot_key=c.snapshot_key))
        return cpb.UpdateContainerResponse(container=wire.container_to_pb(c))

    async def Delete(self, request: cpb.DeleteContainerRequest, ctx: Context) -> empty_pb2.Empty:
        ns = namespace()
        if self.tasks.has_task(ns, request.id):
            raise FailedPrecondition(
                f"cannot delete container {request.id}: its task must be deleted first")
        c = await self.store.get(request.id)
        await self.store.delete(request.id)
        if self.tasks.nri is not None:  # RemoveContainer (best effort, as containerd)
            try:
                spec = json.loads(c.spec.value) if c.spec is not None and c.spec.value else {}
            except ValueError:
                spec = {}
            await self.tasks.nri.remove(spec if isinstance(spec, dict) else {}, c.id, c.labels,
                                        c.sandbox)
        with contextlib.suppress(OSError, Exception):
            self.tasks.log_path(ns, request.id).unlink()
        await self._publish("/containers/delete", cev.ContainerDelete(id=request.id))
        return empty_pb2.Empty()


class TasksService(TasksServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, tasks: TaskManager, policy: RuntimePolicy | None = None) -> None:
        self.tasks = tasks
        self.policy = policy

    async def Create(self, request: tpb.CreateTaskRequest, ctx: Context) -> tpb.CreateTaskResponse:
        if request.HasField("checkpoint") and request.checkpoint.digest:
            raise NotImplemented("checkpoint restore is not supported")
        options = wire.any_in(request, "options")
        if self.policy is not None:  # the OCI runtime it would run: refused when vulnerable
            c = await self.tasks.containers.get(request.container_id)
            binary = oci_binary(c.runtime.name, options or c.runtime.options)
            if binary is not None:
                await self.policy.check(binary)
        st = await self.tasks.create(CreateTask(
            container_id=request.container_id,
            rootfs=wire.mounts_in(request.rootfs),
            stdio=StdIO(request.stdin, request.stdout, request.stderr, request.terminal),
            options=options,
            runtime_path=request.runtime_path,
        ))
        return tpb.CreateTaskResponse(container_id=request.container_id, pid=st.pid)

    async def Start(self, request: tpb.StartRequest, ctx: Context) -> tpb.StartResponse:
        return tpb.StartResponse(pid=await self.tasks.start(request.container_id,
                                                            request.exec_id))

    async def Delete(self, request: tpb.DeleteTaskRequest, ctx: Context) -> tpb.DeleteResponse:
        e = await self.tasks.delete(request.container_id)
        return tpb.DeleteResponse(id=request.container_id, **wire.exit_fields(e))

    async def DeleteProcess(self, request: tpb.DeleteProcessRequest,
                            ctx: Context) -> tpb.DeleteResponse:
        e = await self.tasks.delete_process(request.container_id, request.exec_id)
        return tpb.DeleteResponse(id=request.exec_id, **wire.exit_fields(e))

    async def Get(self, request: tpb.GetRequest, ctx: Context) -> tpb.GetResponse:
        st = await self.tasks.get(request.container_id, request.exec_id)
        return tpb.GetResponse(process=wire.process_to_pb(st))

    async def List(self, request: tpb.ListTasksRequest, ctx: Context) -> tpb.ListTasksResponse:
        sts = await self.tasks.list([request.filter] if request.filter else [])
        return tpb.ListTasksResponse(tasks=[wire.process_to_pb(s) for s in sts])

    async def Kill(self, request: tpb.KillRequest, ctx: Context) -> empty_pb2.Empty:
        await self.tasks.kill(request.container_id, request.signal, request.exec_id, request.all)
        return empty_pb2.Empty()

    async def Exec(self, request: tpb.ExecProcessRequest, ctx: Context) -> empty_pb2.Empty:
        await self.tasks.exec(request.container_id, request.exec_id,
                              wire.any_in(request, "spec"),
                              StdIO(request.stdin, request.stdout, request.stderr,
                                    request.terminal))
        return empty_pb2.Empty()

    async def ResizePty(self, request: tpb.ResizePtyRequest, ctx: Context) -> empty_pb2.Empty:
        await self.tasks.resize_pty(request.container_id, request.exec_id, request.width,
                                    request.height)
        return empty_pb2.Empty()

    async def CloseIO(self, request: tpb.CloseIORequest, ctx: Context) -> empty_pb2.Empty:
        await self.tasks.close_io(request.container_id, request.exec_id, request.stdin)
        return empty_pb2.Empty()

    async def Pause(self, request: tpb.PauseTaskRequest, ctx: Context) -> empty_pb2.Empty:
        await self.tasks.pause(request.container_id)
        return empty_pb2.Empty()

    async def Resume(self, request: tpb.ResumeTaskRequest, ctx: Context) -> empty_pb2.Empty:
        await self.tasks.resume(request.container_id)
        return empty_pb2.Empty()

    async def ListPids(self, request: tpb.ListPidsRequest, ctx: Context) -> tpb.ListPidsResponse:
        out = tpb.ListPidsResponse()
        for pid, info in await self.tasks.pids(request.container_id):
            p = out.processes.add(pid=pid)
            if info is not None:
                p.info.CopyFrom(wire.any_out(info))
        return out

    async def Checkpoint(self, request: tpb.CheckpointTaskRequest,
                         ctx: Context) -> tpb.CheckpointTaskResponse:
        raise NotImplemented("checkpoint is not supported")

    async def Update(self, request: tpb.UpdateTaskRequest, ctx: Context) -> empty_pb2.Empty:
        await self.tasks.update(request.container_id, wire.any_in(request, "resources"),
                                dict(request.annotations),
                                hooks=NRI_ORIGIN_KEY not in ctx.metadata)
        return empty_pb2.Empty()

    async def Metrics(self, request: tpb.MetricsRequest, ctx: Context) -> tpb.MetricsResponse:
        out = tpb.MetricsResponse()
        now = wire.ts(time.time_ns())
        for id, data in await self.tasks.metrics(list(request.filters)):
            m = metrics_pb2.Metric(id=id, timestamp=now)
            if data is not None:
                m.data.CopyFrom(wire.any_out(data))
            out.metrics.append(m)
        return out

    async def Wait(self, request: tpb.WaitRequest, ctx: Context) -> tpb.WaitResponse:
        e = await self.tasks.wait(request.container_id, request.exec_id)
        return tpb.WaitResponse(exit_status=e.exit_status, exited_at=wire.ts(e.exited_at))

