"""Startup reconciler: what a crash, a reboot or a failed teardown left behind.

Run once when the service starts, before it serves (reliability.md §3):

1. Instances whose create never finished (the service died mid-setup) or whose namespace
   vanished (a reboot) become NotReady (``failed``); DEL is still owed to release their
   IPAM state.
2. Every instance with a pending teardown (``failed``) gets one DEL attempt.
3. Namespace files ``<netns_dir>/<netns_prefix>*`` that no instance references are
   released: CNI DEL with the key taken from the file name, then unmounted and removed.
4. host-local allocations (``<dataDir>/<network>/<ip>`` files of the current conflist's
   network) held by a container id of our key form (32 hex) that no instance references
   get a DEL without namespace, which frees the address.

5. Pod file directories no instance owns are removed; shim instances whose create never
   finished (the service died between ``start`` and ``CreateSandbox``) are cleaned up
   (ShutdownSandbox or ``<shim> delete``, bundle removed).

Nothing here raises: each step logs what it could not do and the next start retries.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from moorage import errdefs
from moorage.namespaces import current_namespace

from . import netns
from .cni import NetworkConfig, load_conflist
from .contract import State
from .pod import PodController
from .shim import ShimController

log = logging.getLogger(__name__)

KEY = re.compile(r"[0-9a-f]{32}")
HOST_LOCAL_DIR = "/var/lib/cni/networks"


@dataclass
class Report:
    marked_failed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    still_failing: list[str] = field(default_factory=list)
    netns_removed: list[str] = field(default_factory=list)
    dirs_removed: list[str] = field(default_factory=list)
    shims_cleaned: list[str] = field(default_factory=list)
    ips_released: list[str] = field(default_factory=list)


def host_local_dirs(net: NetworkConfig) -> Iterator[str]:
    """The host-local data directories of a conflist's network."""
    for plugin in net.plugins:
        ipam = plugin.get("ipam")
        if isinstance(ipam, Mapping) and ipam.get("type") == "host-local":
            yield os.path.join(str(ipam.get("dataDir") or HOST_LOCAL_DIR), net.name)


def allocations(directory: str) -> Iterator[tuple[str, str, str]]:
    """(ip, container id, ifname) for each allocation file of host-local."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        try:
            ipaddress.ip_address(name.replace("_", ":"))
        except ValueError:
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                lines = f.read(4096).splitlines()
        except OSError:
            continue
        if lines:
            yield name, lines[0].strip(), (lines[1].strip() if len(lines) > 1 else "")


async def reconcile(pods: list[PodController], shims: Sequence[ShimController] = ()) -> Report:
    report = Report()
    for shim in shims:
        report.shims_cleaned += await shim.reconcile()
    keys: set[str] = set()
    netns_paths: set[str] = set()
    for pod in pods:
        for ns, sandbox_id, _sb, rec in pod.db.instances(pod.name):
            keys.add(rec["key"])
            if rec.get("netns"):
                netns_paths.add(rec["netns"])
            token = current_namespace.set(ns)
            try:
                await _instance(pod, ns, sandbox_id, rec, report)
            finally:
                current_namespace.reset(token)
    for pod in pods:
        await _orphans(pod, keys, netns_paths, report)
        _stale_dirs(pod, report)
    return report


def _stale_dirs(pod: PodController, report: Report) -> None:
    """Pod file directories (``<root>/pods/<ns>/<id>``) of instances that no longer exist."""
    live = {Path(rec["dir"]) for _, _, _, rec in pod.db.instances()}
    base = pod.root / "pods"
    if not base.is_dir():
        return
    for ns_dir in base.iterdir():
        for pod_dir in ns_dir.iterdir() if ns_dir.is_dir() else ():
            if pod_dir not in live and pod_dir.is_dir():
                shutil.rmtree(pod_dir, ignore_errors=True)
                report.dirs_removed.append(str(pod_dir))


async def _instance(pod: PodController, ns: str, sandbox_id: str, rec: dict[str, Any], report: Report) -> None:
    name = f"{ns}/{sandbox_id}"
    live = rec["state"] in (State.CREATED.value, State.READY.value)
    if live and not rec.get("setup_done", True):
        pod.mark_failed(ns, sandbox_id, "the service stopped during create")
        report.marked_failed.append(name)
        live = False
    elif live and rec["netns_owned"] and not netns.is_netns(rec["netns"]):
        pod.mark_failed(ns, sandbox_id, "network namespace is gone (host rebooted?)")
        report.marked_failed.append(name)
        live = False
    if rec["state"] == State.FAILED.value or (not live and rec["state"] != State.STOPPED.value):
        report.retried.append(name)
        try:
            await pod.retry_teardown(ns, sandbox_id)
        except errdefs.Error as exc:
            log.warning("reconcile: sandbox %s: teardown still failing: %s", name, exc)
            report.still_failing.append(name)


async def _orphans(pod: PodController, keys: set[str], netns_paths: set[str], report: Report) -> None:
    cfg = pod.config
    try:
        net: NetworkConfig | None = load_conflist(cfg.cni_conf_dir)
    except errdefs.Error as exc:
        log.info("reconcile: no cni config (%s): namespaces are removed without DEL", exc)
        net = None
    for path in netns.listdir(cfg.netns_dir, cfg.netns_prefix):
        if path in netns_paths:
            continue
        key = os.path.basename(path)[len(cfg.netns_prefix) :]
        try:
            if net is not None and KEY.fullmatch(key):
                await pod.release(net, key, path if netns.is_netns(path) else "", cfg.ifname)
            netns.remove(path)
            report.netns_removed.append(path)
        except (errdefs.Error, OSError) as exc:
            log.warning("reconcile: leaked namespace %s: %s", path, exc)
    if net is None:
        return
    for directory in host_local_dirs(net):
        for ip, container_id, ifname in list(allocations(directory)):
            if container_id in keys or not KEY.fullmatch(container_id):
                continue
            try:
                await pod.release(net, container_id, "", ifname or cfg.ifname)
                report.ips_released.append(ip)
            except errdefs.Error as exc:
                log.warning("reconcile: leaked address %s of %s: %s", ip, container_id, exc)
