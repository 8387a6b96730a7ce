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

    def __post_init__(self) -> None:
        if not self.default_runtime:
            raise ValueError("default_runtime must not be empty")
