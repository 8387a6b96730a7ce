"""OCI spec -> NRI messages: what plugins see of a container or pod.

Pure functions. The runtime builds its OCI spec, then hands :func:`container_from_spec`'s
``Container`` to the CreateContainer hook (the client does this for it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moorage.api.nri.pkg.api import api_pb2 as api

from .adjust import HOOK_KINDS, resources_from_oci

STATES = {
    "created": api.CONTAINER_CREATED,
    "paused": api.CONTAINER_PAUSED,
    "running": api.CONTAINER_RUNNING,
    "stopped": api.CONTAINER_STOPPED,
}


def container_from_spec(
    spec: Mapping[str, Any],
    container_id: str,
    *,
    name: str = "",
    pod_id: str = "",
    labels: Mapping[str, str] | None = None,
    state: str = "",
    pid: int = 0,
) -> api.Container:
    """An NRI Container describing ``spec`` (args, env, mounts, hooks, annotations,
    rlimits, linux devices/resources/cgroups path/OOM score/namespaces/sysctl)."""
    c = api.Container(
        id=container_id,
        pod_sandbox_id=pod_id or container_id,
        name=name or container_id,
        state=STATES.get(state, api.CONTAINER_UNKNOWN),
        labels=dict(labels or {}),
        annotations=dict(spec.get("annotations") or {}),
        pid=pid,
    )
    process = spec.get("process") or {}
    c.args.extend(process.get("args") or [])
    c.env.extend(process.get("env") or [])
    for r in process.get("rlimits") or []:
        c.rlimits.add(type=r.get("type", ""), hard=int(r.get("hard", 0)), soft=int(r.get("soft", 0)))
    for m in spec.get("mounts") or []:
        c.mounts.add(destination=m.get("destination", ""), type=m.get("type", ""), source=m.get("source", ""),
                     options=list(m.get("options") or []))
    hooks = spec.get("hooks") or {}
    for kind, oci in HOOK_KINDS:
        for h in hooks.get(oci) or []:
            hook = getattr(c.hooks, kind).add(path=h.get("path", ""), args=list(h.get("args") or []),
                                              env=list(h.get("env") or []))
            if h.get("timeout") is not None:
                hook.timeout.value = h["timeout"]
    user = process.get("user") or {}
    if user:
        c.user.uid = int(user.get("uid", 0))
        c.user.gid = int(user.get("gid", 0))
        c.user.additional_gids.extend(int(g) for g in user.get("additionalGids") or [])
    linux = spec.get("linux") or {}
    if linux:
        cl = c.linux
        for ns in linux.get("namespaces") or []:
            cl.namespaces.add(type=ns.get("type", ""), path=ns.get("path", ""))
        for d in linux.get("devices") or []:
            dev = cl.devices.add(path=d.get("path", ""), type=d.get("type", ""), major=int(d.get("major", 0)),
                                 minor=int(d.get("minor", 0)))
            if d.get("fileMode") is not None:
                dev.file_mode.value = d["fileMode"]
            if d.get("uid") is not None:
                dev.uid.value = d["uid"]
            if d.get("gid") is not None:
                dev.gid.value = d["gid"]
        if linux.get("resources"):
            cl.resources.CopyFrom(resources_from_oci(linux["resources"]))
        if linux.get("cgroupsPath"):
            cl.cgroups_path = linux["cgroupsPath"]
        for k, v in (linux.get("sysctl") or {}).items():
            cl.sysctl[k] = v
    if process.get("oomScoreAdj") is not None:
        c.linux.oom_score_adj.value = process["oomScoreAdj"]
    return c


def pod_for(container_id: str, name: str = "", namespace: str = "", labels: Mapping[str, str] | None = None,
            annotations: Mapping[str, str] | None = None) -> api.PodSandbox:
    """A stand-in pod for a container that has none (``moor run``): its own id and name, so
    plugins that expect a pod always get one."""
    return api.PodSandbox(id=container_id, name=name or container_id, namespace=namespace,
                          labels=dict(labels or {}), annotations=dict(annotations or {}))
