"""The services a CRI runtime is built on, reached through the proxy.

One lazily reconnecting connection (:class:`moorage.rpc.Peer`) to the proxy carries every
call; each call carries the running call's namespace (the contextvar the API adapter sets).
Snapshot calls also carry the context's lease (:mod:`moorage.leasing`).
The sandbox and runtime services' own clients are used as they are; the few task and
snapshot calls they do not wrap are here. Images are resolved by the ImageService's
``CriImages`` (services/cri/images.py), not here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moorage.leasing import Leases, call_metadata
from moorage.namespaces import metadata, namespace
from moorage.rpc import Peer
from moorage.services.runtime.contract import Mount, StdIO

if TYPE_CHECKING:
    from ttrpc.client import Client

    from moorage.services.runtime.client import ContainersClient, TasksClient
    from moorage.services.sandbox.client import ControllerClient, StoreClient

TASKS = "containerd.services.tasks.v1.Tasks"
SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
TIMEOUT = 30.0


class Peers:
    """Clients of the sandbox, runtime and snapshots services (through ``address``)."""

    def __init__(self, address: Path | str) -> None:
        self.peer = Peer(address)
        self.leases = Leases(address)
        """Leases (the proxy's): snapshots made for a new pod or container are held by one
        until the container record names them, so a garbage collection meanwhile keeps them."""

    async def client(self) -> Client:
        return await self.peer.client()

    async def close(self) -> None:
        await self.leases.close()
        await self.peer.close()

    async def sandbox_store(self) -> StoreClient:
        from moorage.services.sandbox.client import StoreClient

        return StoreClient(await self.client())

    async def controller(self, sandboxer: str) -> ControllerClient:
        from moorage.services.sandbox.client import ControllerClient

        return ControllerClient(await self.client(), sandboxer)

    async def containers(self) -> ContainersClient:
        from moorage.services.runtime.client import ContainersClient

        return ContainersClient(await self.client(), timeout=TIMEOUT)

    async def tasks(self) -> TasksClient:
        from moorage.services.runtime.client import TasksClient

        return TasksClient(await self.client(), timeout=TIMEOUT)

    async def _call(self, service: str, method: str, req: Any, resp: type[Any], timeout: float | None = TIMEOUT) -> Any:
        client = await self.client()
        md = {**metadata(namespace()), **(call_metadata() or {})}
        return await client.unary(service, method, req, resp, timeout=timeout, metadata=md)

    # snapshots ---------------------------------------------------------------------------

    async def prepare_snapshot(self, snapshotter: str, key: str, parent: str,
                               labels: Mapping[str, str] | None = None) -> list[Mount]:
        from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

        r = await self._call(SNAPSHOTS, "Prepare", spb.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})), spb.PrepareSnapshotResponse)
        return [Mount(m.type, m.source, m.target, tuple(m.options)) for m in r.mounts]

    async def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

        r = await self._call(SNAPSHOTS, "Mounts", spb.MountsRequest(snapshotter=snapshotter, key=key),
                             spb.MountsResponse)
        return [Mount(m.type, m.source, m.target, tuple(m.options)) for m in r.mounts]

    async def snapshot_usage(self, snapshotter: str, key: str) -> tuple[int, int]:
        """(bytes, inodes) the snapshot ``key`` uses."""
        from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

        r = await self._call(SNAPSHOTS, "Usage", spb.UsageRequest(snapshotter=snapshotter, key=key),
                             spb.UsageResponse, timeout=10.0)
        return int(r.size), int(r.inodes)

    async def remove_snapshot(self, snapshotter: str, key: str) -> None:
        from google.protobuf import empty_pb2

        from moorage.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

        await self._call(SNAPSHOTS, "Remove", spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                         empty_pb2.Empty)

    # tasks beyond TasksClient --------------------------------------------------------------

    async def exec(self, container_id: str, exec_id: str, process: Mapping[str, Any], stdio: StdIO) -> None:
        from google.protobuf import any_pb2, empty_pb2

        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        req = tpb.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, stdin=stdio.stdin, stdout=stdio.stdout,
            stderr=stdio.stderr, terminal=stdio.terminal,
            spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode()))
        await self._call(TASKS, "Exec", req, empty_pb2.Empty)

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        await self._call(TASKS, "DeleteProcess", tpb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                         tpb.DeleteResponse)

    async def update_task(self, container_id: str, resources: Mapping[str, Any]) -> None:
        from google.protobuf import any_pb2, empty_pb2

        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        req = tpb.UpdateTaskRequest(container_id=container_id)
        req.resources.CopyFrom(any_pb2.Any(type_url=RESOURCES_TYPE_URL, value=json.dumps(resources).encode()))
        await self._call(TASKS, "Update", req, empty_pb2.Empty)

    async def metrics(self, container_ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        """The shim's measurement (type URL, bytes) of each of ``container_ids`` that has a
        running task, from one Tasks.Metrics call; ids without one are left out."""
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        if not container_ids:
            return {}
        r = await self._call(TASKS, "Metrics", tpb.MetricsRequest(filters=[f"id=={i}" for i in container_ids]),
                             tpb.MetricsResponse, timeout=10.0)
        wanted = set(container_ids)
        return {m.id: (m.data.type_url, bytes(m.data.value)) for m in r.metrics if m.id in wanted and m.data.type_url}

    async def pids(self, container_id: str) -> Sequence[int]:
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        r = await self._call(TASKS, "ListPids", tpb.ListPidsRequest(container_id=container_id), tpb.ListPidsResponse)
        return [p.pid for p in r.processes]
