"""Image references: `[host[:port]/]path[:tag][@digest]`, normalised as containerd/docker do
(`busybox` -> `docker.io/library/busybox:latest`). Parsing is strict: invalid input raises
InvalidArgument before any network or file access."""

from __future__ import annotations

import re
from dataclasses import dataclass

from moorage import errdefs

from .oci import validate_digest

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?|\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?")
DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class Reference:
    host: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.path, self.tag, digest)


def parse(ref: str, default_tag: bool = True) -> Reference:
    """Parse and normalise `ref`; adds tag `latest` when neither tag nor digest is given."""
    if not ref or len(ref) > 4096 or any(c.isspace() or ord(c) < 32 for c in ref):
        raise errdefs.InvalidArgument(f"invalid reference {ref[:100]!r}")
    rest, _, digest = ref.partition("@")
    if digest:
        validate_digest(digest)
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise errdefs.InvalidArgument(f"invalid tag in reference {ref[:100]!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, path = first, remainder
        if not _HOST.fullmatch(host):
            raise errdefs.InvalidArgument(f"invalid host in reference {ref[:100]!r}")
    else:
        host, path = DOCKER_HUB, rest
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise errdefs.InvalidArgument(f"invalid repository name in reference {ref[:100]!r}")
    if len(host) + len(path) + 1 > 255:
        raise errdefs.InvalidArgument("repository name must not be more than 255 characters")
    if not tag and not digest and default_tag:
        tag = "latest"
    return Reference(host, path, tag, digest)
