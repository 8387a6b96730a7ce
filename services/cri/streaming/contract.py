"""What the streaming server asks of its backend, and the stream shapes it hands over.

The server (server.py) speaks HTTP + SPDY to kubelet's clients; a backend does the work on
the container side. Every backend call gets already-negotiated streams and runs until its
work is done; the server then reports the outcome on the client's error stream.

- ``exec``: run ``cmd`` in the container (tasks.v1 Exec in its task), copy stdio, apply
  terminal resizes; return the exit code (any code; the server turns non-zero into a
  NonZeroExitCode status). Raise an errdefs kind when the exec cannot start.
- ``attach``: the container's init process stdio until its output ends (the process
  exited) or the client leaves (the call is then cancelled).
- ``port_forward``: connect to ``127.0.0.1:port`` in the pod's network namespace and copy
  both ways until both sides are done; raise when the connection cannot be made (the
  server writes the message on the pair's error stream).
Streams given as None were not requested. Calls run in containerd namespace ``k8s.io``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

NAMESPACE = "k8s.io"


@dataclass(frozen=True)
class TermSize:
    width: int
    height: int


class InStream(Protocol):
    """Bytes from the client."""

    async def read(self) -> bytes:
        """The next chunk; b"" once the client closed its side."""
        ...


class OutStream(Protocol):
    """Bytes to the client."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """No more data from this side (SPDY FIN)."""
        ...


class Duplex(InStream, OutStream, Protocol):
    """Both directions of one forwarded connection."""


class Backend(Protocol):
    async def exec(self, container_id: str, cmd: Sequence[str], tty: bool,
                   stdin: InStream | None, stdout: OutStream | None,
                   stderr: OutStream | None,
                   resize: AsyncIterator[TermSize] | None) -> int: ...

    async def attach(self, container_id: str, tty: bool, stdin: InStream | None,
                     stdout: OutStream | None, stderr: OutStream | None,
                     resize: AsyncIterator[TermSize] | None) -> None: ...

    async def port_forward(self, pod_sandbox_id: str, port: int, stream: Duplex) -> None: ...
