"""The pod sandboxer: a network namespace set up by CNI, plus hostname/hosts/resolv.conf.

No pause process: the sandbox *is* its network namespace and files; containers join the
namespace by path (``Status.info["netns_path"]``), so Start reports pid 0. Intent is
persisted before every side effect, in this order (containerd's sandbox_run.go):

    record {netns path, key, pod meta} ─► netns created ─► record {cni: adding, conflist} ─► CNI ADD
    ─► record {cni: added, result, ips} ─► files ─► hooks.run ─► /sandboxes/create

The CNI teardown is armed before ADD (an ADD can allocate an address and still fail). On
any failure the teardown runs as its own task, shielded from the caller's cancellation,
under ``cni_del_timeout``; if it succeeds the instance is forgotten, otherwise it stays
NotReady (``failed``) with its namespace path recorded and ``stop``/``shutdown`` (or the
startup reconciler) retry DEL until it succeeds. The namespace is removed only once DEL
succeeded, so a retry still finds the interfaces. The CNI container id is the instance's
``key`` (32 hex characters; ids are only unique per namespace) and the namespace file is
``<netns_dir>/<netns_prefix><key>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import platform as host_platform
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from moorage import errdefs
from moorage.namespaces import namespace

from . import netns, podfiles
from .cni import Attachment, Cni, NetworkConfig, load_conflist, parse_conflist, result_ips
from .config import SandboxConfig
from .contract import (
    NETWORK_EXTENSION,
    NETWORK_TYPE,
    NOT_READY,
    POD_CONFIG_TYPE,
    READY,
    AnyValue,
    ControllerInstance,
    ControllerStatus,
    CreateOptions,
    EventSink,
    ExitStatus,
    Network,
    NoHooks,
    NullSink,
    Platform,
    PodConfig,
    PodHooks,
    PodMeta,
    SandboxEvent,
    State,
    request_deadline,
)
from .db import Database
from .store import SqliteStore, validate_id

log = logging.getLogger(__name__)
T = TypeVar("T")

CNI_NONE, CNI_ADDING, CNI_ADDED, CNI_DELETED = "none", "adding", "added", "deleted"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_arch() -> str:
    machine = host_platform.machine()
    return _ARCH.get(machine, machine)


class PodController:
    """contract.Controller for pod sandboxes (one sandboxer name)."""

    def __init__(
        self,
        name: str,
        db: Database,
        store: SqliteStore,
        config: SandboxConfig,
        root: Path,
        events: EventSink | None = None,
        hooks: PodHooks | None = None,
    ) -> None:
        self.name = name
        self.db = db
        self.store = store
        self.config = config
        self.root = root
        self.events: EventSink = events or NullSink()
        self.hooks: PodHooks = hooks or NoHooks()
        self.cni = Cni(config.cni_bin_dirs)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._exits: dict[tuple[str, str], asyncio.Event] = {}
        self._background: set[asyncio.Future[None]] = set()

    # records -----------------------------------------------------------------------------

    def _get(self, ns: str, sandbox_id: str) -> dict[str, Any]:
        rec = self.db.get_instance(ns, sandbox_id, self.name)
        if rec is None:
            raise errdefs.NotFound(f"sandbox {sandbox_id!r}: no instance in sandboxer {self.name!r}")
        return rec

    def _put(self, ns: str, sandbox_id: str, rec: dict[str, Any]) -> None:
        self.db.put_instance(ns, sandbox_id, self.name, rec)

    def _lock(self, ns: str, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault((ns, sandbox_id), asyncio.Lock())

    def _exit_event(self, ns: str, sandbox_id: str) -> asyncio.Event:
        return self._exits.setdefault((ns, sandbox_id), asyncio.Event())

    def netns_path(self, key: str) -> str:
        return os.path.join(self.config.netns_dir, self.config.netns_prefix + key)

    def pod_dir(self, ns: str, sandbox_id: str) -> Path:
        return self.root / "pods" / ns / sandbox_id

    # lifecycle ---------------------------------------------------------------------------

    async def create(self, sandbox_id: str, opts: CreateOptions) -> None:
        ns = namespace()
        validate_id(sandbox_id)
        pod = _pod_config(opts)
        if opts.netns_path and not pod.host_network and not netns.is_netns(opts.netns_path):
            raise errdefs.InvalidArgument(f"netns_path {opts.netns_path!r} is not a network namespace")
        async with self._lock(ns, sandbox_id):
            if self.db.has_instance(ns, sandbox_id):
                raise errdefs.AlreadyExists(f"sandbox {sandbox_id!r}: instance already exists")
            key = secrets.token_hex(16)
            owned = not pod.host_network and not opts.netns_path
            path = self.netns_path(key) if owned else ("" if pod.host_network else opts.netns_path)
            meta = PodMeta(dict(opts.annotations), dict(opts.sandbox.labels) if opts.sandbox else {})
            rec: dict[str, Any] = {
                "state": State.CREATED.value,
                "key": key,
                "netns": path,
                "netns_owned": owned,
                "config": pod.to_json().decode(),
                "cni": CNI_NONE,
                "network": None,
                "result": None,
                "ips": [],
                "dir": str(self.pod_dir(ns, sandbox_id)),
                "created_at": time.time_ns(),
                "exited_at": 0,
                "exit_status": 0,
                "error": "",
                "hostname": pod.hostname or sandbox_id[:63],
                "setup_done": False,
                "pod_meta": meta.to_record(),
            }
            self._put(ns, sandbox_id, rec)
            self._exits.pop((ns, sandbox_id), None)
            try:
                await self._setup(ns, sandbox_id, rec, pod, meta)
            except BaseException as exc:
                await self._rollback(ns, sandbox_id, exc)
                raise
        await self.events.publish(SandboxEvent("/sandboxes/create", sandbox_id))

    async def _setup(self, ns: str, sandbox_id: str, rec: dict[str, Any], pod: PodConfig, meta: PodMeta) -> None:
        if rec["netns_owned"]:
            try:
                netns.create(rec["netns"])
            except OSError as exc:
                raise errdefs.Internal(f"sandbox {sandbox_id}: create network namespace: {exc}") from exc
            try:
                net = load_conflist(self.config.cni_conf_dir)
            except errdefs.FailedPrecondition as exc:
                raise errdefs.FailedPrecondition(
                    f"{exc}: install one there (deploy/10-moorage.conflist), set [sandbox] cni_conf_dir, or use host networking"
                ) from None
            rec.update(cni=CNI_ADDING, network=net.to_json())
            self._put(ns, sandbox_id, rec)
            result = await self.cni.add(net, self._attachment(rec, pod), self._setup_timeout())
            rec.update(cni=CNI_ADDED, result=result, ips=result_ips(result))
            self._put(ns, sandbox_id, rec)
        hostname_path, hosts_path, resolv_path = podfiles.write(Path(rec["dir"]), rec["hostname"], tuple(rec["ips"]), pod.dns)
        # The files live in rec["dir"], recorded before any side effect: their paths are
        # persisted with setup_done (one write less; a crash before it leaves setup_done
        # False, and the reconciler tears the instance down and removes the directory).
        rec.update(hostname_path=str(hostname_path), hosts_path=str(hosts_path), resolv_conf_path=str(resolv_path))
        network = _network(rec)
        await self.hooks.run(sandbox_id, network, meta)
        self.store.update_extension(ns, sandbox_id, NETWORK_EXTENSION, AnyValue(NETWORK_TYPE, network.to_json()))
        rec.update(setup_done=True)
        self._put(ns, sandbox_id, rec)

    async def _rollback(self, ns: str, sandbox_id: str, cause: BaseException) -> None:
        """Undo a failed create on its own deadline, whatever happens to the caller: if the
        caller is cancelled the undo carries on alone, records included."""
        task = asyncio.ensure_future(self._undo(ns, sandbox_id, cause))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            log.warning("sandbox %s/%s: create cancelled; its teardown continues in the background", ns, sandbox_id)

    async def _undo(self, ns: str, sandbox_id: str, cause: BaseException) -> None:
        try:
            await self._teardown(ns, sandbox_id)
        except errdefs.Error as exc:
            log.warning("sandbox %s/%s: create failed (%s) and its teardown too (%s); kept NotReady", ns, sandbox_id, cause, exc)
            rec = self.db.get_instance(ns, sandbox_id, self.name)
            if rec is not None:
                rec.update(state=State.FAILED.value, error=f"setup: {cause or type(cause).__name__}; teardown: {exc}")
                self._put(ns, sandbox_id, rec)
            return
        podfiles.remove(self.pod_dir(ns, sandbox_id))
        self.db.delete_instance(ns, sandbox_id, self.name)
        self.store.update_extension(ns, sandbox_id, NETWORK_EXTENSION, None)

    async def _teardown(self, ns: str, sandbox_id: str) -> None:
        """CNI DEL (if an ADD was ever attempted), then the namespace; each step recorded.

        Raises (and records ``error``) when DEL fails; the namespace is then kept.
        """
        rec = self._get(ns, sandbox_id)
        try:
            if rec["cni"] in (CNI_ADDING, CNI_ADDED):
                net = parse_conflist(json.dumps(rec["network"]), "instance record")
                att = self._attachment(rec, PodConfig.from_json(rec["config"]))
                if not (rec["netns"] and netns.is_netns(rec["netns"])):
                    att = Attachment(att.container_id, "", att.ifname, att.args, att.capability_args)
                await self.cni.delete(net, att, rec["result"], self.config.cni_del_timeout)
                rec.update(cni=CNI_DELETED)
                self._put(ns, sandbox_id, rec)
            if rec["netns_owned"] and rec["netns"]:
                netns.remove(rec["netns"])
        except (errdefs.Error, OSError) as exc:
            rec.update(error=f"teardown: {exc}")
            self._put(ns, sandbox_id, rec)
            if isinstance(exc, OSError):
                raise errdefs.Internal(f"sandbox {sandbox_id}: teardown: {exc}") from exc
            raise
        if rec.get("error"):
            rec.update(error="")
            self._put(ns, sandbox_id, rec)

    async def start(self, sandbox_id: str) -> ControllerInstance:
        ns = namespace()
        async with self._lock(ns, sandbox_id):
            rec = self._get(ns, sandbox_id)
            if rec["state"] == State.FAILED.value:
                raise errdefs.FailedPrecondition(f"sandbox {sandbox_id!r} is not ready: {rec['error']}")
            if rec["state"] == State.STOPPED.value:
                raise errdefs.FailedPrecondition(f"sandbox {sandbox_id!r} is stopped")
            first = rec["state"] != State.READY.value
            if first:
                rec.update(state=State.READY.value, started_at=time.time_ns())
                self._put(ns, sandbox_id, rec)
        if first:
            await self.events.publish(SandboxEvent("/sandboxes/start", sandbox_id))
        return ControllerInstance(sandbox_id=sandbox_id, pid=0, created_at=rec["created_at"])

    async def platform(self, sandbox_id: str) -> Platform:
        self._get(namespace(), sandbox_id)
        return Platform("linux", host_arch())

    async def stop(self, sandbox_id: str, timeout_secs: int = 0) -> None:
        ns = namespace()
        async with self._lock(ns, sandbox_id):
            await self._stop_locked(ns, sandbox_id)

    async def _stop_locked(self, ns: str, sandbox_id: str) -> None:
        rec = self._get(ns, sandbox_id)
        if rec["state"] == State.STOPPED.value:
            return
        await _best_effort(f"stop hook for {sandbox_id}", self.hooks.stop(sandbox_id, _run_network(rec), _meta(rec)))
        await _shielded(self._teardown(ns, sandbox_id))
        rec = self._get(ns, sandbox_id)
        exited_at = time.time_ns()
        rec.update(state=State.STOPPED.value, exited_at=exited_at, exit_status=0)
        self._put(ns, sandbox_id, rec)
        self.store.update_extension(ns, sandbox_id, NETWORK_EXTENSION, AnyValue(NETWORK_TYPE, _network(rec).to_json()))
        self._exit_event(ns, sandbox_id).set()
        await self.events.publish(SandboxEvent("/sandboxes/exit", sandbox_id, 0, exited_at))

    async def wait(self, sandbox_id: str) -> ExitStatus:
        ns = namespace()
        self._get(ns, sandbox_id)
        event = self._exit_event(ns, sandbox_id)
        while True:
            rec = self.db.get_instance(ns, sandbox_id, self.name)
            if rec is None:
                return ExitStatus(0, time.time_ns())
            if rec["state"] == State.STOPPED.value:
                return ExitStatus(int(rec["exit_status"]), int(rec["exited_at"]))
            await event.wait()

    async def status(self, sandbox_id: str, verbose: bool = False) -> ControllerStatus:
        ns = namespace()
        rec = self._get(ns, sandbox_id)
        net = _network(rec)
        info = {
            "netns_path": net.netns_path,
            "ips": ",".join(net.ips),
            "hostname": net.hostname,
            "hostname_path": net.hostname_path,
            "hosts_path": net.hosts_path,
            "resolv_conf_path": net.resolv_conf_path,
            "state": rec["state"],
        }
        if rec.get("error"):
            info["error"] = rec["error"]
        ready = rec["state"] == State.READY.value
        if ready and rec["netns_owned"] and not netns.is_netns(rec["netns"]):
            ready = False  # removed behind our back: stop/shutdown still DEL without it
            info["error"] = "network namespace is gone"
        if verbose:
            info["cni_state"] = rec["cni"]
            info["cni_result"] = json.dumps(rec["result"] or {}, sort_keys=True)
            info["config"] = rec["config"]
        return ControllerStatus(
            sandbox_id=sandbox_id,
            state=READY if ready else NOT_READY,
            pid=0,
            info=info,
            created_at=int(rec["created_at"]),
            exited_at=int(rec["exited_at"]),
            extra=AnyValue(NETWORK_TYPE, net.to_json()),
        )

    async def shutdown(self, sandbox_id: str) -> None:
        ns = namespace()
        async with self._lock(ns, sandbox_id):
            rec = self._get(ns, sandbox_id)
            if rec["state"] != State.STOPPED.value:
                await self._stop_locked(ns, sandbox_id)
                rec = self._get(ns, sandbox_id)
            await _best_effort(f"remove hook for {sandbox_id}", self.hooks.remove(sandbox_id, _run_network(rec), _meta(rec)))
            podfiles.remove(Path(rec["dir"]))
            self.db.delete_instance(ns, sandbox_id, self.name)
            self.store.update_extension(ns, sandbox_id, NETWORK_EXTENSION, None)
            self._exit_event(ns, sandbox_id).set()
            self._exits.pop((ns, sandbox_id), None)
        self._locks.pop((ns, sandbox_id), None)

    async def metrics(self, sandbox_id: str) -> AnyValue | None:
        self._get(namespace(), sandbox_id)
        return None

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for rollbacks still running after their callers were cancelled."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    # reconciler support ------------------------------------------------------------------

    async def retry_teardown(self, ns: str, sandbox_id: str) -> None:
        """Retry a pending teardown of a failed instance (startup reconciler)."""
        async with self._lock(ns, sandbox_id):
            await _shielded(self._teardown(ns, sandbox_id))

    def mark_failed(self, ns: str, sandbox_id: str, reason: str) -> None:
        rec = self._get(ns, sandbox_id)
        rec.update(state=State.FAILED.value, error=reason)
        self._put(ns, sandbox_id, rec)

    async def release(self, net: NetworkConfig, key: str, netns_path: str, ifname: str) -> None:
        """DEL an attachment nobody records (reconciler), then remove its namespace if any."""
        await self.cni.delete(net, Attachment(key, netns_path, ifname), None, self.config.cni_del_timeout)
        if netns_path:
            netns.remove(netns_path)

    # helpers -----------------------------------------------------------------------------

    def _attachment(self, rec: dict[str, Any], pod: PodConfig) -> Attachment:
        caps: dict[str, Any] = {}
        if pod.port_mappings:
            caps["portMappings"] = [m.to_cni() for m in pod.port_mappings]
        return Attachment(rec["key"], rec["netns"], self.config.ifname, pod.cni_args, caps)

    def _setup_timeout(self) -> float:
        timeout = self.config.cni_add_timeout
        deadline = request_deadline.get()
        if deadline is not None:
            timeout = min(timeout, deadline - asyncio.get_running_loop().time())
        if timeout <= 0:
            raise errdefs.DeadlineExceeded("request deadline exceeded before CNI ADD")
        return timeout


def _pod_config(opts: CreateOptions) -> PodConfig:
    if opts.options is None or not opts.options.value:
        return PodConfig()
    if opts.options.type_url not in (POD_CONFIG_TYPE, "type.googleapis.com/" + POD_CONFIG_TYPE):
        raise errdefs.InvalidArgument(f"pod sandbox options: unsupported type {opts.options.type_url!r}, want {POD_CONFIG_TYPE}")
    try:
        return PodConfig.from_json(opts.options.value)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise errdefs.InvalidArgument(f"pod sandbox options: {exc}") from exc


def _network(rec: dict[str, Any]) -> Network:
    pod = PodConfig.from_json(rec["config"])
    present = rec["cni"] != CNI_DELETED and rec["state"] != State.STOPPED.value
    return Network(
        netns_path=rec["netns"] if (present or rec["state"] == State.FAILED.value) else "",
        ips=tuple(rec["ips"]) if present else (),
        hostname=rec["hostname"],
        hostname_path=rec.get("hostname_path", ""),
        hosts_path=rec.get("hosts_path", ""),
        resolv_conf_path=rec.get("resolv_conf_path", ""),
        port_mappings=pod.port_mappings,
    )


def _run_network(rec: dict[str, Any]) -> Network:
    """The network ``hooks.run`` was given, for the stop and remove hooks (also once torn down)."""
    return dataclasses.replace(_network(rec), netns_path=rec["netns"], ips=tuple(rec["ips"]))


def _meta(rec: dict[str, Any]) -> PodMeta:
    return PodMeta.from_record(rec.get("pod_meta"))


async def _shielded(coro: Awaitable[T]) -> T:
    """Run cleanup to completion even if the caller is cancelled (it then continues alone)."""
    return await asyncio.shield(asyncio.ensure_future(coro))


async def _best_effort(what: str, coro: Awaitable[None]) -> None:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - hooks never block teardown
        log.warning("%s failed: %s", what, exc)

