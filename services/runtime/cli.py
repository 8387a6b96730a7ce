"""`moor run`, `ps`, `exec`, `attach`, `kill`, `stop`, `rm`, `logs`, `wait`, `pause`, `unpause`,
`top`, `stats`, `update`, `containers`, `tasks`: the runtime's commands (blocking client, no asyncio).

`moor run` does what `ctr run` does on the client side: resolve the image, prepare the
rootfs snapshot on its chain id, build the spec (image config + flags), create the
container and its task, start it. Without `-d` it then follows the container's log (or,
with `-t`, its terminal) until the task exits, deletes the task, and with `--rm` the
container and snapshot too; the exit code is the container's.
"""

from __future__ import annotations

import os
import sys
import time

from moorage.cli.context import MAX_SECONDS
from moorage.cli.flags import Flags
from moorage.cli.wire import Fields, Msg
from moorage.errdefs import FailedPrecondition, InvalidArgument, NotFound
from moorage.jsoncodec import dumps, loads
from ttrpc.lighttyping import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    import threading
    from collections.abc import Callable, Sequence
    from typing import Any

    from moorage.cli.context import CliContext
else:
    import _signal  # signal.py wraps the constants in enums (enum: several ms)

CONTAINERS = "containerd.services.containers.v1.Containers"
TASKS = "containerd.services.tasks.v1.Tasks"
SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"
LEASES = "containerd.services.leases.v1.Leases"
LEASE_KEY = "containerd-lease"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
LOG_LABEL = "moorage/logging"
LOG_PATH_LABEL = "moorage/log-path"
NAME_LABEL = "moorage/name"
DETACH_KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q, as docker attach
STATUS = {0: "unknown", 1: "created", 2: "running", 3: "stopped", 4: "paused", 5: "pausing"}


class _Mount(NamedTuple):
    """A containerd.types.Mount as `moor run` reads it (for rootfs.reader)."""

    type: str
    source: str
    options: list[str]


class _Created(NamedTuple):
    """What `moor run` keeps of the container it created."""

    id: str
    snapshotter: str
    snapshot_key: str
    labels: dict[str, str]


class _Container(NamedTuple):
    """A containers.v1 Container as the commands read it (through moorage.cli.wire)."""

    id: str
    labels: dict[str, str]
    image: str
    runtime: str
    spec: bytes
    snapshotter: str
    snapshot_key: str
    sandbox: str

    @classmethod
    def read(cls, f: Fields) -> _Container:
        # Container{id=1, labels=2, image=3, runtime=4 {name=1}, spec=5 Any{value=2},
        # snapshotter=6, snapshot_key=7, sandbox=11}
        return cls(f.text(1), f.pairs(2), f.text(3), f.msg(4).text(1), f.msg(5).blob(2), f.text(6),
                   f.text(7), f.text(11))


class _Task(NamedTuple):
    """A containerd.v1.types.Process as the commands read it (through moorage.cli.wire)."""

    container_id: str
    pid: int
    status: int
    stdin: str
    stdout: str
    stderr: str
    terminal: bool
    exit_status: int

    @classmethod
    def read(cls, f: Fields) -> _Task:
        # Process{container_id=1, id=2, pid=3, status=4, stdin=5, stdout=6, stderr=7,
        # terminal=8, exit_status=9}
        return cls(f.text(1), f.uint(3), f.uint(4), f.text(5), f.text(6), f.text(7), bool(f.uint(8)),
                   f.uint(9))


