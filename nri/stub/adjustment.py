"""A small builder for ``ContainerAdjustment``, like the Go API's ``Add*``/``Set*`` helpers.

Each ``remove_*`` marks the key for removal (``-key`` on the wire); a later ``add_*`` of
the same key in the same adjustment re-adds it. ``message`` is the protobuf to return.
"""

from __future__ import annotations

from collections.abc import Sequence

from moorage.api.nri.pkg.api import api_pb2 as api

HOOK_KINDS = ("prestart", "create_runtime", "create_container", "start_container", "poststart", "poststop")


class Adjustment:
    def __init__(self) -> None:
        self.message = api.ContainerAdjustment()

    def add_annotation(self, key: str, value: str) -> Adjustment:
        self.message.annotations[key] = value
        return self

    def remove_annotation(self, key: str) -> Adjustment:
        self.message.annotations["-" + key] = ""
        return self

    def add_env(self, key: str, value: str) -> Adjustment:
        self.message.env.add(key=key, value=value)
        return self

    def remove_env(self, key: str) -> Adjustment:
        self.message.env.add(key="-" + key)
        return self

    def set_args(self, args: Sequence[str], override: bool = False) -> Adjustment:
        """Replace the command; ``override`` wins over args another plugin set."""
        del self.message.args[:]
        self.message.args.extend(([""] if override else []) + list(args))
        return self

    def add_mount(self, destination: str, source: str, type: str = "bind",
                  options: Sequence[str] = ("rbind", "ro")) -> Adjustment:
        self.message.mounts.add(destination=destination, source=source, type=type, options=list(options))
        return self

    def remove_mount(self, destination: str) -> Adjustment:
        self.message.mounts.add(destination="-" + destination)
        return self

    def add_hook(self, kind: str, path: str, args: Sequence[str] = (), env: Sequence[str] = (),
                 timeout: int | None = None) -> Adjustment:
        """An OCI hook of ``kind`` (``prestart``, ``create_runtime``, ..., ``poststop``)."""
        if kind not in HOOK_KINDS:
            raise ValueError(f"unknown hook kind {kind!r}")
        hook = getattr(self.message.hooks, kind).add(path=path, args=list(args), env=list(env))
        if timeout is not None:
            hook.timeout.value = timeout
        return self

    def add_rlimit(self, type: str, hard: int, soft: int) -> Adjustment:
        """``type`` as in OCI: ``RLIMIT_NOFILE``..."""
        self.message.rlimits.add(type=type, hard=hard, soft=soft)
        return self

    def add_device(self, path: str, type: str, major: int, minor: int, file_mode: int | None = None,
                   uid: int | None = None, gid: int | None = None) -> Adjustment:
        d = self.message.linux.devices.add(path=path, type=type, major=major, minor=minor)
        if file_mode is not None:
            d.file_mode.value = file_mode
        if uid is not None:
            d.uid.value = uid
        if gid is not None:
            d.gid.value = gid
        return self

    def remove_device(self, path: str) -> Adjustment:
        self.message.linux.devices.add(path="-" + path)
        return self

    def set_memory_limit(self, limit: int) -> Adjustment:
        self.message.linux.resources.memory.limit.value = limit
        return self

    def set_cpu_shares(self, shares: int) -> Adjustment:
        self.message.linux.resources.cpu.shares.value = shares
        return self

    def set_cpu_quota(self, quota: int, period: int) -> Adjustment:
        self.message.linux.resources.cpu.quota.value = quota
        self.message.linux.resources.cpu.period.value = period
        return self

    def set_cpuset(self, cpus: str = "", mems: str = "") -> Adjustment:
        if cpus:
            self.message.linux.resources.cpu.cpus = cpus
        if mems:
            self.message.linux.resources.cpu.mems = mems
        return self

    def set_pids_limit(self, limit: int) -> Adjustment:
        self.message.linux.resources.pids.limit = limit
        return self

    def set_oom_score_adj(self, score: int) -> Adjustment:
        self.message.linux.oom_score_adj.value = score
        return self

    def set_cgroups_path(self, path: str) -> Adjustment:
        self.message.linux.cgroups_path = path
        return self

    def add_sysctl(self, key: str, value: str) -> Adjustment:
        self.message.linux.sysctl[key] = value
        return self
