"""The native snapshotter: a full copy of the parent per snapshot, bind-mounted.

``snapshots/<id>`` holds the files directly (containerd's native layout). Prepare and View
copy the parent (``cp -a``: owners, modes, times, xattrs, hard links, devices); mounts are
one ``bind`` with ``rw``/``ro`` and ``rbind``. Works on any filesystem, costs the copy.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from moorage import errdefs

from .backend import Backend
from .contract import Kind, Mount
from .metadata import Row


class NativeBackend(Backend):
    name = "native"

    def fs(self, id_: int) -> str:
        return self.dir(id_)

    def build(self, tmp: str, kind: Kind, parents: Sequence[Row]) -> None:
        os.chmod(tmp, 0o755)
        if not parents:
            return
        src = self.fs(parents[0].id)
        proc = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", src + "/.", tmp + "/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if proc.returncode != 0:
            raise errdefs.Unknown(
                f"copying parent snapshot: {proc.stderr.decode(errors='replace').strip()}"
            )

    def mounts_for(self, row: Row, parents: Sequence[Row]) -> list[Mount]:
        ro = "rw" if row.kind == Kind.ACTIVE else "ro"
        return [Mount("bind", self.fs(row.id), (ro, "rbind"))]