class _Api:
    """The calls the commands make, on one blocking client.

    Every message goes through moorage.cli.wire by the .proto field numbers, named where it
    is built or read (no protobuf import: ~40 ms of a command).
    """

    def __init__(self, ctx: CliContext) -> None:
        self.ctx = ctx
        self.c = ctx.connect()
        self.md = ctx.metadata()
        self.timeout = ctx.timeout

    def call(self, svc: str, method: str, req: Any, resp: Any, timeout: float | None = -1.0) -> Any:
        t = self.timeout if timeout == -1.0 else timeout
        return self.c.unary(svc, method, req, resp, timeout=t, metadata=self.md)

    def container(self, id: str) -> _Container:
        # GetContainerRequest{id=1} -> GetContainerResponse{container=1}
        return _Container.read(self.call(CONTAINERS, "Get", Msg({1: id}), Fields).msg(1))

    def containers(self) -> list[_Container]:
        # ListContainersRequest{} -> ListContainersResponse{containers=1}
        return [_Container.read(c) for c in self.call(CONTAINERS, "List", Msg({}), Fields).msgs(1)]

    def task(self, id: str, exec_id: str = "") -> _Task | None:
        try:  # GetRequest{container_id=1, exec_id=2} -> GetResponse{process=1}
            return _Task.read(self.call(TASKS, "Get", Msg({1: id, 2: exec_id}), Fields).msg(1))
        except NotFound:
            return None

    def tasks(self) -> dict[str, _Task]:
        # ListTasksRequest{} -> ListTasksResponse{tasks=1}
        listed = self.call(TASKS, "List", Msg({}), Fields).msgs(1)
        return {t.container_id: t for t in map(_Task.read, listed)}

    def kill(self, id: str, sig: int, exec_id: str = "", all: bool = False) -> None:
        # KillRequest{container_id=1, exec_id=2, signal=3, all=4}
        self.call(TASKS, "Kill", Msg({1: id, 2: exec_id, 3: sig, 4: all}), Fields)

    def wait(self, id: str, exec_id: str = "", timeout: float | None = None) -> int:
        # WaitRequest{container_id=1, exec_id=2} -> WaitResponse{exit_status=1}
        return int(self.call(TASKS, "Wait", Msg({1: id, 2: exec_id}), Fields,
                             timeout=timeout).uint(1))

    def delete_task(self, id: str) -> int:
        # DeleteTaskRequest{container_id=1} -> DeleteResponse{exit_status=3}
        return int(self.call(TASKS, "Delete", Msg({1: id}), Fields).uint(3))

    def remove_container(self, c: Any, task_gone: bool = False) -> None:
        """Containers.Delete, then Snapshots.Remove of its snapshot (gone already is fine).
        ``task_gone`` (moor run just deleted the task): both calls go out at once."""
        delete = Msg({1: c.id})  # DeleteContainerRequest{id=1}
        # RemoveSnapshotRequest{snapshotter=1, key=2}
        remove = Msg({1: c.snapshotter or DEFAULT_SNAPSHOTTER, 2: c.snapshot_key})
        if not (task_gone and c.snapshot_key):
            self.call(CONTAINERS, "Delete", delete, Fields)
            if c.snapshot_key:
                try:
                    self.call(SNAPSHOTS, "Remove", remove, Fields)
                except NotFound:
                    pass
            return
        deleted, removed = self.pipelined((CONTAINERS, "Delete", delete),
                                          (SNAPSHOTS, "Remove", remove))
        for r in (deleted, removed):
            if isinstance(r, Exception) and not (r is removed and isinstance(r, NotFound)):
                raise r

    def pipelined(self, *calls: tuple[str, str, Msg]) -> list[Fields | Exception]:
        """Unary calls sent together, each answer read after: one round trip for calls that
        do not depend on one another. Each result is the reply or the error it got."""
        nanos = int(self.timeout * 1e9) if self.timeout else 0
        streams = [self.c.open_stream(svc, method, m.SerializeToString(), 0, nanos, self.md)
                   for svc, method, m in calls]
        out: list[Fields | Exception] = []
        for stream in streams:
            try:
                out.append(Fields.FromString(stream.recv() or b""))
            except Exception as exc:
                out.append(exc)
        return out

    def resize(self, id: str, exec_id: str, fd: int) -> None:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            return
        # ResizePtyRequest{container_id=1, exec_id=2, width=3, height=4} -> Empty
        self.call(TASKS, "ResizePty", Msg({1: id, 2: exec_id, 3: size.columns, 4: size.lines}),
                  Fields)

    def close_stdin(self, id: str, exec_id: str = "") -> None:
        """Tasks.CloseIO of the process's stdin, on a connection of its own (the main one
        may be waiting)."""
        from ttrpc.blocking import Client

        from moorage import errdefs

        with Client(self.ctx.address, error_factory=errdefs.from_status) as c:
            # CloseIORequest{container_id=1, exec_id=2, stdin=3} -> Empty
            c.unary(TASKS, "CloseIO", Msg({1: id, 2: exec_id, 3: True}), Fields, metadata=self.md)


# ---- stdio on the client side (fifos this process owns, as ctr does) ----------------------

