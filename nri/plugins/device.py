"""An NRI plugin injecting devices into new containers.

From its config (every container) and the annotation ``devices.noderesource.dev``
(``.../container.<name>``, ``.../pod``), a JSON list of devices; type, major and minor
are read from the host node when omitted::

    # config
    [[devices]]
    path = "/dev/fuse"
    file_mode = 0o666

    # annotation
    devices.noderesource.dev/container.web='[{"path": "/dev/net/tun"}]'
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any

from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.nri.stub import Adjustment, Plugin, run

from .common import annotation, parse_toml, parser, stub_args

ANNOTATION = "devices.noderesource.dev"


def device(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not str(entry.get("path", "")).startswith("/dev/"):
        raise ValueError(f"bad device {entry!r} (want a path under /dev)")
    d = dict(entry)
    if "type" not in d or "major" not in d or "minor" not in d:
        st = os.stat(d["path"])
        if stat.S_ISCHR(st.st_mode):
            d.setdefault("type", "c")
        elif stat.S_ISBLK(st.st_mode):
            d.setdefault("type", "b")
        else:
            raise ValueError(f"{d['path']} is not a device node")
        d.setdefault("major", os.major(st.st_rdev))
        d.setdefault("minor", os.minor(st.st_rdev))
        d.setdefault("file_mode", stat.S_IMODE(st.st_mode))
    return d


class DeviceInjector(Plugin):
    def __init__(self) -> None:
        self.devices: list[dict[str, Any]] = []

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        self.devices = [device(d) for d in parse_toml(config).get("devices", [])]

    async def create_container(self, pod: api.PodSandbox, container: api.Container) -> Adjustment | None:
        devices = list(self.devices)
        raw = annotation(ANNOTATION, pod, container)
        if raw:
            devices += [device(d) for d in json.loads(raw)]
        if not devices:
            return None
        adj = Adjustment()
        for d in devices:
            adj.add_device(d["path"], d["type"], int(d["major"]), int(d["minor"]),
                           file_mode=d.get("file_mode"), uid=d.get("uid"), gid=d.get("gid"))
        return adj


def main(argv: list[str] | None = None) -> int:
    p = parser("nri-device", __doc__ or "")
    ns = p.parse_args(argv)
    return run(DeviceInjector(), **stub_args(ns, "device"))


if __name__ == "__main__":
    sys.exit(main())
