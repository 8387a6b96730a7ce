"""`[runtime]` settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeConfig:
    default_runtime: str = "io.containerd.runc.v2"
    """Runtime a container gets when `moor run` names none."""
    shim_path: str = ""
    """Extra directories (PATH syntax) searched for `containerd-shim-*` before $PATH."""
    shim_debug: bool = False
    """Start shims with `-debug` (their log goes to the runtime's log at debug level)."""
    runc_root: str = ""
    """State root of runc-style runtimes; "" = `<state>/runtime/runc`."""
    shim_prestart: bool = False
    """Keep one runc shim started ahead per namespace, so a task create skips `start`
    (~25-50 ms). Each task still gets a shim of its own; the waiting shim is an extra
    process that stays while the runtime runs (off by default: `moor run --rm` then
    leaves no shim at all)."""

    refuse_unpatched_runtimes: bool = False
    """Refuse to create tasks with an OCI runtime (runc, crun) that lacks upstream fixes for
    container breakouts its distribution has not backported yet (runc CVE-2025-31133,
    -52565, -52881: Debian 12's runc). false: such a runtime runs, with a warning in the
    log at start and at its first use. Breakouts fixed long ago (runc < 1.1.12 without a
    known backport, CVE-2024-21626) are refused either way."""

    nri: bool = True
    """Consult the nri process (moorage.nri.v1.Hooks, through the proxy) on the container
    lifecycle. When it is not running the runtime goes on without it, asking again every
    2 s at most; false never asks."""

    def __post_init__(self) -> None:
        if not self.default_runtime:
            raise ValueError("default_runtime must not be empty")