class _ClientIO:
    """Fifos in a private temp dir: stdin written from our stdin, stdout/stderr copied out."""

    def __init__(self, stdin: bool, stdout: bool, stderr: bool) -> None:
        # as tempfile.mkdtemp(prefix="moor-io-") makes it (tempfile, with shutil and random:
        # ~15 ms of `moor exec`)
        base = "/run/moorage" if os.access("/run/moorage", os.W_OK) else next(
            (d for d in map(os.environ.get, ("TMPDIR", "TEMP", "TMP")) if d), "/tmp")
        while True:
            self.dir = os.path.join(base, "moor-io-" + os.urandom(6).hex())
            try:
                os.mkdir(self.dir, 0o700)
                break
            except FileExistsError:
                continue
        self.paths: dict[str, str] = {}
        self.fds: dict[str, int] = {}
        self.threads: list[threading.Thread] = []  # -i/-t only: threading imported then
        for name, want in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if want:
                p = os.path.join(self.dir, name)
                os.mkfifo(p, 0o600)
                self.paths[name] = p
        for name in ("stdout", "stderr"):
            if name in self.paths:
                self.fds[name] = os.open(self.paths[name], os.O_RDONLY | os.O_NONBLOCK)

    def path(self, name: str) -> str:
        return self.paths.get(name, "")

    def start(self, on_stdin_eof: Callable[[], None] | None = None) -> None:
        """After the shim opened its ends: copy in both directions in threads."""
        import fcntl
        import threading

        for name, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            fd = self.fds.get(name)
            if fd is None:
                continue
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            t = threading.Thread(target=self._copy_out, args=(fd, out.fileno()), daemon=True)
            t.start()
            self.threads.append(t)
        if "stdin" in self.paths:
            t = threading.Thread(target=self._copy_in, args=(on_stdin_eof,), daemon=True)
            t.start()

    def _copy_out(self, fd: int, out: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]

    def _copy_in(self, on_eof: Callable[[], None] | None) -> None:
        try:
            w = os.open(self.paths["stdin"], os.O_WRONLY)
        except OSError:
            return
        try:
            while True:
                data = os.read(sys.stdin.fileno(), 65536)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view):]
        except OSError:
            pass
        finally:
            os.close(w)
        if on_eof is not None:
            try:
                on_eof()
            except Exception:
                pass

    def drain(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        for path in self.paths.values():
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


class _RawTerminal:
    def __init__(self, fd: int) -> None:
        import termios
        import tty

        self.fd = fd
        self.saved = termios.tcgetattr(fd)
        tty.setraw(fd)

    def restore(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _copy_log(path: str, offset: int) -> int:
    """Write the complete log lines after `offset` to our stdout/stderr; the new offset."""
    from .logs import read_log

    lines, offset = read_log(path, offset)
    for stream, data in lines:
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.buffer.write(data)
        out.flush()
    return offset


# ---- run ----------------------------------------------------------------------------------

def _runtime(value: str) -> tuple[str, str]:
    """`--runtime`: a shim runtime name/path, or an OCI runtime binary for the runc shim."""
    if not value:
        return DEFAULT_RUNTIME, ""
    base = os.path.basename(value)
    if value.startswith("io.containerd.") or base.startswith("containerd-shim-"):
        return value, ""
    return DEFAULT_RUNTIME, value


def _run_flags() -> Flags:
    p = Flags("moor run", "[FLAGS] IMAGE [COMMAND [ARG...]]",
              "Run a command in a new container (by default the image's entrypoint and cmd).\n"
              "Without -d: follow its output until it exits, and exit with its status.")
    p.switch("-d", "--detach", help="run in the background; print the container id")
    p.switch("--rm", help="remove the container and its snapshot when it exits")
    p.switch("-i", "--interactive", help="keep stdin open and send ours to the container")
    p.switch("-t", "--tty", help="give the container a terminal")
    p.value("--name", metavar="NAME", help="the container id (default: random)")
    p.value("-e", "--env", metavar="KEY=VALUE", repeat=True, help="set an environment variable")
    p.value("--mount", metavar="type=bind,src=A,dst=B[,ro]", repeat=True, help="add a mount")
    p.value("-u", "--user", metavar="USER[:GROUP]", help="user (name or id) to run as")
    p.value("-w", "--workdir", metavar="DIR", help="working directory in the container")
    p.value("--hostname", metavar="NAME", help="the container's hostname")
    p.value("-m", "--memory", metavar="SIZE", help="memory limit (512m, 1g, bytes)")
    p.value("--cpus", metavar="N", kind=float, default=0.0, help="CPU limit, in CPUs")
    p.value("--runtime", metavar="NAME|PATH",
            help=f"shim runtime (io.containerd.X.vN) or OCI runtime binary (default {DEFAULT_RUNTIME})")
    p.value("--snapshotter", metavar="NAME", default=DEFAULT_SNAPSHOTTER, help="snapshotter")
    p.value("--label", metavar="KEY=VALUE", repeat=True, help="add a container label")
    p.value("--sandbox", metavar="ID", help="join this pod sandbox (its network, hostname)")
    p.arg("image", help="image reference (busybox, docker.io/library/busybox:latest, ...)")
    p.rest("command", help="command and arguments, instead of the image's")
    return p


def cmd_run(argv: list[str], ctx: CliContext) -> int:
    from . import image as img
    from . import rootfs as rfs
    from . import spec as sp

    a = _run_flags().parse(argv)
    if a.detach and a.rm:
        raise InvalidArgument("--rm and -d cannot be used together")
    api = _Api(ctx)
    id = a.name or os.urandom(8).hex()
    runtime, oci_binary = _runtime(a.runtime)
    if runtime.startswith("io.containerd.") or os.path.isabs(runtime):
        from .runtimes import binary_for

        binary_for(runtime)  # unknown runtime: fail before anything is created
    if a.sandbox and a.hostname:
        raise InvalidArgument("--hostname cannot be used with --sandbox: the container has "
                              "the sandbox's hostname")
    join = _sandbox_info(api, a.sandbox) if a.sandbox else None
    lease, leasing = _take_lease(api, id)  # its reply is read once the image is resolved
    try:
        # image documents kept beside the suite's socket (content-addressed, checked on use)
        cache = os.path.join(os.path.dirname(ctx.address), "moor-cache") \
            if os.path.isabs(ctx.address) else None
        resolved = img.resolve(api.c, ctx.metadata(), a.image, api.timeout, cache=cache)
    except BaseException:
        try:
            leasing.recv()
        except Exception:  # noqa: BLE001 - no lease was made: nothing to drop
            pass
        else:
            _drop_lease(api, lease)
        raise
    leasing.recv()
    api.md[LEASE_KEY] = lease
    overrides = sp.Overrides(
        args=tuple(a.command), env=tuple(a.env), user=a.user, workdir=a.workdir,
        hostname=a.hostname, terminal=a.tty,
        memory=sp.parse_memory(a.memory) if a.memory else 0, cpus=a.cpus,
        mounts=tuple(sp.parse_mount(m) for m in a.mount))
    # detached: the runtime owns the stdio (logged, teed for `moor attach`, stdin held open)
    labels = {LOG_LABEL: "file"} if not a.tty or a.detach else {}
    if a.detach and a.interactive:
        labels["moorage/stdin"] = "open"
    for kv in a.label:
        k, _, v = kv.partition("=")
        labels[k] = v
    if a.name:
        labels[NAME_LABEL] = a.name
    cleanup: list[Callable[[], None]] = []

    def undo() -> None:
        for fn in reversed(cleanup):
            try:
                fn()
            except Exception:
                pass

    cio: _ClientIO | None = None
    waiting: Any = None
    try:
        # PrepareSnapshotRequest{snapshotter=1, key=2, parent=3} -> {mounts=1}
        prepare = Msg({1: a.snapshotter, 2: id, 3: resolved.chain_id})

        def rm_snapshot() -> None:
            # RemoveSnapshotRequest{snapshotter=1, key=2}
            api.call(SNAPSHOTS, "Remove", Msg({1: a.snapshotter, 2: id}), Fields)

        def container_for(mounts: list[Fields] | None) -> Msg:
            """The Container record; with ``mounts`` the spec may read the rootfs (a user
            name to resolve), without them it must not need to."""
            # Mount{type=1, source=2, target=3, options=4}
            read = None if mounts is None else rfs.reader(
                [_Mount(m.text(1), m.text(2), m.texts(4)) for m in mounts])
            spec = sp.build_spec(ctx.namespace, id, resolved.config, overrides, read_rootfs=read)
            if join is not None:
                sp.join_sandbox(spec, a.sandbox, join,
                                group=runtime.startswith("io.containerd.runc."))
            # Container{id=1, labels=2, image=3, runtime=4 {name=1, options=2 Any}, spec=5
            # Any, snapshotter=6, snapshot_key=7, sandbox=11}; Any{type_url=1, value=2}
            runtime_info: dict[int, Any] = {1: runtime}
            if oci_binary:  # containerd.runc.v1.Options{binary_name=6}
                runtime_info[2] = Msg({1: RUNC_OPTIONS_URL,
                                       2: Msg({6: oci_binary}).SerializeToString()})
            return Msg({1: id, 2: labels, 3: resolved.name, 4: Msg(runtime_info),
                        5: Msg({1: sp.SPEC_TYPE_URL, 2: sp.dumps(spec)}), 6: a.snapshotter,
                        7: id, 11: a.sandbox})

        def rm_container() -> None:
            api.call(CONTAINERS, "Delete", Msg({1: id}), Fields)  # DeleteContainerRequest{id=1}

        # CreateContainerRequest{container=1} -> CreateContainerResponse{container=1}
        if overrides.user or resolved.config.user:  # the spec reads the prepared rootfs
            mounts = api.call(SNAPSHOTS, "Prepare", prepare, Fields).msgs(1)
            cleanup.append(rm_snapshot)
            record = api.call(CONTAINERS, "Create", Msg({1: container_for(mounts)}),
                              Fields).msg(1)
        else:  # independent: one round trip for both
            prepared, made = api.pipelined((SNAPSHOTS, "Prepare", prepare),
                                           (CONTAINERS, "Create", Msg({1: container_for(None)})))
            if not isinstance(prepared, Exception):
                cleanup.append(rm_snapshot)
            if not isinstance(made, Exception):
                cleanup.append(rm_container)
            for r in (prepared, made):
                if isinstance(r, Exception):
                    raise r
            assert isinstance(prepared, Fields) and isinstance(made, Fields)
            mounts, record = prepared.msgs(1), made.msg(1)
        created = _Created(id, a.snapshotter, id, record.pairs(2))

        if rm_container not in cleanup:
            cleanup.append(rm_container)
        if (a.tty or a.interactive) and not a.detach:
            cio = _ClientIO(stdin=a.interactive, stdout=a.tty, stderr=False)
        # the container holds its snapshot from here: the lease's Delete (DeleteRequest{id=1})
        # goes out with CreateTaskRequest{container_id=1, rootfs=3, stdin=4, stdout=5,
        # terminal=7}, one round trip
        api.md.pop(LEASE_KEY, None)
        _, task = api.pipelined(
            (LEASES, "Delete", Msg({1: lease})),
            (TASKS, "Create", Msg({1: id, 3: list(mounts), 4: cio.path("stdin") if cio else "",
                                   5: cio.path("stdout") if cio else "", 7: a.tty})))
        lease = ""  # a failed Delete: it expires by itself
        if isinstance(task, Exception):
            raise task

        def rm_task() -> None:
            api.delete_task(id)

        cleanup.append(rm_task)
        if a.tty and sys.stdin.isatty():
            api.resize(id, "", sys.stdin.fileno())  # before start: the first read sees it
        if not a.detach and cio is None and not a.tty and created.labels.get(LOG_PATH_LABEL):
            # WaitRequest{container_id=1} sent with the Start (as ctr waits before starting)
            waiting = api.c.open_stream(TASKS, "Wait", Msg({1: id}).SerializeToString(), 0, 0,
                                        api.md)
        api.call(TASKS, "Start", Msg({1: id}), Fields)  # StartRequest{container_id=1}
    except BaseException:
        if waiting is not None:
            waiting.close()
        undo()
        _drop_lease(api, lease)
        if cio is not None:
            cio.close()
        raise
    if a.detach:
        print(id)
        return 0
    if waiting is not None:
        return _wait_logged(api, id, created.labels[LOG_PATH_LABEL], a.rm, created, waiting)
    return _attach_and_wait(api, id, created.labels.get(LOG_PATH_LABEL, ""), cio, a.tty,
                            a.interactive, a.rm, created)


def _take_lease(api: _Api, id: str) -> tuple[str, Any]:
    """A lease for the run's work (as ctr run's), expiring in 24 h if we die: the snapshot
    prepared on the image's chain is held by it until the container record names it, so a
    collection meanwhile takes neither. Its id rides on the following calls once the caller
    read the Create's reply from the returned stream (the request is only sent here)."""
    lease = f"moor-run-{id}-{os.urandom(3).hex()}"
    expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 24 * 3600))
    # CreateRequest{id=1, labels=3}
    create = Msg({1: lease, 3: {"containerd.io/gc.expire": expire}})
    nanos = int(api.timeout * 1e9) if api.timeout else 0
    return lease, api.c.open_stream(LEASES, "Create", create.SerializeToString(), 0, nanos, api.md)


