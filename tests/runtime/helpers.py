"""A small blocking driver for the runtime through the proxy, and an events recorder."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, empty_pb2

from moorage import errdefs
from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
from moorage.api.containerd.services.events.v1 import events_pb2 as epb
from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from moorage.api.containerd.types import event_pb2, mount_pb2
from moorage.api.containerd.types.runc.options import oci_pb2
from moorage.services.runtime import spec as sp
from ttrpc.blocking import Client

CONTAINERS = "containerd.services.containers.v1.Containers"
TASKS = "containerd.services.tasks.v1.Tasks"
EVENTS = "containerd.services.events.v1.Events"


class Rt:
    def __init__(self, address: str, namespace: str = "default") -> None:
        self.address = address
        self.ns = namespace
        self.md = {"containerd-namespace-ttrpc": namespace}
        self.c = Client(address, error_factory=errdefs.from_status)

    def close(self) -> None:
        self.c.close()

    def call(self, svc: str, method: str, req: Any, resp: Any, timeout: float | None = 30) -> Any:
        return self.c.unary(svc, method, req, resp, timeout=timeout, metadata=self.md)

    def container(self, id: str, args: Sequence[str], *, runtime: str = "io.containerd.runc.v2",
                  logged: bool = True, binary_name: str = "", annotations: dict[str, str] | None = None,
                  snapshotter: str = "", snapshot_key: str = "", **over: Any) -> Any:
        spec = sp.build_spec(self.ns, id, sp.ImageConfig(cmd=tuple(args)),
                             sp.Overrides(annotations=annotations or {}, **over))
        c = cpb.Container(id=id, labels={"moorage/logging": "file"} if logged else {},
                          snapshotter=snapshotter, snapshot_key=snapshot_key)
        c.runtime.name = runtime
        if binary_name:
            c.runtime.options.CopyFrom(any_pb2.Any(
                type_url="containerd.runc.v1.Options",
                value=oci_pb2.Options(binary_name=binary_name).SerializeToString()))
        c.spec.CopyFrom(any_pb2.Any(type_url=sp.SPEC_TYPE_URL, value=sp.dumps(spec)))
        return self.call(CONTAINERS, "Create", cpb.CreateContainerRequest(container=c),
                         cpb.CreateContainerResponse).container

    def create(self, id: str, rootfs: Path, **kw: Any) -> int:
        r = self.call(TASKS, "Create", tpb.CreateTaskRequest(
            container_id=id, rootfs=[mount_pb2.Mount(type="bind", source=str(rootfs),
                                                     options=["rbind", "rw"])], **kw),
            tpb.CreateTaskResponse)
        return int(r.pid)

    def start(self, id: str, exec_id: str = "") -> int:
        return int(self.call(TASKS, "Start", tpb.StartRequest(container_id=id, exec_id=exec_id),
                             tpb.StartResponse).pid)

    def run(self, id: str, rootfs: Path, args: Sequence[str], **kw: Any) -> int:
        self.container(id, args, **kw)
        self.create(id, rootfs)
        return self.start(id)

    def wait(self, id: str, exec_id: str = "", timeout: float | None = 30) -> int:
        return int(self.call(TASKS, "Wait", tpb.WaitRequest(container_id=id, exec_id=exec_id),
                             tpb.WaitResponse, timeout=timeout).exit_status)

    def get(self, id: str, exec_id: str = "") -> Any:
        return self.call(TASKS, "Get", tpb.GetRequest(container_id=id, exec_id=exec_id),
                         tpb.GetResponse).process

    def delete(self, id: str) -> Any:
        return self.call(TASKS, "Delete", tpb.DeleteTaskRequest(container_id=id), tpb.DeleteResponse)

    def kill(self, id: str, sig: int, exec_id: str = "", all: bool = False) -> None:
        self.call(TASKS, "Kill", tpb.KillRequest(container_id=id, exec_id=exec_id, signal=sig,
                                                 all=all), empty_pb2.Empty)

    def remove(self, id: str) -> None:
        self.call(CONTAINERS, "Delete", cpb.DeleteContainerRequest(id=id), empty_pb2.Empty)

    def cleanup(self) -> None:
        """Best effort after a test: kill and delete every task, remove every container."""
        try:
            c = Client(self.address, error_factory=errdefs.from_status)
        except Exception:
            return
        try:
            self.c = c
            tasks = self.call(TASKS, "List", tpb.ListTasksRequest(), tpb.ListTasksResponse).tasks
            for t in tasks:
                try:
                    if t.status != 3:
                        self.kill(t.container_id, 9, all=True)
                        self.wait(t.container_id, timeout=10)
                    self.delete(t.container_id)
                except Exception:
                    pass
            for ctr in self.call(CONTAINERS, "List", cpb.ListContainersRequest(),
                                 cpb.ListContainersResponse).containers:
                try:
                    self.remove(ctr.id)
                except Exception:
                    pass
        except Exception:
            pass
        finally:
            c.close()

    def log(self, container: Any) -> str:
        return Path(container.labels["moorage/log-path"]).read_text()


class Events:
    """Records envelopes from Events.Subscribe in a thread (its own connection)."""

    def __init__(self, address: str, filters: Sequence[str]) -> None:
        self.items: list[event_pb2.Envelope] = []
        self.cond = threading.Condition()
        self.client = Client(address, error_factory=errdefs.from_status)
        self.stream = self.client.server_stream(EVENTS, "Subscribe",
                                                epb.SubscribeRequest(filters=list(filters)),
                                                event_pb2.Envelope)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for env in self.stream:
                with self.cond:
                    self.items.append(env)
                    self.cond.notify_all()
        except Exception:
            pass

    def topics(self) -> list[str]:
        with self.cond:
            return [e.topic for e in self.items]

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred([e.topic for e in self.items]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"events so far: {[e.topic for e in self.items]}")
                self.cond.wait(left)
            return [e.topic for e in self.items]

    def close(self) -> None:
        self.client.close()


def shim_pid(namespace: str, id: str) -> int:
    """The pid of the shim server started for `namespace`/`id` (SO_PEERCRED would name the
    `start` process, which created the socket and exited)."""
    (pid,) = shims_of(namespace, id)
    return pid


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(pred: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    """Poll a condition (not a sleep as synchronisation: the condition is the signal)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what or "condition not reached")
        time.sleep(0.02)


def shims_of(namespace: str, id: str = "") -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and \
                b"-namespace" in argv and argv[argv.index(b"-namespace") + 1] == namespace.encode() \
                and (not id or argv[argv.index(b"-id") + 1] == id.encode()):
            if alive(int(d)):
                out.append(int(d))
    return out


def read_pty(fd: int, until: bytes = b"") -> bytes:
    """What the other side of pty ``fd`` writes up to its end (with ``until``: up to the first
    chunk that completes it)."""
    out = b""
    while not (until and until in out):
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out
