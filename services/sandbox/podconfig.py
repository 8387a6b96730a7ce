"""The pod sandboxer's options (``Controller.Create`` options of type :data:`POD_CONFIG_TYPE`)
and their JSON: what `moor sandbox run` and the CRI send, what the pod sandboxer reads.

Light to import, as `moor sandbox run` builds them: frozen records through moorage.frozen
(not dataclasses), JSON through moorage.jsoncodec (json's output), ipaddress only to check
a host IP. contract.py re-exports them beside the other sandbox types.
"""

from __future__ import annotations

from moorage.jsoncodec import dumps, loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass
    from typing import Any
else:
    from moorage.frozen import dataclass

POD_CONFIG_TYPE = "moorage.sandbox.v1.PodConfig"
"""type_url of ``Controller.Create`` options for the pod sandboxer (JSON of PodConfig)."""


@dataclass(frozen=True)
class PortMapping:
    """A host port forwarded to a port in the sandbox (CNI portmap ``portMappings``)."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_cni(self) -> dict[str, Any]:
        return {"hostPort": self.host_port, "containerPort": self.container_port, "protocol": self.protocol, "hostIP": self.host_ip}

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """``[IP:]HOST:CTR[/PROTO]`` as docker/nerdctl ``-p``; ValueError when malformed."""
        spec, _, proto = text.partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 2:
            ip, host, ctr = "", parts[0], parts[1]
        elif len(parts) == 3:
            ip, host, ctr = parts
        else:
            raise ValueError(f"port mapping {text!r}: want [IP:]HOST:CTR[/PROTO]")
        mapping = cls(int(host), int(ctr), (proto or "tcp").lower(), ip.strip("[]"))
        mapping.validate()
        return mapping

    def validate(self) -> None:
        for port in (self.host_port, self.container_port):
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")
        if self.protocol not in ("tcp", "udp", "sctp"):
            raise ValueError(f"protocol {self.protocol!r}: want tcp, udp or sctp")
        if self.host_ip:
            import ipaddress

            ipaddress.ip_address(self.host_ip)


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodConfig:
    """Options of a pod sandbox (``Controller.Create`` options, type :data:`POD_CONFIG_TYPE`).

    ``host_network``: no namespace, no CNI (containers share the host's network).
    ``dns`` None: a copy of the host's resolv.conf. ``hostname`` empty: the sandbox id
    (truncated to 63 characters).
    """

    hostname: str = ""
    dns: DNSConfig | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    host_network: bool = False
    cni_args: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "hostname": self.hostname,
            "port_mappings": [m.to_cni() for m in self.port_mappings],
            "host_network": self.host_network,
            "cni_args": [list(a) for a in self.cni_args],
        }
        if self.dns is not None:
            doc["dns"] = {"servers": list(self.dns.servers), "searches": list(self.dns.searches), "options": list(self.dns.options)}
        return dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PodConfig:
        """Parse; ValueError (or KeyError/TypeError) on a malformed document."""
        doc = loads(data or "{}")
        if not isinstance(doc, dict):
            raise ValueError("pod config: not a JSON object")
        dns = doc.get("dns")
        mappings = tuple(
            PortMapping(int(m["hostPort"]), int(m["containerPort"]), str(m.get("protocol") or "tcp").lower(), str(m.get("hostIP") or ""))
            for m in doc.get("port_mappings") or ()
        )
        for m in mappings:
            m.validate()
        return cls(
            hostname=str(doc.get("hostname") or ""),
            dns=None
            if dns is None
            else DNSConfig(tuple(map(str, dns.get("servers") or ())), tuple(map(str, dns.get("searches") or ())), tuple(map(str, dns.get("options") or ()))),
            port_mappings=mappings,
            host_network=bool(doc.get("host_network", False)),
            cni_args=tuple((str(k), str(v)) for k, v in doc.get("cni_args") or ()),
        )