def _drop_lease(api: _Api, lease: str) -> str:
    """Delete the run's lease (if any is left); what it held is held by its container now, or
    was undone. Returns "" (no lease left)."""
    if lease:
        api.md.pop(LEASE_KEY, None)
        try:
            api.call(LEASES, "Delete", Msg({1: lease}), Fields)  # DeleteRequest{id=1}
        except Exception:  # noqa: BLE001 - it expires by itself
            pass
    return ""


def _sandbox_info(api: _Api, sandbox_id: str) -> dict[str, str]:
    """What a container needs to join the sandbox: its Controller.Status info (it must be
    ready)."""
    # StoreGetRequest{sandbox_id=1} -> StoreGetResponse{sandbox=1 Sandbox{sandboxer=10}}
    record = api.call("containerd.services.sandbox.v1.Store", "Get", Msg({1: sandbox_id}),
                      Fields).msg(1)
    # ControllerStatusRequest{sandbox_id=1, sandboxer=10} -> {state=3, info=4}
    st: Fields = api.call("containerd.services.sandbox.v1.Controller", "Status",
                  Msg({1: sandbox_id, 10: record.text(10)}), Fields)
    if st.text(3) != "SANDBOX_READY":
        raise FailedPrecondition(f"sandbox {sandbox_id} is not ready ({st.text(3) or 'unknown'})")
    return st.pairs(4)


