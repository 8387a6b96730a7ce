"""The ``[sandbox]`` config section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

KINDS = ("pod", "shim")


def _default_sandboxers() -> Mapping[str, str]:
    return {"podsandbox": "pod", "shim": "shim"}


@dataclass(frozen=True)
class SandboxConfig:
    """Where CNI lives, where namespaces go, deadlines, and the sandboxers by name.

    ``sandboxers``: name -> kind (``pod``: netns + CNI in this process; ``shim``: forwards to a
    runtime shim's containerd.runtime.sandbox.v1.Sandbox service). Timeouts are seconds:
    ``cni_add_timeout`` bounds setup (the caller's deadline can shorten it),
    ``cni_del_timeout`` bounds each teardown attempt and never depends on a caller.
    ``netns_prefix`` marks the namespaces this service owns: the startup reconciler removes
    any in ``netns_dir`` with that prefix that no instance references.
    """

    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
    netns_dir: str = "/var/run/netns"
    netns_prefix: str = "moorage-"
    ifname: str = "eth0"
    cni_add_timeout: float = 30.0
    cni_del_timeout: float = 30.0
    shim_timeout: float = 10.0
    reconcile: bool = True
    sandboxers: Mapping[str, str] = field(default_factory=_default_sandboxers)

    def __post_init__(self) -> None:
        for name, kind in self.sandboxers.items():
            if kind not in KINDS:
                raise ValueError(f"sandboxers.{name}: kind {kind!r}, want one of {', '.join(KINDS)}")
        if self.cni_add_timeout <= 0 or self.cni_del_timeout <= 0 or self.shim_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if not self.netns_prefix or "/" in self.netns_prefix:
            raise ValueError("netns_prefix must be a non-empty file-name prefix")
