"""OCI specs for a pod's pause container and its containers (containerd CRI's rules).

Pure functions over the contract's types and the runtime service's spec builder
(:func:`moorage.services.runtime.spec.build_spec`): the image config is untrusted, the CRI
request is trusted (kubelet). The pause container owns the pod's UTS, IPC and (in POD
mode) PID namespaces and sits in the sandbox's network namespace; a container joins them
by ``/proc/<pause pid>/ns/*``, per its namespace options (NODE: the host's, CONTAINER: its
own, TARGET: another container's PID namespace).

Pod sysctls are checked before anything is made (:func:`check_sysctls`, CVE-2022-0811). User
annotations reach a spec only through the runtime handler's allow-lists (containerd's
``pod_annotations``/``container_annotations``); the CRI's own keys and the runc shim group
are written after them, so no annotation can move a container into another pod's shim.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from moorage.annotations import (
    CONTAINER_NAME,
    CONTAINER_TYPE,
    IMAGE_NAME,
    SANDBOX_ID,
    SANDBOX_NAME,
    SANDBOX_NAMESPACE,
    SANDBOX_UID,
)
from moorage.errdefs import InvalidArgument, PermissionDenied
from moorage.services.runtime import spec as sp
from moorage.services.runtime.spec import ImageConfig, Spec

from .config import annotation_pattern
from .contract import (
    ContainerConfig,
    Device,
    MountPropagation,
    NamespaceMode,
    PodConfig,
    Resources,
)

log = logging.getLogger("moorage.cri")

ALL_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
SANDBOX_OOM_SCORE_ADJ = -998
"""containerd's defaultSandboxOOMAdj."""
IPC_SYSCTLS = frozenset({"kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
                         "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni"})
"""Namespaced by IPC (runc's validSysctlMap, k8s.io/component-helpers' nameToNamespace), with ``fs.mqueue.*``."""
_SYSCTL_SEGMENT = "[a-z0-9]([-_a-z0-9]*[a-z0-9])?"
SYSCTL_NAME = re.compile(f"({_SYSCTL_SEGMENT}[./])*{_SYSCTL_SEGMENT}")
"""Kubernetes' SysctlContainSlashFmt (at most 253 characters)."""


class OomClamp:
    """containerd's ``restrict_oom_score_adj``: never ask for less than our own score."""

    def __init__(self, enabled: bool, current: int | None = None) -> None:
        self.enabled = enabled
        self.current = own_oom_score_adj() if current is None else current

    def __call__(self, requested: int, what: str) -> int:
        if self.enabled and requested < self.current:
            log.info("%s: oom_score_adj %d clamped to %d (restrict_oom_score_adj)", what, requested, self.current)
            return self.current
        return requested


def own_oom_score_adj() -> int:
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def can_lower_oom_score_adj() -> bool:
    """CAP_SYS_RESOURCE in our effective set (without it the kernel refuses a lower value)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 24))
    except (OSError, ValueError):
        pass
    return False


def cgroup_path(parent: str, default_parent: str, id: str) -> str:
    base = parent or default_parent or "/"
    if not base.startswith("/"):
        base = "/" + base
    return posixpath.join(base, id)


def _caps(names: Sequence[str]) -> list[str]:
    out = []
    for n in names:
        n = n.upper()
        out.append(n if n.startswith("CAP_") or n == "ALL" else "CAP_" + n)
    return out


def capabilities(base: Sequence[str], add: Sequence[str], drop: Sequence[str]) -> list[str]:
    """containerd's order: add ALL, drop ALL, then the named adds, then the named drops."""
    a, d = _caps(add), _caps(drop)
    caps = list(base)
    if "ALL" in a:
        caps = list(ALL_CAPS)
    if "ALL" in d:
        caps = []
    for c in a:
        if c != "ALL" and c not in caps:
            caps.append(c)
    return [c for c in caps if c not in d]


def _set_caps(spec: Spec, caps: list[str]) -> None:
    proc = spec["process"]
    proc["capabilities"] = {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}


def _namespaces(spec: Spec, wanted: Mapping[str, str | None]) -> None:
    """``wanted``: type -> path ("" = a new one, None = the host's: no entry)."""
    linux = spec.setdefault("linux", {})
    current = {n["type"]: n for n in linux.get("namespaces") or []}
    for typ, path in wanted.items():
        if path is None:
            current.pop(typ, None)
        elif path:
            current[typ] = {"type": typ, "path": path}
        else:
            current[typ] = {"type": typ}
    linux["namespaces"] = list(current.values())


def _privileged(spec: Spec) -> None:
    _set_caps(spec, list(ALL_CAPS))
    linux = spec["linux"]
    linux.pop("maskedPaths", None)
    linux.pop("readonlyPaths", None)
    linux.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
    for m in spec["mounts"]:
        if m["destination"] == "/sys":
            m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    spec["process"]["noNewPrivileges"] = False