def _forward_signals(api: _Api, id: str, exec_id: str) -> None:
    """Like docker's sig-proxy / ctr's signal forwarding: the container gets our signals
    (each sent on a connection of its own: the main one may be waiting)."""

    def forward(signum: int, _frame: Any) -> None:
        from ttrpc.blocking import Client

        from moorage import errdefs

        try:
            with Client(api.ctx.address, error_factory=errdefs.from_status) as c:
                # KillRequest{container_id=1, exec_id=2, signal=3}
                c.unary(TASKS, "Kill", Msg({1: id, 2: exec_id, 3: signum}), Fields,
                        metadata=api.md)
        except Exception:
            pass

    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT):
        _signal.signal(sig, forward)


def _wait_logged(api: _Api, id: str, log_path: str, rm: bool, container: Any,
                 waiting: Any = None) -> int:
    """The plain foreground case, in one thread: wait for the task's exit on a Wait call
    (``waiting``, if already sent), copying the log out every 20 ms meanwhile; then delete
    the task, print the rest of the log, and with --rm remove it all."""
    _forward_signals(api, id, "")
    if waiting is None:  # WaitRequest{container_id=1}
        waiting = api.c.open_stream(TASKS, "Wait", Msg({1: id}).SerializeToString(), 0, 0, api.md)
    offset = 0
    try:
        while not waiting.wait(0.02):
            offset = _copy_log(log_path, offset)
        waiting.recv()
    finally:
        waiting.close()
    code = api.delete_task(id)
    _copy_log(log_path, offset)
    if rm:
        api.remove_container(container, task_gone=True)
    return code


class _Waiter:
    """Tasks.Wait for a process, on its own connection in a daemon thread (started at once):
    ``done`` is set when Wait returns or fails; ``code()`` waits for that, then gives the exit
    status or raises Wait's error."""

    def __init__(self, api: _Api, id: str, exec_id: str = "") -> None:
        import threading

        self.done = threading.Event()
        self._result: list[int | BaseException] = []
        threading.Thread(target=self._wait, args=(api, id, exec_id), daemon=True).start()

    def _wait(self, api: _Api, id: str, exec_id: str) -> None:
        try:
            from ttrpc.blocking import Client

            from moorage import errdefs

            with Client(api.ctx.address, error_factory=errdefs.from_status) as c:
                # WaitRequest{container_id=1, exec_id=2} -> WaitResponse{exit_status=1}
                r = c.unary(TASKS, "Wait", Msg({1: id, 2: exec_id}), Fields, metadata=api.md)
                self._result.append(r.uint(1))
        except BaseException as exc:
            self._result.append(exc)
        finally:
            self.done.set()

    def code(self) -> int:
        self.done.wait()
        result = self._result[0]
        if isinstance(result, BaseException):
            raise result
        return result


def _attach_and_wait(api: _Api, id: str, log_path: str, cio: _ClientIO | None, tty: bool,
                     interactive: bool, rm: bool, container: Any, exec_id: str = "") -> int:
    if cio is None and not tty and log_path and not exec_id:
        return _wait_logged(api, id, log_path, rm, container)
    import threading

    term: _RawTerminal | None = None
    winch = threading.Event()
    if tty and sys.stdin.isatty():
        if interactive:
            term = _RawTerminal(sys.stdin.fileno())
        _signal.signal(_signal.SIGWINCH, lambda *_: winch.set())
        winch.set()

    logged = bool(log_path) and (cio is None or "stdout" not in cio.paths)
    if term is None:
        _forward_signals(api, id, exec_id)
    waiter = _Waiter(api, id, exec_id)
    done = waiter.done
    try:
        if cio is not None:
            cio.start(lambda: api.close_stdin(id, exec_id))
        offset = 0
        while not done.is_set():
            if winch.is_set():
                winch.clear()
                try:
                    api.resize(id, exec_id, sys.stdin.fileno())
                except Exception:
                    pass
            if logged:
                offset = _copy_log(log_path, offset)
            done.wait(0.02)
        if exec_id:
            # DeleteProcessRequest{container_id=1, exec_id=2} -> DeleteResponse{exit_status=3}
            deleted: Fields = api.call(TASKS, "DeleteProcess", Msg({1: id, 2: exec_id}), Fields)
            code = deleted.uint(3)
        else:
            code = api.delete_task(id)
        if cio is not None:
            cio.drain()
        if logged:
            _copy_log(log_path, offset)
    finally:
        if term is not None:
            term.restore()
        if cio is not None:
            cio.close()
    if rm and not exec_id:
        api.remove_container(container)
    waiter.code()  # its error, if Wait failed
    return code


# ---- exec ---------------------------------------------------------------------------------

