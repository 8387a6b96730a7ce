"""The overlayfs snapshotter: containerd 1.6's layout and mounts.

``snapshots/<id>/fs`` holds a snapshot's own files (the overlay upper dir of an active
snapshot, a lower dir once committed); active snapshots also get ``snapshots/<id>/work``.
Mounts, as a shim can use them unchanged:

=========================  ==================================================================
no parent (active, view)   ``bind <id>/fs`` with ``rw``/``ro`` and ``rbind``
active with parents        ``overlay``: [``index=off``,] ``workdir=``, ``upperdir=``, ``lowerdir=``
view with one parent       ``bind <parent>/fs`` with ``ro,rbind``
view with >= 2 parents     ``overlay`` with [``index=off``,] ``lowerdir=`` only (read-only)
=========================  ==================================================================

``lowerdir`` lists the nearest parent first. ``index=off`` is added when the kernel's
overlay module has the ``index`` parameter, as containerd does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .backend import Backend
from .contract import Kind, Mount
from .metadata import Row


def supports_index() -> bool:
    return os.path.exists("/sys/module/overlay/parameters/index")


class OverlayBackend(Backend):
    name = "overlayfs"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._index_off = supports_index()

    def fs(self, id_: int) -> str:
        return os.path.join(self.dir(id_), "fs")

    def work(self, id_: int) -> str:
        return os.path.join(self.dir(id_), "work")

    def build(self, tmp: str, kind: Kind, parents: Sequence[Row]) -> None:
        os.mkdir(os.path.join(tmp, "fs"), 0o755)
        if kind == Kind.ACTIVE:
            os.mkdir(os.path.join(tmp, "work"), 0o711)

    def mounts_for(self, row: Row, parents: Sequence[Row]) -> list[Mount]:
        if not parents:
            ro = "rw" if row.kind == Kind.ACTIVE else "ro"
            return [Mount("bind", self.fs(row.id), (ro, "rbind"))]
        options: list[str] = ["index=off"] if self._index_off else []
        if row.kind == Kind.ACTIVE:
            options += [f"workdir={self.work(row.id)}", f"upperdir={self.fs(row.id)}"]
        elif len(parents) == 1:
            return [Mount("bind", self.fs(parents[0].id), ("ro", "rbind"))]
        options.append("lowerdir=" + ":".join(self.fs(p.id) for p in parents))
        return [Mount("overlay", "overlay", tuple(options))]
