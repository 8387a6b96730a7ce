"""The runtime's side of NRI: the container lifecycle handed to the nri process.

Calls `moorage.nri.v1.Hooks` through the proxy (moorage.nri.client.NriHooks) at the points
containerd's CRI does: CreateContainer in Tasks.Create, before the bundle is written (the
merged adjustment is applied to the OCI spec); PostCreateContainer once the shim created
the task; StartContainer before the shim starts it and PostStartContainer after;
UpdateContainer / PostUpdateContainer around Tasks.Update; StopContainer when the task is
deleted (or its shim died); RemoveContainer in Containers.Delete.

Errors: CreateContainer, StartContainer and UpdateContainer fail their operation (a
plugin's error names the plugin; a conflict names both); the post-/stop/remove
notifications are logged, never fail anything (as containerd).

Absent nri process: `[runtime] nri = false` never calls it. Otherwise a call the proxy
answers UNAVAILABLE (the nri process is down) or UNIMPLEMENTED for the Hooks service (not
configured) means "no plugins": the operation goes on unchanged, and the runtime stops
asking for `ABSENT_RETRY` seconds, so a suite without NRI pays one fast failed call per
interval, not one per container.

Plugin-requested updates (the nri process calls Tasks.Update) carry the metadata key
`NRI_ORIGIN_KEY`; those skip the Update hooks (containerd applies them without asking the
plugins again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moorage import annotations as cri
from moorage import errdefs
from moorage.namespaces import current_namespace

if TYPE_CHECKING:
    from moorage.api.nri.pkg.api import api_pb2 as api
    from moorage.nri.client import NriHooks

SERVICE = "moorage.nri.v1.Hooks"
ABSENT_RETRY = 2.0
NRI_ORIGIN_KEY = "moorage-nri-origin"
NAME_LABEL = "moorage/name"


def _is_pause(spec: Any) -> bool:
    return isinstance(spec, Mapping) and (spec.get("annotations") or {}).get(cri.CONTAINER_TYPE) == "sandbox"


class RuntimeNri:
    """The hooks the task manager calls; see the module docstring for the semantics."""

    def __init__(self, address: Path | str, logger: logging.Logger, *, enabled: bool = True,
                 retry: float = ABSENT_RETRY, hooks: NriHooks | None = None) -> None:
        self.log = logger
        self.enabled = enabled
        self.retry = retry
        self._hooks = hooks
        self._address = address
        self._absent_until = 0.0
        self.absent_calls = 0
        """How many calls found the nri process absent (tests: the cache works)."""

    @property
    def hooks(self) -> NriHooks:
        if self._hooks is None:
            from moorage.nri.client import NriHooks

            self._hooks = NriHooks(self._address, optional=False)
        return self._hooks

    async def close(self) -> None:
        if self._hooks is not None:
            await self._hooks.close()

    # ---- plumbing ------------------------------------------------------------------------

    def active(self) -> bool:
        return self.enabled and asyncio.get_running_loop().time() >= self._absent_until

    @staticmethod
    def _is_absent(exc: errdefs.Error) -> bool:
        if isinstance(exc, errdefs.Unavailable):
            return True
        # the proxy (or a server without the service) answers UNIMPLEMENTED "service <name>";
        # an adjustment moorage cannot apply is NotImplemented too, and must fail the create
        return isinstance(exc, errdefs.NotImplemented) and SERVICE in str(exc) and "plugin" not in str(exc)

    def _absent(self, exc: errdefs.Error) -> None:
        self.absent_calls += 1
        if self._absent_until == 0.0:
            self.log.info("nri: hooks not reachable (%s); containers go on without NRI", exc)
        self._absent_until = asyncio.get_running_loop().time() + self.retry

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of NriHooks; None if the nri process is absent or the container is
        a CRI pod's pause (plugins see pods, not their pause, as with containerd). Errors raise."""
        if not self.active() or (args and _is_pause(args[0])):
            return None
        try:
            result = await getattr(self.hooks, method)(*args, **kwargs)
        except (errdefs.Unavailable, errdefs.NotImplemented) as exc:
            if not self._is_absent(exc):
                raise
            self._absent(exc)
            return None
        if self._absent_until:
            self._absent_until = 0.0
            self.log.info("nri: hooks reachable again")
        return result

    async def _notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            await self._call(method, *args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - notifications never fail the operation
            self.log.warning("nri: %s of %s: %s", method, kwargs.get("container_id", "?"), exc)

    @staticmethod
    def pod(sandbox: str, spec: Mapping[str, Any]) -> api.PodSandbox | None:
        """The NRI pod of a container in a sandbox (None: the client's stand-in pod)."""
        if not sandbox:
            return None
        from moorage.api.nri.pkg.api import api_pb2 as api

        notes = spec.get("annotations") or {}
        pod = api.PodSandbox(id=sandbox, name=notes.get(cri.SANDBOX_NAME) or sandbox,
                             namespace=notes.get(cri.SANDBOX_NAMESPACE) or current_namespace.get(None) or "",
                             uid=notes.get(cri.SANDBOX_UID, ""))
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network" and ns.get("path"):
                pod.linux.namespaces.add(type="network", path=ns["path"])
        return pod

    @staticmethod
    def name(container_id: str, labels: Mapping[str, str]) -> str:
        return labels.get(NAME_LABEL) or container_id

    def _kw(self, container_id: str, spec: Mapping[str, Any], labels: Mapping[str, str],
            sandbox: str) -> dict[str, Any]:
        cri_name = (spec.get("annotations") or {}).get(cri.CONTAINER_NAME, "")
        return {"container_id": container_id, "name": cri_name or self.name(container_id, labels),
                "pod": self.pod(sandbox, spec), "labels": dict(labels)}

    # ---- the hooks ----------------------------------------------------------------------

    async def create(self, spec: dict[str, Any], container_id: str, labels: Mapping[str, str],
                     sandbox: str = "") -> dict[str, Any]:
        """CreateContainer: ``spec`` with the plugins' merged adjustment applied (in place)."""
        adjust = await self._call("create_container", spec, **self._kw(container_id, spec, labels, sandbox))
        if adjust is None:
            return spec
        from moorage.nri.adjust import apply_adjustment

        apply_adjustment(spec, adjust)
        return spec

    async def post_create(self, spec: Mapping[str, Any], container_id: str, labels: Mapping[str, str],
                          sandbox: str, pid: int) -> None:
        await self._notify("post_create_container", spec, pid=pid, **self._kw(container_id, spec, labels, sandbox))

    async def start(self, spec: Mapping[str, Any], container_id: str, labels: Mapping[str, str],
                    sandbox: str, pid: int) -> None:
        """StartContainer: a plugin's error fails the start."""
        await self._call("start_container", spec, pid=pid, **self._kw(container_id, spec, labels, sandbox))

    async def post_start(self, spec: Mapping[str, Any], container_id: str, labels: Mapping[str, str],
                         sandbox: str, pid: int) -> None:
        await self._notify("post_start_container", spec, pid=pid, **self._kw(container_id, spec, labels, sandbox))

    async def update(self, spec: Mapping[str, Any], resources: Mapping[str, Any], container_id: str,
                     labels: Mapping[str, str], sandbox: str) -> dict[str, Any]:
        """UpdateContainer: the OCI resources to apply (the plugins may change them)."""
        out = await self._call("update_container", spec, resources, **self._kw(container_id, spec, labels, sandbox))
        return dict(resources) if out is None else dict(out)

    async def post_update(self, spec: Mapping[str, Any], container_id: str, labels: Mapping[str, str],
                          sandbox: str, pid: int) -> None:
        await self._notify("post_update_container", spec, pid=pid, **self._kw(container_id, spec, labels, sandbox))

    async def stop(self, spec: Mapping[str, Any], container_id: str, labels: Mapping[str, str],
                   sandbox: str, pid: int) -> None:
        await self._notify("stop_container", spec, pid=pid, **self._kw(container_id, spec, labels, sandbox))

    async def remove(self, spec: Mapping[str, Any], container_id: str, labels: Mapping[str, str],
                     sandbox: str) -> None:
        await self._notify("remove_container", spec, **self._kw(container_id, spec, labels, sandbox))
