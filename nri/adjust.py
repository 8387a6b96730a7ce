"""Container adjustments: merging plugins' replies, and applying the result to an OCI spec.

Two jobs, both pure (no I/O):

* :class:`Result` collects the replies of the plugins consulted for one event, in index
  order, as containerd/nri's adaptation does: each adjustment is merged into one
  ``ContainerAdjustment`` and also applied to the request's ``Container`` (so the next
  plugin sees the container as already adjusted); updates are merged per container. Every
  adjustable field, or each entry of a compound field (annotation key, mount destination,
  env name, device path, rlimit type, sysctl key, hugepage size, unified key, resource
  knob), is owned by the first plugin that sets or removes it; a second plugin touching it
  raises :class:`moorage.errdefs.Conflict`: ``plugins "A" and "B" both tried to set <field>``.
  OCI hooks accumulate and never conflict. Removal: a key prefixed with ``-`` (annotation,
  mount destination, env name, device path, sysctl key); args with a leading ``""``
  override args another plugin set. Adjustments moorage cannot honour (seccomp, namespaces,
  CDI devices, scheduler, I/O priority, RDT, net devices, memory policy, block I/O and RDT
  classes) raise :class:`moorage.errdefs.NotImplemented` naming the plugin: silently
  dropping a security-relevant change would be worse.

* :func:`apply_adjustment` applies a merged adjustment to an OCI runtime spec (a
  JSON-shaped dict, modified in place and returned): what the runtime calls after the
  CreateContainer hook. :func:`resources_to_oci` converts NRI LinuxResources to the OCI form
  (also what ``Tasks.Update`` takes).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from google.protobuf.message import Message

from moorage import errdefs
from moorage.api.nri.pkg.api import api_pb2 as api

__all__ = [
    "Result",
    "apply_adjustment",
    "is_removal",
    "resources_from_oci",
    "resources_to_oci",
]

Spec = MutableMapping[str, Any]

UNSUPPORTED_LINUX = (
    "io_priority",
    "seccomp_policy",
    "namespaces",
    "net_devices",
    "scheduler",
    "rdt",
    "memory_policy",
)
UNSUPPORTED_RESOURCES = ("blockio_class", "rdt_class")
HOOK_KINDS = (
    ("prestart", "prestart"),
    ("create_runtime", "createRuntime"),
    ("create_container", "createContainer"),
    ("start_container", "startContainer"),
    ("poststart", "poststart"),
    ("poststop", "poststop"),
)


def is_removal(key: str) -> tuple[str, bool]:
    """``("k", True)`` for ``"-k"``; ``(key, False)`` otherwise."""
    if key.startswith("-"):
        return key[1:], True
    return key, False


class Result:
    """The merged outcome of one event across plugins (see the module docstring).

    ``container``: the request's container, mutated as plugins adjust it (None for events
    that cannot adjust). ``adjust``: the merged adjustment. ``updates``: merged updates of
    containers by id, in first-seen order.
    """

    def __init__(self, container: api.Container | None = None) -> None:
        self.container = container
        self.adjust = api.ContainerAdjustment()
        self.updates: dict[str, api.ContainerUpdate] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._ignore: dict[str, bool] = {}

    # ownership -------------------------------------------------------------------------

    def _claim(self, scope: str, what: str, plugin: str) -> None:
        owner = self._owners.get((scope, what))
        if owner is not None and owner != plugin:
            raise errdefs.Conflict(f'plugins "{owner}" and "{plugin}" both tried to set {what}')
        self._owners[(scope, what)] = plugin

    # adjustments -----------------------------------------------------------------------

    def add_adjustment(self, plugin: str, adj: api.ContainerAdjustment) -> None:
        """Merge ``plugin``'s adjustment; raises Conflict or NotImplemented."""
        c = self.container
        if c is None:
            raise errdefs.InvalidArgument(f"plugin {plugin!r}: adjustment outside container creation")
        if adj.CDI_devices:
            raise errdefs.NotImplemented(f"plugin {plugin!r} injects CDI devices, which moorage does not support")
        if adj.HasField("linux"):
            for name in UNSUPPORTED_LINUX:
                if _present(adj.linux, name):
                    raise errdefs.NotImplemented(f"plugin {plugin!r} adjusts linux.{name}, which moorage does not support")
        self._annotations(plugin, adj, c)
        self._mounts(plugin, adj, c)
        self._env(plugin, adj, c)
        self._args(plugin, adj, c)
        self._hooks(adj, c)
        self._rlimits(plugin, adj, c)
        if adj.HasField("linux"):
            self._linux(plugin, adj.linux, c)

    def _annotations(self, plugin: str, adj: api.ContainerAdjustment, c: api.Container) -> None:
        out = self.adjust.annotations
        for key in adj.annotations:
            name, removal = is_removal(key)
            if removal:
                self._claim("", f"annotation {name}", plugin)
                out.pop(name, None)
                out[key] = ""
                c.annotations.pop(name, None)
        for key, value in adj.annotations.items():
            name, removal = is_removal(key)
            if not removal:
                self._claim("", f"annotation {name}", plugin)
                out[name] = value
                out.pop("-" + name, None)
                c.annotations[name] = value

    def _mounts(self, plugin: str, adj: api.ContainerAdjustment, c: api.Container) -> None:
        for m in adj.mounts:
            dest, removal = is_removal(m.destination)
            if removal:
                self._claim("", f"mount {dest}", plugin)
                _drop(self.adjust.mounts, lambda x, d=dest: x.destination in (d, "-" + d))
                self.adjust.mounts.add(destination=m.destination)
                _drop(c.mounts, lambda x, d=dest: x.destination == d)
        for m in adj.mounts:
            dest, removal = is_removal(m.destination)
            if not removal:
                self._claim("", f"mount {dest}", plugin)
                _drop(self.adjust.mounts, lambda x, d=dest: x.destination in (d, "-" + d))
                self.adjust.mounts.add().CopyFrom(m)
                _drop(c.mounts, lambda x, d=dest: x.destination == d)
                c.mounts.add().CopyFrom(m)

    def _env(self, plugin: str, adj: api.ContainerAdjustment, c: api.Container) -> None:
        for kv in adj.env:
            name, removal = is_removal(kv.key)
            if removal:
                self._claim("", f"environment variable {name}", plugin)
                _drop(self.adjust.env, lambda x, n=name: x.key in (n, "-" + n))
                self.adjust.env.add(key=kv.key)
                _set_env(c, name, None)
        for kv in adj.env:
            name, removal = is_removal(kv.key)
            if not removal:
                self._claim("", f"environment variable {name}", plugin)
                _drop(self.adjust.env, lambda x, n=name: x.key in (n, "-" + n))
                self.adjust.env.add(key=name, value=kv.value)
                _set_env(c, name, kv.value)

    def _args(self, plugin: str, adj: api.ContainerAdjustment, c: api.Container) -> None:
        if not adj.args:
            return
        args = list(adj.args)
        if args[0] == "":
            self._owners.pop(("", "args"), None)
            args = args[1:]
        self._claim("", "args", plugin)
        del self.adjust.args[:]
        self.adjust.args.extend(args)
        del c.args[:]
        c.args.extend(args)

    def _hooks(self, adj: api.ContainerAdjustment, c: api.Container) -> None:
        if not adj.HasField("hooks"):
            return
        for kind, _ in HOOK_KINDS:
            hooks = getattr(adj.hooks, kind)
            if hooks:
                getattr(self.adjust.hooks, kind).extend(hooks)
                getattr(c.hooks, kind).extend(hooks)

    def _rlimits(self, plugin: str, adj: api.ContainerAdjustment, c: api.Container) -> None:
        for r in adj.rlimits:
            self._claim("", f"rlimit {r.type}", plugin)
            _drop(self.adjust.rlimits, lambda x, t=r.type: x.type == t)
            self.adjust.rlimits.add().CopyFrom(r)
            _drop(c.rlimits, lambda x, t=r.type: x.type == t)
            c.rlimits.add().CopyFrom(r)

    def _linux(self, plugin: str, linux: api.LinuxContainerAdjustment, c: api.Container) -> None:
        out = self.adjust.linux
        for d in linux.devices:
            path, removal = is_removal(d.path)
            if removal:
                self._claim("", f"device {path}", plugin)
                _drop(out.devices, lambda x, p=path: x.path in (p, "-" + p))
                out.devices.add(path=d.path)
                _drop(c.linux.devices, lambda x, p=path: x.path == p)
        for d in linux.devices:
            path, removal = is_removal(d.path)
            if not removal:
                self._claim("", f"device {path}", plugin)
                _drop(out.devices, lambda x, p=path: x.path in (p, "-" + p))
                out.devices.add().CopyFrom(d)
                _drop(c.linux.devices, lambda x, p=path: x.path == p)
                c.linux.devices.add().CopyFrom(d)
        if linux.HasField("resources"):
            self._resources(plugin, "", linux.resources, out.resources, c.linux.resources)
        if linux.cgroups_path:
            self._claim("", "cgroups path", plugin)
            out.cgroups_path = c.linux.cgroups_path = linux.cgroups_path
        if linux.HasField("oom_score_adj"):
            self._claim("", "OOM score adjustment", plugin)
            out.oom_score_adj.CopyFrom(linux.oom_score_adj)
            c.linux.oom_score_adj.CopyFrom(linux.oom_score_adj)
        for key in linux.sysctl:
            name, removal = is_removal(key)
            if removal:
                self._claim("", f"sysctl {name}", plugin)
                out.sysctl.pop(name, None)
                out.sysctl[key] = ""
                c.linux.sysctl.pop(name, None)
        for key, value in linux.sysctl.items():
            name, removal = is_removal(key)
            if not removal:
                self._claim("", f"sysctl {name}", plugin)
                out.sysctl[name] = value
                out.sysctl.pop("-" + name, None)
                c.linux.sysctl[name] = value

    def _resources(
        self,
        plugin: str,
        scope: str,
        res: api.LinuxResources,
        out: api.LinuxResources,
        target: api.LinuxResources | None,
    ) -> None:
        for name in UNSUPPORTED_RESOURCES:
            if res.HasField(name):
                raise errdefs.NotImplemented(f"plugin {plugin!r} sets {name}, which moorage does not support")
        for part in ("memory", "cpu", "pids"):
            if not res.HasField(part):
                continue
            for field, value in getattr(res, part).ListFields():
                self._claim(scope, f"{part} {field.name}", plugin)
                _copy_field(getattr(out, part), field.name, value)
                if target is not None:
                    _copy_field(getattr(target, part), field.name, value)
        for h in res.hugepage_limits:
            self._claim(scope, f"hugepage limit {h.page_size}", plugin)
            for dst in (out, target):
                if dst is not None:
                    _drop(dst.hugepage_limits, lambda x, s=h.page_size: x.page_size == s)
                    dst.hugepage_limits.add().CopyFrom(h)
        for key, value in res.unified.items():
            self._claim(scope, f"unified resource {key}", plugin)
            out.unified[key] = value
            if target is not None:
                target.unified[key] = value
        if res.devices:
            out.devices.extend(res.devices)
            if target is not None:
                target.devices.extend(res.devices)

    # updates -------------------------------------------------------------------------

    def add_updates(self, plugin: str, updates: Iterable[api.ContainerUpdate], creating: str = "") -> None:
        """Merge ``plugin``'s updates of existing containers (per container, same rules)."""
        for u in updates:
            if not u.container_id:
                raise errdefs.InvalidArgument(f"plugin {plugin!r} sent an update without a container id")
            if creating and u.container_id == creating:
                raise errdefs.InvalidArgument(
                    f"plugin {plugin!r} tried to update container {creating} while it is being created"
                )
            merged = self.updates.get(u.container_id)
            if merged is None:
                merged = self.updates[u.container_id] = api.ContainerUpdate(container_id=u.container_id)
                merged.ignore_failure = u.ignore_failure
            else:
                merged.ignore_failure = merged.ignore_failure and u.ignore_failure
            if u.HasField("linux") and u.linux.HasField("resources"):
                self._resources(plugin, u.container_id, u.linux.resources, merged.linux.resources, None)


