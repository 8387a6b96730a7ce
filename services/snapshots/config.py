"""``[snapshots]``: the snapshots process's own settings (the common keys are the suite's).

```toml
[snapshots]
snapshotters = ["overlayfs", "native"]   # which to load; overlayfs is the default one
apply_workers = 0                         # threads writing small files during Diff.Apply (0: none)
[snapshots.limits]                        # caps on every applied layer (Diff.Apply)
max_bytes = 68719476736                   # uncompressed bytes
max_ratio = 1000                          # uncompressed / compressed, checked past ratio_floor
ratio_floor = 268435456
max_entries = 1000000                     # tar headers (PAX/GNU records count)
max_header_bytes = 1048576                # one PAX or GNU long-name record
max_name = 4096                           # bytes in an entry or link name
max_window = 134217728                    # zstd window
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .contract import SNAPSHOTTERS
from .layerstream import Limits


@dataclass(frozen=True)
class SnapshotsConfig:
    snapshotters: tuple[str, ...] = SNAPSHOTTERS
    limits: Limits = field(default_factory=Limits)
    apply_workers: int = 0

    def __post_init__(self) -> None:
        unknown = [n for n in self.snapshotters if n not in SNAPSHOTTERS]
        if unknown:
            raise ValueError(f"unknown snapshotters {unknown}; known: {list(SNAPSHOTTERS)}")
        if not 0 <= self.apply_workers <= 64:
            raise ValueError("apply_workers must be between 0 and 64")
        if not self.snapshotters:
            raise ValueError("snapshotters must name at least one")
        lim = self.limits
        for name in ("max_bytes", "max_ratio", "ratio_floor", "max_entries", "max_header_bytes", "max_name", "max_window"):
            if getattr(lim, name) <= 0:
                raise ValueError(f"limits.{name} must be positive")