def _add_device(spec: Spec, d: Device) -> None:
    """containerd's WithDevices: the host node (or every node under a host directory)."""
    import stat

    if not os.path.isabs(d.host_path):
        raise InvalidArgument(f"device {d.host_path!r} must be an absolute host path")
    perms = d.permissions or "rwm"
    if any(c not in "rwm" for c in perms):
        raise InvalidArgument(f"device {d.host_path}: permissions {perms!r}, want of rwm")
    host = os.path.realpath(d.host_path)
    nodes: list[tuple[str, str]] = []
    if os.path.isdir(host):
        for root, _, files in os.walk(host):
            for f in sorted(files):
                nodes.append((os.path.join(root, f), posixpath.join(d.container_path, os.path.relpath(os.path.join(root, f), host))))
    else:
        nodes.append((host, d.container_path))
    linux = spec["linux"]
    for src, dest in nodes:
        try:
            st = os.stat(src)
        except OSError as exc:
            raise InvalidArgument(f"device {src}: {exc.strerror or exc}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        elif os.path.isdir(host):
            continue
        else:
            raise InvalidArgument(f"{src} is not a device node")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        linux.setdefault("devices", []).append({
            "path": sp.clean_container_path(dest, "device container path"), "type": kind, "major": major,
            "minor": minor, "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
        linux.setdefault("resources", {}).setdefault("devices", []).append(
            {"allow": True, "type": kind, "major": major, "minor": minor, "access": perms})


def _resources(spec: Spec, r: Resources | None, clamp: OomClamp, what: str) -> None:
    if r is None:
        return
    res = spec["linux"].setdefault("resources", {})
    cpu: dict[str, Any] = {}
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        res["cpu"] = cpu
    if r.memory_limit_in_bytes:
        mem: dict[str, Any] = {"limit": r.memory_limit_in_bytes}
        if r.memory_swap_limit_in_bytes:
            mem["swap"] = r.memory_swap_limit_in_bytes
        res["memory"] = mem
    if r.oom_score_adj:
        spec["process"]["oomScoreAdj"] = clamp(r.oom_score_adj, what)


def linux_resources(r: Resources) -> dict[str, Any]:
    """The OCI LinuxResources document for an UpdateContainerResources."""
    spec: Spec = {"linux": {}, "process": {}}
    _resources(spec, r, OomClamp(False, 0), "")
    return dict(spec["linux"].get("resources") or {})


def seccomp_profile(name: str, *, privileged: bool = False, capabilities: Sequence[str] = ()) -> dict[str, Any] | None:
    """The OCI seccomp section for a CRI profile name: ``localhost/<path>`` reads the host
    file (InvalidArgument when it is not an absolute path or not a JSON object);
    ``runtime/default`` is :func:`.seccomp.default_profile` for the container's
    ``capabilities``; unconfined (or no name) gives none; privileged containers get none."""
    if privileged or not name or name == "unconfined":
        return None
    if name in ("runtime/default", "docker/default"):
        from .seccomp import default_profile

        return default_profile(capabilities)
    if not name.startswith("localhost/"):
        raise InvalidArgument(f"unsupported seccomp profile {name!r}")
    path = name[len("localhost/"):]
    if not os.path.isabs(path):
        raise InvalidArgument(f"seccomp profile {path!r} must be an absolute host path")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise InvalidArgument(f"seccomp profile {path}: not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"seccomp profile {path}: not a JSON object")
    return doc


def check_sysctls(pod: PodConfig) -> None:
    """InvalidArgument naming the first pod sysctl that is malformed (Kubernetes' name
    syntax), whose value holds ``+``, ``=``, a newline or NUL (CVE-2022-0811 smuggled a
    second ``key=value`` in one), or that is not namespaced by a namespace the pod owns:
    ``net.*`` needs its own network namespace, the IPC ones its own IPC namespace;
    anything else would be the host's (kubelet's and runc's rules)."""
    for key, value in pod.sysctls.items():
        if len(key) > 253 or not SYSCTL_NAME.fullmatch(key):
            raise InvalidArgument(f"sysctl {key!r}: not a valid sysctl name")
        if any(c in value for c in "+=\n\0"):
            raise InvalidArgument(f"sysctl {key!r}: value {value!r} must not contain '+', '=', a newline or NUL")
        if key.startswith("net."):
            if pod.namespaces.network == NamespaceMode.NODE:
                raise InvalidArgument(f"sysctl {key!r} is not allowed in the host's network namespace")
        elif key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if pod.namespaces.ipc == NamespaceMode.NODE:
                raise InvalidArgument(f"sysctl {key!r} is not allowed in the host's IPC namespace")
        else:
            raise InvalidArgument(f"sysctl {key!r} is not in a namespace of the pod's own")


def passthrough_annotations(annotations: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """containerd's GetPassthroughAnnotations: the annotations whose key one of the runtime
    handler's ``patterns`` matches."""
    compiled = [annotation_pattern(p) for p in patterns]
    return {k: v for k, v in annotations.items() if any(c.fullmatch(k) for c in compiled)}


def _annotate(spec: Spec, user: Mapping[str, str], cri: Mapping[str, str]) -> None:
    """The user's (allowed) annotations first; the spec's own (the shim group) and the CRI's
    keys after them, so that none of those can be overridden."""
    spec["annotations"] = {**user, **spec.get("annotations", {}), **cri}


def pause_spec(namespace: str, pod_id: str, pod: PodConfig, image: ImageConfig, info: Mapping[str, str], *,
               cgroup: str, clamp: OomClamp, allow_privileged: bool, pod_annotations: Sequence[str] = ()) -> Spec:
    """The pause container: the pod's namespaces, hostname, sysctls and cgroup parent; the pod
    annotations ``pod_annotations`` allows."""
    if pod.privileged and not allow_privileged:
        raise PermissionDenied("privileged pods are not allowed ([cri] allow_privileged = false)")
    check_sysctls(pod)
    cmd = tuple(image.entrypoint) + tuple(image.cmd) or ("/pause",)
    spec = sp.build_spec(namespace, pod_id, ImageConfig(cmd=cmd, env=image.env, working_dir=image.working_dir,
                                                        user=image.user))
    sp.join_sandbox(spec, pod_id, info, group=True)
    ns = pod.namespaces
    _namespaces(spec, {
        "network": None if ns.network == NamespaceMode.NODE else (info.get("netns_path") or None),
        "pid": None if ns.pid == NamespaceMode.NODE else "",
        "ipc": None if ns.ipc == NamespaceMode.NODE else "",
        "uts": None if ns.network == NamespaceMode.NODE else "",
    })
    if ns.network == NamespaceMode.NODE:
        spec.pop("hostname", None)
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in ("/etc/hosts", "/etc/resolv.conf")]
    spec["root"]["readonly"] = True
    linux = spec["linux"]
    linux["cgroupsPath"] = cgroup
    if pod.sysctls:
        linux["sysctl"] = dict(pod.sysctls)
    spec["process"]["oomScoreAdj"] = clamp(SANDBOX_OOM_SCORE_ADJ, f"pod {pod_id} pause")
    spec["process"]["noNewPrivileges"] = True
    if pod.run_as_user is not None:
        spec["process"]["user"] = {"uid": pod.run_as_user, "gid": pod.run_as_group or 0}
    if pod.privileged:
        _privileged(spec)
    _annotate(spec, passthrough_annotations(pod.annotations, pod_annotations),
              {CONTAINER_TYPE: "sandbox", SANDBOX_ID: pod_id, SANDBOX_NAME: pod.metadata.name,
               SANDBOX_NAMESPACE: pod.metadata.namespace, SANDBOX_UID: pod.metadata.uid})
    return spec


def process_args(config: ContainerConfig, image: ImageConfig) -> list[str]:
    """containerd's WithProcessArgs: command replaces the entrypoint, args the cmd."""
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = list(image.cmd)
        if not (len(image.entrypoint) == 1 and image.entrypoint[0] == ""):
            command = list(image.entrypoint)
    if not command and not args:
        raise InvalidArgument("no command specified")
    return command + args


def _user(config: ContainerConfig, image: ImageConfig) -> str:
    sc = config.security
    if sc.run_as_group is not None and sc.run_as_user is None and not sc.run_as_username:
        raise InvalidArgument(f'user group "{sc.run_as_group}" is specified without user')
    user = ""
    if sc.run_as_user is not None:
        user = str(sc.run_as_user)
    elif sc.run_as_username:
        user = sc.run_as_username
    if user and sc.run_as_group is not None:
        user += f":{sc.run_as_group}"
    return user or image.user


def _bind(m: Any) -> dict[str, Any]:
    host = m.host_path
    if not host or not os.path.isabs(host):
        raise InvalidArgument(f"mount {m.container_path!r}: host path {host!r} must be absolute")
    if not os.path.exists(host):
        os.makedirs(host, mode=0o755, exist_ok=True)
    host = os.path.realpath(host)
    dest = sp.clean_container_path(m.container_path, "mount container path")
    opts = ["rbind"]
    if m.propagation == MountPropagation.BIDIRECTIONAL:
        opts.append("rshared")
    elif m.propagation == MountPropagation.HOST_TO_CONTAINER:
        opts.append("rslave")
    else:
        opts.append("rprivate")
    opts.append("ro" if m.readonly else "rw")
    return {"destination": dest, "type": "bind", "source": host, "options": opts}


def container_spec(namespace: str, id: str, pod_id: str, pod: PodConfig, config: ContainerConfig,
                   image: ImageConfig, image_name: str, info: Mapping[str, str], pause_pid: int, *,
                   cgroup: str, clamp: OomClamp, allow_privileged: bool,
                   read_rootfs: sp.RootfsReader | None = None, target_pid: int = 0,
                   pod_annotations: Sequence[str] = (), container_annotations: Sequence[str] = ()) -> Spec:
    """A container of the pod ``pod_id`` whose pause runs as ``pause_pid``, with the pod and
    container annotations ``pod_annotations`` and ``container_annotations`` allow."""
    sc = config.security
    if sc.privileged and not allow_privileged:
        raise PermissionDenied("privileged containers are not allowed ([cri] allow_privileged = false)")
    if sc.privileged and not pod.privileged:
        raise InvalidArgument("no privileged container allowed in a non-privileged sandbox")
    args = process_args(config, image)
    env = tuple(f"{k}={v}" for k, v in config.envs)
    overrides = sp.Overrides(env=env, user=_user(config, image), workdir=config.working_dir, terminal=config.tty,
                             mounts=tuple(_bind(m) for m in config.mounts))
    spec = sp.build_spec(namespace, id, ImageConfig(cmd=tuple(args), env=image.env, working_dir=image.working_dir,
                                                    user=image.user, volumes=image.volumes),
                         overrides, read_rootfs=read_rootfs)
    sp.join_sandbox(spec, pod_id, info, group=True)
    spec.pop("hostname", None)  # the pause's UTS namespace has it
    propagations = {m.propagation for m in config.mounts}
    if MountPropagation.BIDIRECTIONAL in propagations:  # containerd: the rootfs must share too
        spec["linux"]["rootfsPropagation"] = "rshared"
    elif MountPropagation.HOST_TO_CONTAINER in propagations:
        spec["linux"]["rootfsPropagation"] = "rslave"
    proc_ns = f"/proc/{pause_pid}/ns"
    ns = sc.namespaces
    if ns.pid == NamespaceMode.NODE:
        pid: str | None = None
    elif ns.pid == NamespaceMode.POD:
        pid = f"{proc_ns}/pid"
    elif ns.pid == NamespaceMode.TARGET:
        if not target_pid:
            raise InvalidArgument(f"target container {ns.target_id!r} is not running")
        pid = f"/proc/{target_pid}/ns/pid"
    else:
        pid = ""
    host_net = pod.namespaces.network == NamespaceMode.NODE
    _namespaces(spec, {
        "network": None if host_net else (info.get("netns_path") or None),
        "pid": pid,
        "ipc": None if ns.ipc == NamespaceMode.NODE else f"{proc_ns}/ipc",
        "uts": None if host_net else f"{proc_ns}/uts",
    })
    proc = spec["process"]
    if sc.supplemental_groups:
        gids = list(proc["user"].get("additionalGids") or [])
        proc["user"]["additionalGids"] = gids + [g for g in sc.supplemental_groups if g not in gids]
    if sc.readonly_rootfs:
        spec["root"]["readonly"] = True
    proc["noNewPrivileges"] = sc.no_new_privs
    if sc.privileged:
        _privileged(spec)
    else:
        _set_caps(spec, capabilities(proc["capabilities"]["bounding"], sc.add_capabilities, sc.drop_capabilities))
        if sc.masked_paths is not None:
            spec["linux"]["maskedPaths"] = list(sc.masked_paths)
        if sc.readonly_paths is not None:
            spec["linux"]["readonlyPaths"] = list(sc.readonly_paths)
    if not sc.privileged:
        for d in config.devices:
            _add_device(spec, d)
    spec["linux"]["cgroupsPath"] = cgroup
    seccomp = seccomp_profile(sc.seccomp, privileged=sc.privileged,
                              capabilities=proc["capabilities"]["bounding"])
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    _resources(spec, config.resources, clamp, f"container {id}")
    user = {**passthrough_annotations(pod.annotations, pod_annotations),
            **passthrough_annotations(config.annotations, container_annotations)}
    _annotate(spec, user, {CONTAINER_TYPE: "container", SANDBOX_ID: pod_id, SANDBOX_NAME: pod.metadata.name,
                           SANDBOX_NAMESPACE: pod.metadata.namespace, SANDBOX_UID: pod.metadata.uid,
                           CONTAINER_NAME: config.metadata.name, IMAGE_NAME: image_name})
    return spec