def _present(msg: Message, name: str) -> bool:
    value = getattr(msg, name)
    if isinstance(value, Message):
        return msg.HasField(name)
    return len(value) > 0


def _copy_field(dst: Message, name: str, value: Any) -> None:
    if isinstance(value, Message):
        getattr(dst, name).CopyFrom(value)
    else:
        setattr(dst, name, value)


def _drop(repeated: Any, pred: Any) -> None:
    keep = [x for x in repeated if not pred(x)]
    if len(keep) != len(repeated):
        copies = [type(x)() for x in keep]
        for dst, src in zip(copies, keep, strict=True):
            dst.CopyFrom(src)
        del repeated[:]
        repeated.extend(copies)


def _set_env(c: api.Container, name: str, value: str | None) -> None:
    prefix = name + "="
    env = [e for e in c.env if not (e == name or e.startswith(prefix))]
    if value is not None:
        env.append(f"{name}={value}")
    del c.env[:]
    c.env.extend(env)


# ---------------------------------------------------------------------------------------
# OCI spec


def apply_adjustment(spec: Spec, adj: api.ContainerAdjustment) -> Spec:
    """Apply a merged NRI adjustment to an OCI runtime spec dict (in place; returned).

    Annotations, mounts, env, args, OCI hooks, rlimits, devices (each device also gets an
    ``rwm`` allow rule in the device cgroup, as containerd does), linux resources, cgroups
    path, OOM score adjustment and sysctls. Removal markers (``-key``) delete; a set
    replaces an existing entry with the same key, else appends.
    """
    if adj.annotations:
        ann = spec.setdefault("annotations", {})
        for key, value in adj.annotations.items():
            name, removal = is_removal(key)
            if removal:
                ann.pop(name, None)
        for key, value in adj.annotations.items():
            if not key.startswith("-"):
                ann[key] = value
    if adj.mounts:
        mounts = list(spec.get("mounts") or [])
        for m in adj.mounts:
            dest, removal = is_removal(m.destination)
            mounts = [x for x in mounts if x.get("destination") != dest]
            if not removal:
                om: dict[str, Any] = {"destination": m.destination, "type": m.type, "source": m.source}
                if m.options:
                    om["options"] = list(m.options)
                mounts.append(om)
        spec["mounts"] = mounts
    process = spec.setdefault("process", {}) if (adj.env or adj.args or adj.rlimits or _has_oom(adj)) else None
    if adj.env:
        assert process is not None
        env = list(process.get("env") or [])
        for kv in adj.env:
            name, _ = is_removal(kv.key)
            env = [e for e in env if e != name and not e.startswith(name + "=")]
            if not kv.key.startswith("-"):
                env.append(f"{kv.key}={kv.value}")
        process["env"] = env
    if adj.args:
        assert process is not None
        args = list(adj.args)
        process["args"] = args[1:] if args[0] == "" else args
    if adj.rlimits:
        assert process is not None
        rlimits = list(process.get("rlimits") or [])
        for r in adj.rlimits:
            rlimits = [x for x in rlimits if x.get("type") != r.type]
            rlimits.append({"type": r.type, "hard": r.hard, "soft": r.soft})
        process["rlimits"] = rlimits
    if adj.HasField("hooks"):
        hooks = spec.setdefault("hooks", {})
        for kind, oci in HOOK_KINDS:
            for h in getattr(adj.hooks, kind):
                oh: dict[str, Any] = {"path": h.path}
                if h.args:
                    oh["args"] = list(h.args)
                if h.env:
                    oh["env"] = list(h.env)
                if h.HasField("timeout"):
                    oh["timeout"] = h.timeout.value
                hooks.setdefault(oci, []).append(oh)
    if adj.HasField("linux"):
        _apply_linux(spec, adj.linux)
    return spec


