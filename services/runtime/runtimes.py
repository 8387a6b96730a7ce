"""Runtime names → shim binaries (containerd's rule), without heavy imports (`moor` uses it)."""

from __future__ import annotations

import os

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
    # shutil.which's rule for a bare name, without importing shutil (zlib, bz2, lzma)
    path = os.environ.get("PATH", os.defpath) if search_path is None else search_path
    for folder in path.split(os.pathsep):
        found = os.path.join(folder, name)
        if os.path.isfile(found) and os.access(found, os.X_OK):
            return found
    raise NotFound(f"runtime {runtime!r} binary not installed {name!r}")