def cmd_exec(argv: list[str], ctx: CliContext) -> int:
    from . import spec as sp

    p = Flags("moor exec", "[FLAGS] CONTAINER COMMAND [ARG...]",
              "Run another process in a running container.")
    p.switch("-i", "--interactive", help="send our stdin to the process")
    p.switch("-t", "--tty", help="give the process a terminal")
    p.switch("-d", "--detach", help="run in the background; print the exec id")
    p.value("-e", "--env", metavar="KEY=VALUE", repeat=True, help="set an environment variable")
    p.value("-u", "--user", metavar="USER[:GROUP]", help="user to run as (default: the container's)")
    p.value("-w", "--workdir", metavar="DIR", help="working directory")
    p.value("--exec-id", metavar="ID", help="the process id (default: random)")
    p.arg("container")
    p.rest("command", help="the command and its arguments")
    a = p.parse(argv)
    api = _Api(ctx)
    c = api.container(a.container)
    spec = loads(c.spec)
    proc = sp.process_spec(spec, a.command, env=a.env, user=a.user, cwd=a.workdir,
                           terminal=a.tty)
    if a.tty and sys.stdin.isatty():
        # runc makes an exec's pty at its start (a ResizePty before Start finds no console)
        # and sizes it from consoleSize; the resize after Start is for runtimes that do not
        try:
            size = os.get_terminal_size(sys.stdin.fileno())
            proc["consoleSize"] = {"height": size.lines, "width": size.columns}
        except OSError:
            pass
    exec_id = a.exec_id or "exec-" + os.urandom(6).hex()
    cio = None if a.detach else _ClientIO(stdin=a.interactive, stdout=True,
                                           stderr=not a.tty)
    try:
        # ExecProcessRequest{container_id=1, stdin=2, stdout=3, stderr=4, terminal=5,
        # spec=6 Any{type_url=1, value=2}, exec_id=7} -> Empty
        api.call(TASKS, "Exec", Msg({
            1: a.container, 2: cio.path("stdin") if cio else "", 3: cio.path("stdout") if cio else "",
            4: cio.path("stderr") if cio else "", 5: a.tty,
            6: Msg({1: sp.PROCESS_TYPE_URL, 2: dumps(proc).encode()}), 7: exec_id}), Fields)
        # StartRequest{container_id=1, exec_id=2} -> StartResponse
        api.call(TASKS, "Start", Msg({1: a.container, 2: exec_id}), Fields)
    except BaseException:
        if cio is not None:
            cio.close()
        raise
    if a.detach:
        print(exec_id)
        return 0
    return _attach_and_wait(api, a.container, "", cio, a.tty, a.interactive, False, c,
                            exec_id=exec_id)


# ---- attach -------------------------------------------------------------------------------

def cmd_attach(argv: list[str], ctx: CliContext) -> int:
    """`moor attach [--no-stdin] ID`: the container's init process stdio here (see
    runtime/attach.py) until its output ends, or shortly after its exit (a Tasks.Wait runs
    beside the copy: a task that exits before our fifos are open never gives them EOF);
    the exit code is the container's. From a terminal, Ctrl-P Ctrl-Q detaches (the
    container goes on; exit 0)."""
    import select

    from . import attach as at

    import threading

    p = Flags("moor attach", "[--no-stdin] CONTAINER",
              "Attach to a running container's stdio (from a terminal, Ctrl-P Ctrl-Q detaches).")
    p.switch("--no-stdin", help="do not send our stdin")
    p.arg("container")
    a = p.parse(argv)
    api = _Api(ctx)
    proc = api.task(a.container)
    if proc is None:
        raise NotFound(f"container {a.container} has no task")
    if proc.status not in (1, 2, 4):
        raise FailedPrecondition(f"cannot attach to a {STATUS.get(proc.status)} container")
    waiter = _Waiter(api, a.container)
    ended = waiter.done
    paths = at.attach_paths(proc.stdin, proc.stdout, proc.stderr, proc.terminal)
    once = api.container(a.container).labels.get(at.STDIN_LABEL) == "once"
    outs: dict[int, int] = {}
    for path, out in ((paths.stdout, sys.stdout), (paths.stderr, sys.stderr)):
        if path:
            outs[at.open_output(path)] = out.fileno()
    tty = paths.terminal and sys.stdin.isatty()
    term = _RawTerminal(sys.stdin.fileno()) if tty and paths.stdin and not a.no_stdin else None
    winch = threading.Event()
    detached = threading.Event()
    if tty:
        _signal.signal(_signal.SIGWINCH, lambda *_: winch.set())
        winch.set()

    def copy_in(w: int) -> None:
        last = b""
        try:
            while True:
                data = os.read(sys.stdin.fileno(), 65536)
                if not data:
                    break
                if term is not None and DETACH_KEYS in last[-1:] + data:  # Ctrl-P Ctrl-Q
                    cut = (last[-1:] + data).index(DETACH_KEYS) - len(last[-1:])
                    if cut > 0:
                        os.write(w, data[:cut])
                    detached.set()
                    return
                last = data
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view):]
        except OSError:
            pass
        finally:
            os.close(w)
        if once and not detached.is_set():
            try:
                api.close_stdin(a.container)
            except Exception:
                pass

    try:
        if paths.stdin and not a.no_stdin:
            threading.Thread(target=copy_in, args=(at.open_input(paths.stdin),),
                             daemon=True).start()
        poller = select.poll()
        for fd in outs:
            poller.register(fd, select.POLLIN)
        drain_until = 0.0  # once the task has exited: the last output's deadline
        while outs and not detached.is_set():
            if not drain_until and ended.is_set():
                drain_until = time.monotonic() + at.EXIT_GRACE
            left = drain_until - time.monotonic() if drain_until else 0.2
            if left <= 0:
                break
            if winch.is_set():
                winch.clear()
                try:
                    api.resize(a.container, "", sys.stdin.fileno())
                except Exception:
                    pass
            for fd, _ev in poller.poll(min(200, int(left * 1000) + 1)):
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:  # the writer hung up: this output is complete
                    poller.unregister(fd)
                    os.close(fd)
                    del outs[fd]
                    continue
                view = memoryview(data)
                while view:
                    view = view[os.write(outs[fd], view):]
    finally:
        if term is not None:
            term.restore()
        for fd in outs:
            os.close(fd)
    if detached.is_set():
        return 0
    return waiter.code()


# ---- the rest -----------------------------------------------------------------------------