def _has_oom(adj: api.ContainerAdjustment) -> bool:
    return adj.HasField("linux") and adj.linux.HasField("oom_score_adj")


def _apply_linux(spec: Spec, linux: api.LinuxContainerAdjustment) -> None:
    ol = spec.setdefault("linux", {})
    if linux.devices:
        devices = list(ol.get("devices") or [])
        resources = ol.setdefault("resources", {})
        rules = list(resources.get("devices") or [])
        for d in linux.devices:
            path, removal = is_removal(d.path)
            devices = [x for x in devices if x.get("path") != path]
            if removal:
                continue
            od: dict[str, Any] = {"path": d.path, "type": d.type, "major": d.major, "minor": d.minor}
            if d.HasField("file_mode"):
                od["fileMode"] = d.file_mode.value
            if d.HasField("uid"):
                od["uid"] = d.uid.value
            if d.HasField("gid"):
                od["gid"] = d.gid.value
            devices.append(od)
            rules.append({"allow": True, "type": d.type, "major": d.major, "minor": d.minor, "access": "rwm"})
        ol["devices"] = devices
        resources["devices"] = rules
    if linux.HasField("resources"):
        merge_oci_resources(ol.setdefault("resources", {}), resources_to_oci(linux.resources))
    if linux.cgroups_path:
        ol["cgroupsPath"] = linux.cgroups_path
    if linux.HasField("oom_score_adj"):
        spec.setdefault("process", {})["oomScoreAdj"] = linux.oom_score_adj.value
    if linux.sysctl:
        sysctl = ol.setdefault("sysctl", {})
        for key in linux.sysctl:
            name, removal = is_removal(key)
            if removal:
                sysctl.pop(name, None)
        for key, value in linux.sysctl.items():
            if not key.startswith("-"):
                sysctl[key] = value


