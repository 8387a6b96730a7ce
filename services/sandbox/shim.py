"""The shim sandboxer: Controller calls forwarded to a shim's containerd.runtime.sandbox.v1.Sandbox.

As containerd's shim controller (reference §5.3): ``create`` makes a bundle under the state
dir (``config.json`` = the sandbox spec's JSON value, or ``{}``), launches the runtime's shim
binary with the runtime v2 ``start`` protocol (cwd = bundle; ``-namespace -address
-publish-binary -id``; ``TTRPC_ADDRESS`` = the proxy), reads the address it prints (bare
``unix://`` or JSON bootstrap), then calls ``CreateSandbox``. ``start`` maps to
``StartSandbox`` and returns the shim endpoint (``ttrpc+unix://...``, task API version) so
tasks can join it; stop/wait/status/platform/metrics map one to one; ``shutdown`` calls
``ShutdownSandbox`` (the shim exits), runs ``<shim> delete`` if the shim was unreachable,
and removes the bundle. The shim's address is recorded, so a restarted service reconnects.
``/sandboxes/exit`` is published when the shim's ``WaitSandbox`` returns (a watcher task
started with the sandbox).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moorage import errdefs
from moorage.api.containerd.runtime.sandbox.v1 import sandbox_pb2 as spb
from moorage.api.containerd.runtime.sandbox.v1.sandbox_ttrpc import SandboxClient
from moorage.namespaces import NAMESPACE_KEY, namespace

from . import wire
from .config import SandboxConfig
from .contract import (
    AnyValue,
    ControllerInstance,
    ControllerStatus,
    CreateOptions,
    EventSink,
    NOT_READY,
    ExitStatus,
    NullSink,
    Platform,
    SandboxEvent,
)
from .db import Database
from .store import SqliteStore, validate_id

if TYPE_CHECKING:
    from ttrpc.client import Client

log = logging.getLogger(__name__)
UNKNOWN_EXIT = 255


def binary_for(runtime: str) -> str:
    """``io.containerd.NAME.VER`` -> ``containerd-shim-NAME-VER`` on PATH; absolute paths as is."""
    if not runtime:
        raise errdefs.InvalidArgument("sandbox runtime name must not be empty")
    if os.path.isabs(runtime):
        if not (os.path.isfile(runtime) and os.access(runtime, os.X_OK)):
            raise errdefs.NotFound(f"runtime {runtime!r}: binary not installed")
        return runtime
    parts = runtime.split(".")
    if len(parts) < 2 or not all(parts[-2:]) or "/" in runtime:
        raise errdefs.InvalidArgument(f"invalid runtime name {runtime!r}: want io.containerd.NAME.VERSION or an absolute path")
    name = f"containerd-shim-{parts[-2]}-{parts[-1]}"
    found = shutil.which(name)
    if not found:
        raise errdefs.NotFound(f"runtime {runtime!r}: binary {name!r} not installed")
    return found


def parse_start_output(out: bytes) -> tuple[str, int]:
    """(socket path, task API version) from what ``start`` printed."""
    text = out.decode("utf-8", "replace").strip()
    version = 2
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise errdefs.Unavailable(f"shim start printed invalid JSON: {text[:200]!r}") from None
        if doc.get("protocol", "ttrpc") != "ttrpc":
            raise errdefs.Unavailable(f"shim speaks {doc.get('protocol')!r}; only ttrpc is supported")
        version = int(doc.get("version", 2))
        text = str(doc.get("address", ""))
    if text.startswith("unix://"):
        text = text[len("unix://") :]
    if not text.startswith("/"):
        raise errdefs.Unavailable(f"shim start printed no address: {out[:200]!r}")
    return text, version


class ShimController:
    """contract.Controller forwarding to runtime shims (one sandboxer name)."""

    def __init__(
        self,
        name: str,
        db: Database,
        store: SqliteStore,
        config: SandboxConfig,
        state: Path,
        proxy_address: str,
        events: EventSink | None = None,
    ) -> None:
        self.name = name
        self.db = db
        self.store = store
        self.config = config
        self.state = state
        self.proxy_address = proxy_address
        self.events: EventSink = events or NullSink()
        self._clients: dict[tuple[str, str], Client] = {}
        self._watchers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _get(self, ns: str, sandbox_id: str) -> dict[str, Any]:
        rec = self.db.get_instance(ns, sandbox_id, self.name)
        if rec is None:
            raise errdefs.NotFound(f"sandbox {sandbox_id!r}: no instance in sandboxer {self.name!r}")
        return rec

    def _put(self, ns: str, sandbox_id: str, rec: dict[str, Any]) -> None:
        self.db.put_instance(ns, sandbox_id, self.name, rec)

    async def _client(self, ns: str, sandbox_id: str, rec: dict[str, Any]) -> SandboxClient:
        from moorage.rpc import connect

        key = (ns, sandbox_id)
        client = self._clients.get(key)
        if client is None or client.closed:
            client = await connect(rec["address"])
            self._clients[key] = client
        return SandboxClient(client)

    def _md(self, ns: str) -> dict[str, str]:
        return {NAMESPACE_KEY: ns}

    def _flags(self, binary: str, ns: str, sandbox_id: str) -> list[str]:
        return [binary, "-namespace", ns, "-address", self.proxy_address, "-publish-binary", "moorage", "-id", sandbox_id]

    def _env(self, ns: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
        env.update(TTRPC_ADDRESS=self.proxy_address, GRPC_ADDRESS=self.proxy_address, NAMESPACE=ns, MAX_SHIM_VERSION="2")
        return env

    async def _run(self, argv: list[str], cwd: Path, ns: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=self._env(ns),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.config.shim_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise errdefs.Unavailable(f"{os.path.basename(argv[0])} {argv[-1]}: timed out") from None
        if proc.returncode != 0:
            msg = (err or out).decode("utf-8", "replace").strip()
            raise errdefs.Unavailable(f"{os.path.basename(argv[0])} {argv[-1]} failed: {msg}")
        return out

    # lifecycle ---------------------------------------------------------------------------

    async def create(self, sandbox_id: str, opts: CreateOptions) -> None:
        ns = namespace()
        validate_id(sandbox_id)
        async with self._locks.setdefault((ns, sandbox_id), asyncio.Lock()):
            if self.db.has_instance(ns, sandbox_id):
                raise errdefs.AlreadyExists(f"sandbox {sandbox_id!r}: instance already exists")
            sandbox = opts.sandbox
            if sandbox is None:
                try:
                    sandbox = await self.store.get(sandbox_id)
                except errdefs.NotFound:
                    raise errdefs.FailedPrecondition(
                        f"sandbox {sandbox_id!r}: the shim sandboxer needs the sandbox record (runtime name)"
                    ) from None
            binary = binary_for(sandbox.runtime.name)
            bundle = self.state / ns / sandbox_id
            bundle.mkdir(parents=True, exist_ok=True, mode=0o711)
            (bundle / "config.json").write_bytes(sandbox.spec.value if sandbox.spec and sandbox.spec.value else b"{}")
            rec: dict[str, Any] = {"binary": binary, "bundle": str(bundle), "address": "", "version": 2, "state": "creating"}
            self._put(ns, sandbox_id, rec)
            try:
                out = await self._run([*self._flags(binary, ns, sandbox_id), "start"], bundle, ns)
                rec["address"], rec["version"] = parse_start_output(out)
                self._put(ns, sandbox_id, rec)
                client = await self._client(ns, sandbox_id, rec)
                req = spb.CreateSandboxRequest(
                    sandbox_id=sandbox_id,
                    bundle_path=str(bundle),
                    rootfs=wire.mounts_to_pb(opts.rootfs),
                    netns_path=opts.netns_path,
                    annotations=dict(opts.annotations),
                )
                options = wire.any_to_pb(opts.options)
                if options is not None:
                    req.options.CopyFrom(options)
                await client.CreateSandbox(req, timeout=self.config.shim_timeout, metadata=self._md(ns))
                rec["state"] = "created"
                self._put(ns, sandbox_id, rec)
            except BaseException:
                await asyncio.shield(asyncio.ensure_future(self._cleanup(ns, sandbox_id, rec)))
                raise
        await self.events.publish(SandboxEvent("/sandboxes/create", sandbox_id))

    async def _cleanup(self, ns: str, sandbox_id: str, rec: dict[str, Any]) -> None:
        """Stop the shim (ShutdownSandbox, else ``<shim> delete``), drop bundle and record."""
        shut = False
        if rec.get("address"):
            try:
                client = await self._client(ns, sandbox_id, rec)
                await client.ShutdownSandbox(
                    spb.ShutdownSandboxRequest(sandbox_id=sandbox_id), timeout=self.config.shim_timeout, metadata=self._md(ns)
                )
                shut = True
            except errdefs.Error as exc:
                log.info("sandbox %s/%s: ShutdownSandbox: %s", ns, sandbox_id, exc)
        if not shut and rec.get("binary") and os.path.isdir(rec["bundle"]):
            try:
                argv = [*self._flags(rec["binary"], ns, sandbox_id), "-bundle", rec["bundle"], "delete"]
                await self._run(argv, Path(rec["bundle"]), ns)
            except (errdefs.Error, OSError) as exc:
                log.warning("sandbox %s/%s: shim delete: %s", ns, sandbox_id, exc)
        conn = self._clients.pop((ns, sandbox_id), None)
        if conn is not None:
            await conn.close()
        watcher = self._watchers.pop((ns, sandbox_id), None)
        if watcher is not None:
            watcher.cancel()
        shutil.rmtree(rec["bundle"], ignore_errors=True)
        self.db.delete_instance(ns, sandbox_id, self.name)

    async def start(self, sandbox_id: str) -> ControllerInstance:
        ns = namespace()
        rec = self._get(ns, sandbox_id)
        client = await self._client(ns, sandbox_id, rec)
        resp = await client.StartSandbox(spb.StartSandboxRequest(sandbox_id=sandbox_id), metadata=self._md(ns))
        rec["state"] = "started"
        self._put(ns, sandbox_id, rec)
        await self.events.publish(SandboxEvent("/sandboxes/start", sandbox_id))
        if (ns, sandbox_id) not in self._watchers:
            self._watchers[(ns, sandbox_id)] = asyncio.ensure_future(self._watch(ns, sandbox_id))
        return ControllerInstance(
            sandbox_id=sandbox_id,
            pid=resp.pid,
            created_at=wire.ts_from_pb(resp.created_at, resp.HasField("created_at")),
            address=f"ttrpc+unix://{rec['address']}",
            version=int(rec["version"]),
            spec=wire.any_from_pb(resp.spec, resp.HasField("spec")),
        )

    async def _watch(self, ns: str, sandbox_id: str) -> None:
        try:
            status = await self._wait(ns, sandbox_id)
        except (errdefs.Error, OSError) as exc:
            log.info("sandbox %s/%s: wait ended: %s", ns, sandbox_id, exc)
            return
        await self.events.publish(SandboxEvent("/sandboxes/exit", sandbox_id, status.exit_status, status.exited_at))

    async def _wait(self, ns: str, sandbox_id: str) -> ExitStatus:
        """The shim's answer; a shim that died (connection lost) exits 255, as containerd
        reports a task whose shim vanished."""
        rec = self._get(ns, sandbox_id)
        try:
            client = await self._client(ns, sandbox_id, rec)
            resp = await client.WaitSandbox(spb.WaitSandboxRequest(sandbox_id=sandbox_id), metadata=self._md(ns))
        except errdefs.Unavailable:
            if self.db.get_instance(ns, sandbox_id, self.name) is None:
                raise errdefs.NotFound(f"sandbox {sandbox_id!r}: shut down") from None
            return ExitStatus(UNKNOWN_EXIT, time.time_ns())
        return ExitStatus(resp.exit_status, wire.ts_from_pb(resp.exited_at, resp.HasField("exited_at")))

    async def platform(self, sandbox_id: str) -> Platform:
        ns = namespace()
        client = await self._client(ns, sandbox_id, self._get(ns, sandbox_id))
        resp = await client.Platform(spb.PlatformRequest(sandbox_id=sandbox_id), metadata=self._md(ns))
        return wire.platform_from_pb(resp.platform)

    async def stop(self, sandbox_id: str, timeout_secs: int = 0) -> None:
        ns = namespace()
        client = await self._client(ns, sandbox_id, self._get(ns, sandbox_id))
        req = spb.StopSandboxRequest(sandbox_id=sandbox_id, timeout_secs=timeout_secs)
        await client.StopSandbox(req, metadata=self._md(ns))

    async def wait(self, sandbox_id: str) -> ExitStatus:
        return await self._wait(namespace(), sandbox_id)

    async def status(self, sandbox_id: str, verbose: bool = False) -> ControllerStatus:
        ns = namespace()
        rec = self._get(ns, sandbox_id)
        try:
            client = await self._client(ns, sandbox_id, rec)
            r = await client.SandboxStatus(spb.SandboxStatusRequest(sandbox_id=sandbox_id, verbose=verbose), metadata=self._md(ns))
        except errdefs.Unavailable as exc:  # the shim is gone: report it, Shutdown cleans up
            return ControllerStatus(
                sandbox_id=sandbox_id,
                state=NOT_READY,
                info={"error": f"shim unreachable: {exc}"},
                address=f"ttrpc+unix://{rec['address']}" if rec.get("address") else "",
                version=int(rec["version"]),
            )
        return ControllerStatus(
            sandbox_id=sandbox_id,
            state=r.state,
            pid=r.pid,
            info=dict(r.info),
            created_at=wire.ts_from_pb(r.created_at, r.HasField("created_at")),
            exited_at=wire.ts_from_pb(r.exited_at, r.HasField("exited_at")),
            extra=wire.any_from_pb(r.extra, r.HasField("extra")),
            address=f"ttrpc+unix://{rec['address']}",
            version=int(rec["version"]),
        )

    async def shutdown(self, sandbox_id: str) -> None:
        ns = namespace()
        async with self._locks.setdefault((ns, sandbox_id), asyncio.Lock()):
            rec = self._get(ns, sandbox_id)
            await self._cleanup(ns, sandbox_id, rec)
        self._locks.pop((ns, sandbox_id), None)

    async def metrics(self, sandbox_id: str) -> AnyValue | None:
        ns = namespace()
        client = await self._client(ns, sandbox_id, self._get(ns, sandbox_id))
        r = await client.SandboxMetrics(spb.SandboxMetricsRequest(sandbox_id=sandbox_id), metadata=self._md(ns))
        return wire.any_from_pb(r.metrics.data, r.metrics.HasField("data"))

    async def reconcile(self) -> list[str]:
        """Clean up instances whose create never finished; ``ns/id`` of each one cleaned."""
        cleaned = []
        for ns, sandbox_id, _sb, rec in self.db.instances(self.name):
            if rec.get("state") != "creating":
                continue
            try:
                await self._cleanup(ns, sandbox_id, rec)
                cleaned.append(f"{ns}/{sandbox_id}")
            except (errdefs.Error, OSError) as exc:
                log.warning("reconcile: shim sandbox %s/%s: %s", ns, sandbox_id, exc)
        return cleaned

    async def close(self) -> None:
        for task in self._watchers.values():
            task.cancel()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