def _signum(text: str) -> int:
    """``-s``'s signal by name (``KILL``, ``SIGKILL``) or number: KillRequest's signal is a
    uint32, and 0 is no signal (ctr: ``unknown signal "0"``)."""
    t = text.upper()
    if t.isascii() and t.isdigit():
        n = int(t)
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        n = 0 if name.startswith("SIG_") else int(getattr(_signal, name, 0))  # not SIG_DFL, SIG_IGN...
    if not 0 < n < 1 << 32:
        raise InvalidArgument(f"--signal: unknown signal {text!r}")
    return n


def cmd_ps(argv: list[str], ctx: CliContext) -> int:
    p = Flags("moor ps", "[-a] [-q]", "List running containers.")
    p.switch("-a", "--all", help="stopped containers too")
    p.switch("-q", "--quiet", help="ids only")
    a = p.parse(argv)
    api = _Api(ctx)
    # One round trip, no protobuf (~40 ms): ListTasksRequest{} -> {tasks=1 Process{
    # container_id=1, pid=3, status=4, exit_status=9}}; ListContainersRequest{} ->
    # {containers=1 Container{id=1, image=3, runtime=4 {name=1}, spec=5 Any{value=2}}}
    listed_tasks, listed = api.pipelined((TASKS, "List", Msg({})), (CONTAINERS, "List", Msg({})))
    for reply in (listed_tasks, listed):
        if isinstance(reply, Exception):
            raise reply
    assert isinstance(listed_tasks, Fields) and isinstance(listed, Fields)
    tasks = {t.container_id: t for t in map(_Task.read, listed_tasks.msgs(1))}
    rows = []
    for c in map(_Container.read, listed.msgs(1)):
        t = tasks.get(c.id)
        status = STATUS.get(t.status, "unknown") if t else "stopped"
        if t is not None and t.status == 3:
            status = f"exited ({t.exit_status})"
        running = t is not None and t.status in (1, 2, 4, 5)
        if not a.all and not running:
            continue
        try:
            args = loads(c.spec).get("process", {}).get("args", [])
        except (ValueError, AttributeError):
            args = []
        rows.append({"id": c.id, "image": c.image, "command": " ".join(args)[:40],
                     "status": status, "pid": t.pid if t else 0, "runtime": c.runtime})
    if ctx.json:
        ctx.emit_json(rows)
    elif a.quiet:
        for r in rows:
            print(r["id"])
    else:
        ctx.table(["container", "image", "command", "status", "pid"],
                  [[r["id"], r["image"], r["command"], r["status"], r["pid"] or "-"]
                   for r in rows])
    return 0


def cmd_kill(argv: list[str], ctx: CliContext) -> int:
    p = Flags("moor kill", "[-s SIGNAL] [--all] [--exec-id ID] CONTAINER...",
              "Send a signal to containers' processes.")
    p.value("-s", "--signal", metavar="SIGNAL", default="SIGKILL", help="name or number")
    p.switch("--all", help="every process of the container")
    p.value("--exec-id", metavar="ID", help="an exec'd process instead of the init process")
    p.many("containers", metavar="CONTAINER")
    a = p.parse(argv)
    sig = _signum(a.signal)
    api = _Api(ctx)
    for id in a.containers:
        api.kill(id, sig, a.exec_id, a.all)
    return 0


def cmd_stop(argv: list[str], ctx: CliContext) -> int:
    from moorage.errdefs import DeadlineExceeded

    p = Flags("moor stop", "[-t SECONDS] CONTAINER...",
              "Stop containers: SIGTERM, then SIGKILL after the grace time.")
    p.value("-t", "--time", metavar="SECONDS", kind=float, default=10.0, help="grace time")
    p.many("containers", metavar="CONTAINER")
    a = p.parse(argv)
    if not a.time < MAX_SECONDS:  # and NaN
        raise InvalidArgument(f"--time: {a.time} seconds is out of range (at most {MAX_SECONDS:.0f})")
    api = _Api(ctx)
    for id in a.containers:
        t = api.task(id)
        if t is None or t.status == 3:
            continue
        api.kill(id, int(_signal.SIGTERM))
        try:
            api.wait(id, timeout=a.time if a.time > 0 else None)
        except DeadlineExceeded:
            api.kill(id, int(_signal.SIGKILL), all=True)
            api.wait(id)
        print(id)
    return 0


def cmd_rm(argv: list[str], ctx: CliContext) -> int:
    p = Flags("moor rm", "[-f] CONTAINER...", "Remove containers (their task and snapshot too).")
    p.switch("-f", "--force", help="kill running ones first")
    p.many("containers", metavar="CONTAINER")
    a = p.parse(argv)
    api = _Api(ctx)
    failed = 0
    for id in a.containers:
        try:
            c = api.container(id)
            t = api.task(id)
            if t is not None:
                if t.status != 3:
                    if not a.force:
                        raise FailedPrecondition(
                            f"container {id} is running: stop it first or use rm -f")
                    api.kill(id, int(_signal.SIGKILL), all=True)
                    api.wait(id)
                api.delete_task(id)
            api.remove_container(c)
            print(id)
        except Exception as exc:
            failed = ctx.fail(exc)
    return failed


def cmd_logs(argv: list[str], ctx: CliContext) -> int:
    p = Flags("moor logs", "[-f] CONTAINER", "Print a container's log.")
    p.switch("-f", "--follow", help="follow it until the container exits")
    p.arg("container")
    a = p.parse(argv)
    api = _Api(ctx)
    c = api.container(a.container)
    path = c.labels.get(LOG_PATH_LABEL, "")
    if not path:
        raise FailedPrecondition(f"container {a.container} has no log (run with a terminal?)")
    offset = 0
    if a.follow:  # until the task's Wait answers (WaitRequest{container_id=1}), or fails
        waiting = api.c.open_stream(TASKS, "Wait", Msg({1: a.container}).SerializeToString(), 0,
                                    0, api.md)
        try:
            while not waiting.wait(0.05):
                offset = _copy_log(path, offset)
        except KeyboardInterrupt:
            return 0
        finally:
            waiting.close()
    _copy_log(path, offset)
    return 0