_MEMORY = (
    ("limit", "limit"),
    ("reservation", "reservation"),
    ("swap", "swap"),
    ("kernel", "kernel"),
    ("kernel_tcp", "kernelTCP"),
    ("swappiness", "swappiness"),
    ("disable_oom_killer", "disableOOMKiller"),
    ("use_hierarchy", "useHierarchy"),
)
_CPU = (
    ("shares", "shares"),
    ("quota", "quota"),
    ("period", "period"),
    ("realtime_runtime", "realtimeRuntime"),
    ("realtime_period", "realtimePeriod"),
)


def resources_to_oci(res: api.LinuxResources) -> dict[str, Any]:
    """NRI LinuxResources -> OCI ``linux.resources`` (only what is set)."""
    out: dict[str, Any] = {}
    if res.HasField("memory"):
        mem = {oci: getattr(res.memory, n).value for n, oci in _MEMORY if res.memory.HasField(n)}
        if mem:
            out["memory"] = mem
    if res.HasField("cpu"):
        cpu: dict[str, Any] = {oci: getattr(res.cpu, n).value for n, oci in _CPU if res.cpu.HasField(n)}
        if res.cpu.cpus:
            cpu["cpus"] = res.cpu.cpus
        if res.cpu.mems:
            cpu["mems"] = res.cpu.mems
        if cpu:
            out["cpu"] = cpu
    if res.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in res.hugepage_limits]
    if res.unified:
        out["unified"] = dict(res.unified)
    if res.devices:
        devs = []
        for d in res.devices:
            od: dict[str, Any] = {"allow": d.allow, "access": d.access}
            if d.type:
                od["type"] = d.type
            if d.HasField("major"):
                od["major"] = d.major.value
            if d.HasField("minor"):
                od["minor"] = d.minor.value
            devs.append(od)
        out["devices"] = devs
    if res.HasField("pids"):
        out["pids"] = {"limit": res.pids.limit}
    return out


