"""OCI runtime specs: containerd 1.6's default Linux spec, the image config applied on top.

The image config is untrusted data. It may set the process (entrypoint, cmd, env, working
directory, user) and name volumes, nothing else: it never names a host path, a host mount,
a capability, a device or a namespace. Volumes become fresh tmpfs mounts, never a path the
image wrote. Users are checked against the uid
range (CVE-2024-40635: nothing above 2**31-1 wraps to root).

Light imports only: `moor run` builds its spec with this module (no asyncio, no protobuf,
no json package, no typing).
"""

from __future__ import annotations

import os
import posixpath
from _collections_abc import Mapping  # loaded with os; collections.abc imports collections

from moorage.errdefs import InvalidArgument
from moorage.jsoncodec import dumps as _dumps
from ttrpc.lighttyping import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

OCI_VERSION = "1.0.2-dev"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_ID = 2**31 - 1

Spec = dict[str, "Any"]

DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
NAMESPACES: tuple[str, ...] = ("pid", "ipc", "uts", "mount", "network")
# Destinations an image volume may never cover: the kernel's and the runtime's own mounts.
_RESERVED = ("/proc", "/sys", "/dev", "/run")


def default_mounts() -> list[dict[str, Any]]:
    """containerd's defaultMounts (oci/mounts.go), fresh objects every call."""

    def m(dest: str, typ: str, src: str, *opts: str) -> dict[str, Any]:
        return {"destination": dest, "type": typ, "source": src, "options": list(opts)}

    return [
        m("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        m("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        m("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666",
          "mode=0620", "gid=5"),
        m("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        m("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        m("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        m("/run", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
    ]


def default_spec(namespace: str, container_id: str) -> Spec:
    """containerd 1.6's populateDefaultUnixSpec: a new, unshared object every call."""
    caps = list(DEFAULT_CAPS)
    return {
        "ociVersion": OCI_VERSION,
        "root": {"path": "rootfs"},
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": [],
            "env": [DEFAULT_PATH],
            "cwd": "/",
            "capabilities": {"bounding": list(caps), "effective": list(caps),
                             "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": f"/{namespace}/{container_id}",
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


class ImageConfig(NamedTuple):
    """The process part of an OCI image config (`config` object), as untrusted input.

    (NamedTuple, not dataclass: `moor run` imports this, and dataclasses imports inspect.)"""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    volumes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageConfig:
        """From a whole image config document (the `config` key is read); types are checked."""
        cfg = doc.get("config") or {}
        if not isinstance(cfg, Mapping):
            raise InvalidArgument("image config: `config` is not an object")

        def strings(key: str) -> tuple[str, ...]:
            v = cfg.get(key)
            if v is None:
                return ()
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise InvalidArgument(f"image config: {key} is not a list of strings")
            return tuple(v)

        def string(key: str) -> str:
            v = cfg.get(key)
            if v is None:
                return ""
            if not isinstance(v, str):
                raise InvalidArgument(f"image config: {key} is not a string")
            return v

        vols = cfg.get("Volumes")
        if vols is None:
            volumes: tuple[str, ...] = ()
        elif isinstance(vols, Mapping):
            volumes = tuple(str(k) for k in vols)
        else:
            raise InvalidArgument("image config: Volumes is not an object")
        return cls(strings("Entrypoint"), strings("Cmd"), strings("Env"), string("WorkingDir"),
                   string("User"), volumes)


class Overrides(NamedTuple):
    """What the user asked for on the command line (trusted: it comes from the operator)."""

    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = ""
    hostname: str = ""
    terminal: bool = False
    memory: int = 0  # bytes, 0 = unlimited
    cpus: float = 0.0  # 0 = unlimited
    mounts: tuple[Mapping[str, Any], ...] = ()  # OCI mount objects
    annotations: Mapping[str, str] = type(type.__dict__)({})  # an empty read-only mapping


# (path inside the rootfs, relative) -> bytes or None; reads must stay inside the rootfs.
if TYPE_CHECKING:
    RootfsReader = Callable[[str], "bytes | None"]


def replace_or_append_env(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """containerd's replaceOrAppendEnvValues: later keys win, order of first appearance kept."""
    out = list(base)
    index = {e.split("=", 1)[0]: i for i, e in enumerate(out)}
    for e in extra:
        key = e.split("=", 1)[0]
        if "=" not in e:
            # `KEY` alone removes it, as containerd does
            if key in index:
                out[index[key]] = ""
            continue
        if key in index:
            out[index[key]] = e
        else:
            index[key] = len(out)
            out.append(e)
    return [e for e in out if e]


def _check_env(env: Sequence[str], where: str) -> None:
    for e in env:
        if "\0" in e or not e.split("=", 1)[0]:
            raise InvalidArgument(f"{where}: invalid environment entry {e!r}")


def _id(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 10:
        raise InvalidArgument(f"{what} {text!r} is not a valid id (0..{MAX_ID})")
    value = int(text)
    if value > MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


def _lookup(table: bytes | None, name: str, gid_field: bool) -> tuple[int, int] | None:
    """Find `name` in /etc/passwd (uid, gid) or /etc/group (gid, gid) bytes."""
    if table is None:
        return None
    for line in table.decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) < 4 or parts[0] != name:
            continue
        try:
            ident = _id(parts[2], "id")
            gid = ident if gid_field else _id(parts[3], "gid")
        except InvalidArgument:
            return None
        return ident, gid
    return None


def _additional_gids(group_table: bytes | None, user: str, uid_name: str | None) -> list[int]:
    if group_table is None or uid_name is None:
        return []
    gids: list[int] = []
    for line in group_table.decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) < 4:
            continue
        members = [m for m in parts[3].split(",") if m]
        if uid_name in members:
            try:
                gids.append(_id(parts[2], "gid"))
            except InvalidArgument:
                continue
    return sorted(set(gids))


def resolve_user(user: str, read: RootfsReader | None) -> dict[str, Any]:
    """`user`, `uid`, `user:group`, `uid:gid` → OCI User; names resolved in the rootfs."""
    if not user:
        return {"uid": 0, "gid": 0}
    if "\0" in user or user.count(":") > 1:
        raise InvalidArgument(f"invalid user {user!r}")
    name, _, group = user.partition(":")
    if not name:
        raise InvalidArgument(f"invalid user {user!r}")
    passwd = read("etc/passwd") if read else None
    groups = read("etc/group") if read else None
    uid_name: str | None = None
    if name.lstrip("-").isdigit():
        uid = _id(name, "uid")
        gid = 0
        for line in (passwd or b"").decode("utf-8", "replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[2] == name:
                uid_name = parts[0]
                try:
                    gid = _id(parts[3], "gid")
                except InvalidArgument:
                    gid = 0
                break
    else:
        found = _lookup(passwd, name, gid_field=False)
        if found is None:
            raise InvalidArgument(f"no user {name!r} in the image's /etc/passwd")
        uid, gid = found
        uid_name = name
    if group:
        if group.lstrip("-").isdigit():
            gid = _id(group, "gid")
        else:
            g = _lookup(groups, group, gid_field=True)
            if g is None:
                raise InvalidArgument(f"no group {group!r} in the image's /etc/group")
            gid = g[0]
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    extra = [g for g in _additional_gids(groups, name, uid_name) if g != gid]
    if extra:
        out["additionalGids"] = extra
    return out


def clean_container_path(path: str, what: str) -> str:
    """An absolute, normalised in-container path, or InvalidArgument (never `/` or `..`)."""
    if not path or "\0" in path or not path.startswith("/"):
        raise InvalidArgument(f"{what} {path!r} must be an absolute path")
    if any(part == ".." for part in path.split("/")):
        raise InvalidArgument(f"{what} {path!r} must not contain '..'")
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    return clean


def working_dir(path: str) -> str:
    """A process's working directory: :func:`clean_container_path`, and never ``/proc`` or
    below it (a ``/proc/self/fd/N`` cwd reaches a host fd leaked into runc, CVE-2024-21626)."""
    clean = clean_container_path(path, "working directory")
    if clean == "/proc" or clean.startswith("/proc/"):
        raise InvalidArgument(f"working directory {path!r} must not be under /proc")
    return clean


def volume_mounts(volumes: Sequence[str]) -> list[dict[str, Any]]:
    """Image volumes → fresh tmpfs mounts: an empty directory, never a host path (CVE-2022-23648)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for v in volumes:
        dest = clean_container_path(v, "image volume")
        if dest == "/":
            raise InvalidArgument("image volume '/' is not allowed")
        if any(dest == r or dest.startswith(r + "/") for r in _RESERVED):
            raise InvalidArgument(f"image volume {dest!r} covers a reserved path")
        if dest in seen:
            continue
        seen.add(dest)
        out.append({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=755"]})
    return out


def build_spec(
    namespace: str,
    container_id: str,
    image: ImageConfig,
    overrides: Overrides = Overrides(),
    *,
    read_rootfs: RootfsReader | None = None,
) -> Spec:
    """The container's spec: default spec, then the image config, then the overrides."""
    spec = default_spec(namespace, container_id)
    proc = spec["process"]
    _check_env(image.env, "image config")
    _check_env(overrides.env, "--env")
    proc["env"] = replace_or_append_env(replace_or_append_env(proc["env"], image.env),
                                        overrides.env)
    args = list(overrides.args) if overrides.args else list(image.cmd)
    args = list(image.entrypoint) + args
    if not args:
        raise InvalidArgument("no command: the image has neither entrypoint nor cmd")
    if any("\0" in a for a in args):
        raise InvalidArgument("command contains a NUL byte")
    proc["args"] = args
    cwd = overrides.workdir or image.working_dir or "/"
    proc["cwd"] = working_dir(cwd)
    proc["user"] = resolve_user(overrides.user or image.user, read_rootfs)
    proc["terminal"] = overrides.terminal
    if overrides.terminal:
        proc["env"] = replace_or_append_env(proc["env"], ["TERM=xterm"])
    if overrides.hostname:
        if "\0" in overrides.hostname or len(overrides.hostname) > 64:
            raise InvalidArgument(f"invalid hostname {overrides.hostname!r}")
        spec["hostname"] = overrides.hostname
    if image.volumes:
        spec["mounts"].extend(volume_mounts(image.volumes))
    for m in overrides.mounts:
        import copy

        spec["mounts"].append(dict(copy.deepcopy(m)))
    resources = spec["linux"]["resources"]
    if overrides.memory:
        if overrides.memory < 0:
            raise InvalidArgument("memory limit must be positive")
        resources["memory"] = {"limit": overrides.memory}
    if overrides.cpus:
        if overrides.cpus < 0:
            raise InvalidArgument("cpus must be positive")
        period = 100000
        resources["cpu"] = {"quota": int(overrides.cpus * period), "period": period}
    if overrides.annotations:
        spec["annotations"] = dict(overrides.annotations)
    return spec


GROUP_ANNOTATION = "io.containerd.runc.v2.group"
SANDBOX_FILES = (("/etc/hostname", "hostname_path"), ("/etc/hosts", "hosts_path"),
                 ("/etc/resolv.conf", "resolv_conf_path"))


def join_sandbox(spec: Spec, sandbox_id: str, info: Mapping[str, str], *,
                 group: bool = True) -> Spec:
    """Place a container in a pod sandbox (in place), from its Controller.Status `info`:
    its network namespace by path (`netns_path`; "" = a host-network pod: no network
    namespace of its own), its hostname, and its hostname/hosts/resolv.conf files bound
    read-only (a mount the operator gave for one of those paths wins). With ``group``
    (runc shims) the container joins the sandbox's shim group, as containerd's CRI does."""
    if "netns_path" not in info:
        raise InvalidArgument(f"sandbox {sandbox_id} has no network namespace to join "
                              "(only pod sandboxes can be joined)")
    linux = spec.setdefault("linux", {})
    namespaces = [n for n in linux.get("namespaces") or [] if n.get("type") != "network"]
    if info["netns_path"]:
        namespaces.append({"type": "network", "path": info["netns_path"]})
    linux["namespaces"] = namespaces
    if info.get("hostname"):
        spec["hostname"] = info["hostname"]
    mounts = spec.setdefault("mounts", [])
    taken = {m.get("destination") for m in mounts}
    for dest, key in SANDBOX_FILES:
        if info.get(key) and dest not in taken:
            mounts.append({"destination": dest, "type": "bind", "source": info[key],
                           "options": ["rbind", "ro"]})
    if group:
        spec.setdefault("annotations", {})[GROUP_ANNOTATION] = sandbox_id
    return spec


def parse_mount(text: str) -> dict[str, Any]:
    """`--mount type=bind,src=/a,dst=/b[,ro][,options=x:y]` (operator input) → OCI mount."""
    kv: dict[str, str] = {}
    flags: list[str] = []
    for part in text.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            kv[k.strip()] = v
        elif part:
            flags.append(part.strip())
    typ = kv.get("type", "bind")
    src = kv.get("src", kv.get("source", ""))
    dst = kv.get("dst", kv.get("destination", kv.get("target", "")))
    dest = clean_container_path(dst, "mount destination")
    opts = [o for o in kv.get("options", "").split(":") if o]
    if typ == "bind":
        if not src or not os.path.isabs(src):
            raise InvalidArgument(f"bind mount source {src!r} must be an absolute host path")
        opts = opts or ["rbind"]
        if "rbind" not in opts and "bind" not in opts:
            opts.insert(0, "rbind")
    opts.append("ro" if "ro" in flags or "readonly" in flags else "rw")
    return {"destination": dest, "type": typ, "source": src or typ, "options": opts}


def parse_memory(text: str) -> int:
    """`512m`, `1g`, `1048576` → bytes."""
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower()
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise InvalidArgument(f"invalid memory size {text!r}") from None
    if value <= 0:
        raise InvalidArgument(f"invalid memory size {text!r}")
    return int(value * mult)


def process_spec(spec: Spec, args: Sequence[str], *, env: Sequence[str] = (), user: str = "",
                 cwd: str = "", terminal: bool = False) -> dict[str, Any]:
    """An exec process: the container's process with other args (containerd's `ctr exec`)."""
    import copy

    proc: dict[str, Any] = copy.deepcopy(spec.get("process") or {})
    if not args:
        raise InvalidArgument("exec needs a command")
    proc["args"] = list(args)
    proc["terminal"] = terminal
    if env:
        _check_env(env, "--env")
        proc["env"] = replace_or_append_env(proc.get("env", []), env)
    if user:
        proc["user"] = resolve_user(user, None)
    if cwd:
        proc["cwd"] = working_dir(cwd)
    return proc


def dumps(spec: Mapping[str, Any]) -> bytes:
    return _dumps(spec, separators=(",", ":")).encode()
