"""The streaming backend on moorage's own services (contract.Backend), through the proxy.

- exec: fifos in a private directory under ``io_root`` (as `moor exec` and containerd's
  cio do), tasks.v1 Exec/Start in the container's task, ResizePty per size, CloseIO at the
  client's stdin EOF, Wait for the exit status, DeleteProcess.
- attach: the init process's stdio. Where the CRI process owns a container's stdio
  in-process, ``io_of(container_id)`` returns it (subscribe/write_stdin/close_stdin);
  otherwise the task's fifos are reopened (moorage.services.runtime.attach: the runtime's
  tee `attach-stdout|stderr` when there is one) and copied until their EOF or, with a Wait
  beside, shortly after the exit. stdin mode `once` (container label ``moorage/stdin``)
  closes the process's stdin when the attach ends.
- port_forward: the pod's network namespace from the sandbox service (Controller.Status
  ``netns_path``; empty = host network); the connection to ``127.0.0.1:port`` is made by a
  thread of its own that enters that namespace (setns) and ends after connecting.

Reading a fifo waits for readiness before each read: a fifo whose writer has not opened
it yet reads as EOF, but epoll reports nothing until a writer came and went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moorage.errdefs import FailedPrecondition, NotFound
from moorage.namespaces import metadata as ns_metadata

if TYPE_CHECKING:
    from moorage.services.runtime.attach import AttachPaths

from .contract import NAMESPACE, Duplex, InStream, OutStream, TermSize

CONTAINERS = "containerd.services.containers.v1.Containers"
TASKS = "containerd.services.tasks.v1.Tasks"
SANDBOX_STORE = "containerd.services.sandbox.v1.Store"
SANDBOX_CONTROLLER = "containerd.services.sandbox.v1.Controller"
CALL_TIMEOUT = 30.0
IO_DRAIN_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
RUNNING, PAUSED = 2, 4


class ContainerIO(Protocol):
    """A container's stdio owned in this process (services/cri/cio.py's ContainerIO).
    Optional attributes read when present: ``stdin_fd`` (to wait while the pipe is full),
    ``stdin_once`` (CRI's: the first attach closes the container's stdin when it ends)."""

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[
            asyncio.Queue[tuple[str, bytes] | None]]: ...

    def write_stdin(self, data: bytes) -> int: ...

    def close_stdin(self) -> None: ...


class ClientSource(Protocol):
    async def client(self) -> Any: ...


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _settle, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def _read_fifo(fd: int) -> bytes:
    while True:
        await _readable(fd)
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            continue


async def _write_fd(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, _settle, fut)
            try:
                await fut
            finally:
                loop.remove_writer(fd)


class _Discard:
    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


async def _pump_out(fd: int, out: OutStream) -> None:
    while data := await _read_fifo(fd):
        await out.write(data)


def _connect_in(netns: str, port: int) -> socket.socket:
    """In the calling thread: enter `netns` (if any) and connect to 127.0.0.1:port."""
    if netns:
        from moorage import syscalls

        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(fd, syscalls.CLONE_NEWNET)
        finally:
            os.close(fd)
    sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    sock.setblocking(False)
    return sock


async def connect_in_netns(netns: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:port made inside `netns` by a short-lived thread
    (the namespace a socket is created in stays its namespace)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[socket.socket] = loop.create_future()

    def run() -> None:
        try:
            sock = _connect_in(netns, port)
        except BaseException as exc:
            err = exc

            def fail() -> None:
                if not fut.done():
                    fut.set_exception(err)

            loop.call_soon_threadsafe(fail)
            return

        def deliver() -> None:
            if fut.done():
                sock.close()
            else:
                fut.set_result(sock)

        loop.call_soon_threadsafe(deliver)

    threading.Thread(target=run, name=f"portforward-{port}", daemon=True).start()
    return await fut


class RuntimeBackend:
    """contract.Backend over the runtime and sandbox services (namespace k8s.io)."""

    def __init__(self, peer: ClientSource, io_root: Path, *,
                 io_of: Callable[[str], ContainerIO | None] | None = None,
                 netns_of: Callable[[str], Awaitable[str]] | None = None,
                 namespace: str = NAMESPACE) -> None:
        self.peer = peer
        self.io_root = io_root
        self.io_of = io_of
        self.netns_of = netns_of or self.pod_netns
        self.md = ns_metadata(namespace)

    async def _call(self, svc: str, method: str, req: Any, resp: Any,
                    timeout: float | None = CALL_TIMEOUT) -> Any:
        client = await self.peer.client()
        return await client.unary(svc, method, req, resp, timeout=timeout, metadata=self.md)

    async def _resize(self, container_id: str, exec_id: str,
                      sizes: AsyncIterator[TermSize]) -> None:
        from google.protobuf import empty_pb2

        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        async for size in sizes:
            with contextlib.suppress(Exception):
                await self._call(TASKS, "ResizePty", tpb.ResizePtyRequest(
                    container_id=container_id, exec_id=exec_id, width=size.width,
                    height=size.height), empty_pb2.Empty)

    async def _close_io(self, container_id: str, exec_id: str) -> None:
        from google.protobuf import empty_pb2

        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        with contextlib.suppress(Exception):
            await self._call(TASKS, "CloseIO", tpb.CloseIORequest(
                container_id=container_id, exec_id=exec_id, stdin=True), empty_pb2.Empty)

    async def _pump_in(self, src: InStream, fd: int, on_eof: Callable[[], Awaitable[None]]) -> None:
        try:
            while data := await src.read():
                await _write_fd(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)
        await on_eof()

    # ---- exec ----------------------------------------------------------------------------

    async def exec(self, container_id: str, cmd: Sequence[str], tty: bool,
                   stdin: InStream | None, stdout: OutStream | None,
                   stderr: OutStream | None,
                   resize: AsyncIterator[TermSize] | None) -> int:
        from google.protobuf import any_pb2, empty_pb2

        from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
        from moorage.services.runtime import spec as sp

        c = (await self._call(CONTAINERS, "Get", cpb.GetContainerRequest(id=container_id),
                              cpb.GetContainerResponse)).container
        proc = sp.process_spec(json.loads(c.spec.value or b"{}"), cmd, terminal=tty)
        exec_id = "exec-" + os.urandom(8).hex()
        self.io_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        d = Path(tempfile.mkdtemp(prefix="exec-", dir=self.io_root))
        fds: dict[str, int] = {}
        paths: dict[str, str] = {}
        try:
            # the runc shim opens every output path it is given and fails on "" for
            # stdout/stderr of a non-terminal exec: outputs nobody asked for are discarded
            for name, want in (("stdin", stdin is not None), ("stdout", True),
                               ("stderr", not tty)):
                if want:
                    p = d / name
                    os.mkfifo(p, 0o600)
                    paths[name] = str(p)
                    mode = os.O_RDWR if name == "stdin" else os.O_RDONLY
                    fds[name] = os.open(p, mode | os.O_NONBLOCK | os.O_CLOEXEC)
            await self._call(TASKS, "Exec", tpb.ExecProcessRequest(
                container_id=container_id, exec_id=exec_id, terminal=tty,
                stdin=paths.get("stdin", ""), stdout=paths.get("stdout", ""),
                stderr=paths.get("stderr", ""),
                spec=any_pb2.Any(type_url=sp.PROCESS_TYPE_URL,
                                 value=json.dumps(proc).encode())), empty_pb2.Empty)
            try:
                return await self._run_exec(container_id, exec_id, fds, stdin, stdout, stderr,
                                            resize)
            except asyncio.CancelledError:  # the client left: the process goes (containerd)
                await asyncio.shield(self._kill_exec(container_id, exec_id))
                raise
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._call(TASKS, "DeleteProcess", tpb.DeleteProcessRequest(
                        container_id=container_id, exec_id=exec_id), tpb.DeleteResponse))
        finally:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(d, ignore_errors=True)

    async def _kill_exec(self, container_id: str, exec_id: str) -> None:
        from google.protobuf import empty_pb2

        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        with contextlib.suppress(Exception):
            await self._call(TASKS, "Kill", tpb.KillRequest(
                container_id=container_id, exec_id=exec_id, signal=9), empty_pb2.Empty)
            await self._call(TASKS, "Wait", tpb.WaitRequest(
                container_id=container_id, exec_id=exec_id), tpb.WaitResponse,
                timeout=IO_DRAIN_TIMEOUT)

    async def _run_exec(self, container_id: str, exec_id: str, fds: dict[str, int],
                        stdin: InStream | None, stdout: OutStream | None,
                        stderr: OutStream | None,
                        resize: AsyncIterator[TermSize] | None) -> int:
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

        loop = asyncio.get_running_loop()
        await self._call(TASKS, "Start", tpb.StartRequest(container_id=container_id,
                                                          exec_id=exec_id), tpb.StartResponse)
        outs = [loop.create_task(_pump_out(fds[n], s or _Discard()))
                for n, s in (("stdout", stdout), ("stderr", stderr)) if n in fds]
        side: list[asyncio.Task[None]] = []
        if stdin is not None and "stdin" in fds:
            fd = fds.pop("stdin")
            side.append(loop.create_task(self._pump_in(
                stdin, fd, lambda: self._close_io(container_id, exec_id))))
        if resize is not None:
            side.append(loop.create_task(self._resize(container_id, exec_id, resize)))
        try:
            r = await self._call(TASKS, "Wait", tpb.WaitRequest(
                container_id=container_id, exec_id=exec_id), tpb.WaitResponse, timeout=None)
            if outs:
                await asyncio.wait(outs, timeout=IO_DRAIN_TIMEOUT)
            return int(r.exit_status)
        finally:
            for t in outs + side:
                t.cancel()
            await asyncio.gather(*outs, *side, return_exceptions=True)

    # ---- attach --------------------------------------------------------------------------

    async def attach(self, container_id: str, tty: bool, stdin: InStream | None,
                     stdout: OutStream | None, stderr: OutStream | None,
                     resize: AsyncIterator[TermSize] | None) -> None:
        from moorage.api.containerd.services.containers.v1 import containers_pb2 as cpb
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
        from moorage.services.runtime import attach as at

        try:
            proc = (await self._call(TASKS, "Get", tpb.GetRequest(container_id=container_id),
                                     tpb.GetResponse)).process
        except NotFound:
            raise NotFound(f"container {container_id} has no running task") from None
        if proc.status not in (RUNNING, PAUSED):
            raise FailedPrecondition(f"container {container_id} is not running")
        c = (await self._call(CONTAINERS, "Get", cpb.GetContainerRequest(id=container_id),
                              cpb.GetContainerResponse)).container
        once = c.labels.get(at.STDIN_LABEL) == "once"
        loop = asyncio.get_running_loop()
        side: list[asyncio.Task[None]] = []
        if resize is not None and proc.terminal:
            side.append(loop.create_task(self._resize(container_id, "", resize)))
        io = self.io_of(container_id) if self.io_of is not None else None
        try:
            if io is not None:
                once = once or bool(getattr(io, "stdin_once", False))
                await self._attach_io(container_id, io, once, stdin, stdout,
                                      None if proc.terminal else stderr, side)
            else:
                await self._attach_fifos(container_id, at.attach_paths(
                    proc.stdin, proc.stdout, proc.stderr, proc.terminal), once, stdin, stdout,
                    stderr, side)
        finally:
            for t in side:
                t.cancel()
            await asyncio.gather(*side, return_exceptions=True)

    async def _attach_io(self, container_id: str, io: ContainerIO, once: bool,
                         stdin: InStream | None, stdout: OutStream | None,
                         stderr: OutStream | None, side: list[asyncio.Task[None]]) -> None:
        closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                io.close_stdin()  # our hold, then the shim's (it keeps a writer too)
                await self._close_io(container_id, "")

        async def feed(src: InStream) -> None:
            while data := await src.read():
                view = memoryview(data)
                while view:
                    n = io.write_stdin(bytes(view))
                    fd = getattr(io, "stdin_fd", -1)
                    if n == 0 and (not isinstance(fd, int) or fd < 0):
                        break  # no stdin (any more)
                    view = view[n:]
                    if view:  # the pipe is full: wait until it drains
                        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                        asyncio.get_running_loop().add_writer(fd, _settle, fut)
                        try:
                            await fut
                        finally:
                            asyncio.get_running_loop().remove_writer(fd)
            if once:
                await close()

        if stdin is not None:
            side.append(asyncio.get_running_loop().create_task(feed(stdin)))
        async def exited() -> None:
            """The init process exited and its output was read (the fifos' EOF)."""
            from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

            await self._call(TASKS, "Wait", tpb.WaitRequest(container_id=container_id),
                             tpb.WaitResponse, timeout=None)
            readers = [r.done for r in getattr(io, "readers", ()) if hasattr(r, "done")]
            if readers:
                await asyncio.wait([asyncio.ensure_future(f) for f in readers],
                                   timeout=IO_DRAIN_TIMEOUT)

        loop = asyncio.get_running_loop()
        end = loop.create_task(exited())
        try:
            async with io.subscribe() as q:
                last = False
                while not last:
                    items: list[tuple[str, bytes] | None] = []
                    if q.empty():
                        get = loop.create_task(q.get())
                        await asyncio.wait({get, end}, return_when=asyncio.FIRST_COMPLETED)
                        if get.done():
                            items.append(get.result())
                        else:  # exited, output read: what is queued is the rest
                            get.cancel()
                            last = True
                    while not q.empty():
                        items.append(q.get_nowait())
                    for item in items:
                        if item is None:
                            last = True
                            break
                        out = stdout if item[0] == "stdout" else stderr
                        if out is not None:
                            await out.write(item[1])
        finally:
            end.cancel()
        if once and stdin is not None:
            await asyncio.shield(close())

    async def _attach_fifos(self, container_id: str, paths: AttachPaths, once: bool,
                            stdin: InStream | None, stdout: OutStream | None,
                            stderr: OutStream | None, side: list[asyncio.Task[None]]) -> None:
        from moorage.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
        from moorage.services.runtime import attach as at

        loop = asyncio.get_running_loop()
        fds: list[int] = []
        closed_in = False

        async def stdin_done() -> None:
            nonlocal closed_in
            if once:
                closed_in = True
                await self._close_io(container_id, "")

        try:
            outs = []
            for path, out in ((paths.stdout, stdout), (paths.stderr, stderr)):
                if path and out is not None:
                    fd = at.open_output(path)
                    fds.append(fd)
                    outs.append(loop.create_task(_pump_out(fd, out)))
            if stdin is not None and paths.stdin:
                w = at.open_input(paths.stdin)
                os.set_blocking(w, False)
                side.append(loop.create_task(self._pump_in(stdin, w, stdin_done)))
            if outs:  # until their EOF, or a grace after the exit: a task that exited
                # before the fifos were open never gives them EOF (see runtime/attach.py)
                copied = asyncio.gather(*outs)
                exited = loop.create_task(self._call(TASKS, "Wait", tpb.WaitRequest(
                    container_id=container_id), tpb.WaitResponse, timeout=None))
                try:
                    await asyncio.wait({copied, exited}, return_when=asyncio.FIRST_COMPLETED)
                    if not copied.done():
                        await asyncio.wait({copied}, timeout=at.EXIT_GRACE)
                    if copied.done():
                        copied.result()
                finally:
                    for t in (*outs, exited):
                        t.cancel()
                    await asyncio.gather(copied, exited, return_exceptions=True)
            else:
                await self._call(TASKS, "Wait", tpb.WaitRequest(container_id=container_id),
                                 tpb.WaitResponse, timeout=None)
        finally:
            for fd in fds:
                os.close(fd)
            if once and stdin is not None and not closed_in:
                await asyncio.shield(self._close_io(container_id, ""))

    # ---- port forwarding -----------------------------------------------------------------

    async def pod_netns(self, pod_sandbox_id: str) -> str:
        """The pod's network namespace path ("" = the host's), from the sandbox service."""
        from moorage.api.containerd.services.sandbox.v1 import sandbox_pb2 as sbpb

        record = (await self._call(SANDBOX_STORE, "Get", sbpb.StoreGetRequest(
            sandbox_id=pod_sandbox_id), sbpb.StoreGetResponse)).sandbox
        st = await self._call(SANDBOX_CONTROLLER, "Status", sbpb.ControllerStatusRequest(
            sandbox_id=pod_sandbox_id, sandboxer=record.sandboxer),
            sbpb.ControllerStatusResponse)
        if st.state != "SANDBOX_READY":
            raise FailedPrecondition(f"pod sandbox {pod_sandbox_id} is not ready")
        return str(st.info.get("netns_path", ""))

    async def port_forward(self, pod_sandbox_id: str, port: int, stream: Duplex) -> None:
        netns = await self.netns_of(pod_sandbox_id)
        sock = await connect_in_netns(netns, port)
        reader, writer = await asyncio.open_connection(sock=sock)

        async def upstream() -> None:
            while data := await stream.read():
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        async def downstream() -> None:
            while data := await reader.read(65536):
                await stream.write(data)
            await stream.close()

        # done when the remote side is: the client's EOF only half-closes toward it (and
        # a WebSocket client cannot half-close at all)
        up = asyncio.get_running_loop().create_task(upstream())
        try:
            await downstream()
        finally:
            up.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def build_backend(ctx: Any) -> RuntimeBackend:
    """The backend of the `cri` process: the proxy's services, fifos under
    ``<state>/streaming``. H1's process may set ``backend.io_of`` afterwards."""
    from moorage.rpc import Peer

    return RuntimeBackend(Peer(ctx.proxy_address), Path(ctx.state) / "streaming")