def merge_oci_resources(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """Overlay OCI resources ``src`` onto ``dst`` (knob by knob; lists merged by key)."""
    for key in ("memory", "cpu", "pids"):
        if key in src:
            dst.setdefault(key, {}).update(src[key])
    if "unified" in src:
        dst.setdefault("unified", {}).update(src["unified"])
    if "hugepageLimits" in src:
        sizes = {h["pageSize"] for h in src["hugepageLimits"]}
        dst["hugepageLimits"] = [h for h in dst.get("hugepageLimits") or [] if h.get("pageSize") not in sizes]
        dst["hugepageLimits"] += src["hugepageLimits"]
    if "devices" in src:
        dst["devices"] = list(dst.get("devices") or []) + src["devices"]
    return dst


def resources_from_oci(res: dict[str, Any] | None) -> api.LinuxResources:
    """OCI ``linux.resources`` -> NRI LinuxResources (what plugins see of a container)."""
    out = api.LinuxResources()
    if not res:
        return out
    mem = res.get("memory") or {}
    for n, oci in _MEMORY:
        if mem.get(oci) is not None:
            getattr(out.memory, n).value = mem[oci]
    cpu = res.get("cpu") or {}
    for n, oci in _CPU:
        if cpu.get(oci) is not None:
            getattr(out.cpu, n).value = cpu[oci]
    if cpu.get("cpus"):
        out.cpu.cpus = cpu["cpus"]
    if cpu.get("mems"):
        out.cpu.mems = cpu["mems"]
    for h in res.get("hugepageLimits") or []:
        out.hugepage_limits.add(page_size=h.get("pageSize", ""), limit=h.get("limit", 0))
    for k, v in (res.get("unified") or {}).items():
        out.unified[k] = v
    for d in res.get("devices") or []:
        od = out.devices.add(allow=bool(d.get("allow")), type=d.get("type") or "", access=d.get("access") or "")
        if d.get("major") is not None:
            od.major.value = d["major"]
        if d.get("minor") is not None:
            od.minor.value = d["minor"]
    if (res.get("pids") or {}).get("limit") is not None:
        out.pids.limit = res["pids"]["limit"]
    return out
