"""The ``[cri]`` config section."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from moorage.errdefs import InvalidArgument
from moorage.namespaces import validate_namespace


@dataclass(frozen=True)
class CriConfig:
    """What kubelet cannot tell us per call: the pause image, the host's rules, where things go.

    ``runtime_handlers``: the RuntimeClass handlers kubelet may name, each a runtime v2 shim
    (``io.containerd.<name>.<version>``); a pod's containers run on its pod's runtime.
    ``restrict_oom_score_adj``: clamp every requested ``oom_score_adj`` to this process's own
    value when it is lower (containerd's option of the same name): a host without
    CAP_SYS_RESOURCE (this VM) cannot lower it, and runc then fails every pod. ``"auto"`` (the
    default) clamps when the capability is missing, ``"on"``/``"off"`` force it.
    ``allow_privileged``: privileged pods and containers are refused unless true.
    ``stream_address``/``stream_port``: the streaming server for Exec/Attach/PortForward
    (loopback; port 0 picks one). ``cni_conf_dir``: where NetworkReady looks for a network
    (the sandbox service's directory). ``default_cgroup_parent``: the cgroup parent of pods
    kubelet gives none. ``max_exec_output``: bytes ExecSync keeps of each stream.
    ``pod_annotations``/``container_annotations``: per RuntimeClass handler (``""`` is the
    default, ``runtime``), the key patterns (Go ``path.Match``: ``*`` and ``?`` never match
    ``/``) of the pod's / the container's CRI annotations that reach the OCI spec, as
    containerd's runtime options of those names; pod annotations reach the pause and every
    container of the pod. Default none: user annotations stay out of the spec.
    """

    namespace: str = "k8s.io"
    sandbox_image: str = "registry.k8s.io/pause:3.9"
    sandboxer: str = "podsandbox"
    runtime: str = "io.containerd.runc.v2"
    runtime_handlers: Mapping[str, str] = field(default_factory=lambda: {"runc": "io.containerd.runc.v2"})
    """RuntimeClass handler -> runtime (shim) name; the handler "" is ``runtime``."""
    snapshotter: str = "overlayfs"
    restrict_oom_score_adj: str = "auto"
    allow_privileged: bool = False
    stream_address: str = "127.0.0.1"
    stream_port: int = 0
    cni_conf_dir: str = "/etc/cni/net.d"
    default_cgroup_parent: str = "/k8s.io"
    max_exec_output: int = 16 << 20
    pod_annotations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    container_annotations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            validate_namespace(self.namespace)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
        if self.restrict_oom_score_adj not in ("auto", "on", "off"):
            raise ValueError("restrict_oom_score_adj: want auto, on or off")
        if not 0 <= self.stream_port < 65536:
            raise ValueError("stream_port out of range")
        for handler, runtime in self.runtime_handlers.items():
            if not handler or not runtime:
                raise ValueError("runtime_handlers: handler and runtime names must not be empty")
        if not self.sandbox_image:
            raise ValueError("sandbox_image must not be empty")
        if self.default_cgroup_parent and not self.default_cgroup_parent.startswith("/"):
            raise ValueError("default_cgroup_parent must be absolute")
        for key, lists in (("pod_annotations", self.pod_annotations),
                           ("container_annotations", self.container_annotations)):
            for handler, patterns in lists.items():
                if handler and handler not in self.runtime_handlers:
                    raise ValueError(f"{key}: no runtime handler {handler!r} in runtime_handlers")
                for pattern in patterns:
                    annotation_pattern(pattern, f"{key}.{handler}" if handler else f'{key}.""')


def annotation_pattern(pattern: str, where: str = "") -> re.Pattern[str]:
    """Go's ``path.Match`` pattern (what containerd matches annotation keys with) as a regular
    expression: ``*`` any run of non-``/``, ``?`` one non-``/``, ``[^a-z]`` a class, ``\\``
    escapes. ValueError (naming ``where``) for what Go calls ErrBadPattern."""
    out: list[str] = []
    i, n = 0, len(pattern)

    def char(j: int) -> tuple[str, int]:
        if j < n and pattern[j] == "\\" and j + 1 < n:
            return pattern[j + 1], j + 2
        if j >= n or pattern[j] in "\\-]":
            raise ValueError(f"{where}: bad annotation pattern {pattern!r}")
        return pattern[j], j + 1

    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            lit, i = char(i)
            out.append(re.escape(lit))
            continue
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            i += negate
            ranges: list[str] = []
            while not (i < n and pattern[i] == "]" and ranges):
                lo, i = char(i)
                hi = lo
                if i < n and pattern[i] == "-":
                    hi, i = char(i + 1)
                    if hi < lo:
                        raise ValueError(f"{where}: bad annotation pattern {pattern!r}")
                ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
            out.append(f"[{'^' if negate else ''}{''.join(ranges)}]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)
