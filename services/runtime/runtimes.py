"""Runtime names → shim binaries (containerd's rule), without heavy imports (`moor` uses it)."""

from __future__ import annotations

import os
import shutil

from moorage.errdefs import InvalidArgument, NotFound


def binary_for(runtime: str, search_path: str | None = None) -> str:
    """`io.containerd.runc.v2` → path of `containerd-shim-runc-v2`; absolute names as is."""
    if not runtime:
        raise InvalidArgument("must specify a runtime name")
    if os.path.isabs(runtime):
        if not os.access(runtime, os.X_OK) or not os.path.isfile(runtime):
            raise NotFound(f"runtime {runtime!r}: binary not installed")
        return runtime
    parts = runtime.split(".")
    if len(parts) < 2 or not all(parts[-2:]) or "/" in runtime:
        raise InvalidArgument(
            f"invalid runtime name {runtime}, correct runtime name should be either format "
            "like `io.containerd.runc.v2` or a full path to the binary")
    name = f"containerd-shim-{parts[-2]}-{parts[-1]}"
    found = shutil.which(name, path=search_path)
    if not found:
        raise NotFound(f"runtime {runtime!r} binary not installed {name!r}")
    return found
