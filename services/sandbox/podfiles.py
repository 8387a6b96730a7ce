"""The files a pod's containers bind-mount: ``hostname``, ``hosts``, ``resolv.conf``.

Written atomically into the sandbox's own directory (as containerd's CRI does under its
sandboxes root). ``resolv.conf`` is the pod's DNS config, or a copy of the host's with
loopback nameservers (systemd-resolved's stub) replaced by the upstream list when there is
one, since a loopback resolver is unreachable from a pod's namespace.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .contract import DNSConfig

HOST_RESOLV = "/etc/resolv.conf"
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def resolv_conf(dns: DNSConfig | None, host: str = HOST_RESOLV) -> str:
    if dns is not None and (dns.servers or dns.searches or dns.options):
        lines = [f"search {' '.join(dns.searches)}"] if dns.searches else []
        lines += [f"nameserver {s}" for s in dns.servers]
        lines += [f"options {' '.join(dns.options)}"] if dns.options else []
        return "\n".join(lines) + "\n"
    try:
        text = Path(host).read_text()
    except OSError:
        return ""
    if _loopback_only(text) and os.path.exists(RESOLVED_UPSTREAM):
        text = Path(RESOLVED_UPSTREAM).read_text()
    return text


def _loopback_only(text: str) -> bool:
    servers = [ln.split()[1] for ln in text.splitlines() if ln.startswith("nameserver") and len(ln.split()) > 1]
    return bool(servers) and all(s.startswith("127.") or s == "::1" for s in servers)


def hosts(hostname: str, ips: tuple[str, ...]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{hostname}" for ip in ips]
    return "\n".join(lines) + "\n"


def write(directory: Path, hostname: str, ips: tuple[str, ...], dns: DNSConfig | None) -> tuple[Path, Path, Path]:
    """Write the three files; returns (hostname, hosts, resolv.conf) paths."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    paths = (directory / "hostname", directory / "hosts", directory / "resolv.conf")
    _write(paths[0], hostname + "\n")
    _write(paths[1], hosts(hostname, ips))
    _write(paths[2], resolv_conf(dns))
    return paths


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