def cmd_wait(argv: list[str], ctx: CliContext) -> int:
    p = Flags("moor wait", "CONTAINER...", "Wait for containers to exit; print each exit status.")
    p.many("containers", metavar="CONTAINER")
    api = _Api(ctx)
    code = 0
    for id in p.parse(argv).containers:
        code = api.wait(id, timeout=None)
        print(code)
    return 0


def cmd_pause(cmd: str, argv: list[str], ctx: CliContext) -> int:
    p = Flags(f"moor {cmd}", "CONTAINER...", f"{cmd.capitalize()} containers' processes.")
    p.many("containers", metavar="CONTAINER")
    api = _Api(ctx)
    for id in p.parse(argv).containers:  # Pause|ResumeTaskRequest{container_id=1} -> Empty
        api.call(TASKS, "Pause" if cmd == "pause" else "Resume", Msg({1: id}), Fields)
    return 0


def cmd_top(argv: list[str], ctx: CliContext) -> int:
    p = Flags("moor top", "CONTAINER", "List a container's processes.")
    p.arg("container")
    id = p.parse(argv).container
    api = _Api(ctx)
    # ListPidsRequest{container_id=1} -> ListPidsResponse{processes=1 ProcessInfo{pid=1}}
    pids = [info.uint(1) for info in api.call(TASKS, "ListPids", Msg({1: id}), Fields).msgs(1)]
    rows = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        rows.append([pid, cmd])
    if ctx.json:
        ctx.emit_json([{"pid": p, "command": c} for p, c in rows])
    else:
        ctx.table(["pid", "command"], rows)
    return 0


def cmd_update(argv: list[str], ctx: CliContext) -> int:
    from . import spec as sp

    p = Flags("moor update", "[-m SIZE] [--cpus N] CONTAINER...",
              "Change running containers' resource limits.")
    p.value("-m", "--memory", metavar="SIZE", help="memory limit (512m, 1g, bytes)")
    p.value("--cpus", metavar="N", kind=float, default=0.0, help="CPU limit, in CPUs")
    p.many("containers", metavar="CONTAINER")
    a = p.parse(argv)
    api = _Api(ctx)
    for id in a.containers:
        c = api.container(id)
        res: dict[str, Any] = loads(c.spec).get("linux", {}).get("resources", {})
        if a.memory:
            res["memory"] = {"limit": sp.parse_memory(a.memory)}
        if a.cpus:
            res["cpu"] = {"quota": int(a.cpus * 100000), "period": 100000}
        # UpdateTaskRequest{container_id=1, resources=2 Any{type_url=1, value=2}} -> Empty
        api.call(TASKS, "Update", Msg({1: id, 2: Msg({1: RESOURCES_URL, 2: dumps(res).encode()})}),
                 Fields)
    return 0


def cmd_containers(argv: list[str], ctx: CliContext) -> int:
    sub = argv[0] if argv else "ls"
    api = _Api(ctx)
    if sub in ("ls", "list"):
        cs = api.containers()
        if ctx.json:
            ctx.emit_json([{"id": c.id, "image": c.image, "runtime": c.runtime,
                            "labels": dict(c.labels), "sandbox": c.sandbox} for c in cs])
        else:
            ctx.table(["container", "image", "runtime"],
                      [[c.id, c.image or "-", c.runtime] for c in cs])
        return 0
    if sub in ("rm", "delete", "del"):
        for id in argv[1:]:
            c = api.container(id)
            t = api.task(id)
            if t is not None:  # as ctr: a stopped task goes first, a running one stays
                if t.status != 3:
                    raise FailedPrecondition(f"container {id} is running: stop it first or use moor rm -f")
                api.delete_task(id)
            api.remove_container(c)
        return 0
    if sub == "info" and len(argv) == 2:
        c = api.container(argv[1])
        ctx.emit_json({"id": c.id, "image": c.image, "runtime": c.runtime,
                       "labels": dict(c.labels), "snapshotter": c.snapshotter,
                       "snapshot_key": c.snapshot_key, "sandbox": c.sandbox,
                       "spec": loads(c.spec)})
        return 0
    raise InvalidArgument("usage: moor containers ls|rm ID...|info ID")


def cmd_tasks(argv: list[str], ctx: CliContext) -> int:
    Flags("moor tasks", "", "List tasks.").parse(argv)
    api = _Api(ctx)
    ts = api.tasks()
    if ctx.json:
        ctx.emit_json([{"id": t.container_id, "pid": t.pid, "status": STATUS.get(t.status),
                        "exit_status": t.exit_status} for t in ts.values()])
    else:
        ctx.table(["task", "pid", "status"],
                  [[t.container_id, t.pid, STATUS.get(t.status, "?")] for t in ts.values()])
    return 0


def main(cmd: str, argv: list[str], ctx: CliContext) -> int:
    simple: dict[str, Callable[[list[str], CliContext], int]] = {
        "run": cmd_run, "ps": cmd_ps, "exec": cmd_exec, "kill": cmd_kill, "stop": cmd_stop,
        "attach": cmd_attach,
        "rm": cmd_rm, "logs": cmd_logs, "wait": cmd_wait, "top": cmd_top,
        "update": cmd_update, "containers": cmd_containers, "tasks": cmd_tasks,
    }
    if cmd in ("pause", "unpause"):
        return cmd_pause(cmd, argv, ctx)
    fn = simple.get(cmd)
    if fn is None:
        raise InvalidArgument(f"unknown command {cmd!r}")
    return fn(argv, ctx)


__all__: Sequence[str] = ["main"]
