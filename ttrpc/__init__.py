"""ttrpc for Python: containerd's ttrpc protocol, wire-compatible with containerd/ttrpc.

Layers, bottom up (see README.md):
- ``ttrpc.frame``, ``ttrpc.messages``, ``ttrpc.protocol``: the sans-IO core (bytes in,
  events out; no asyncio). Bad peer input raises only ``ProtocolError``, or becomes a
  per-stream status.
- ``ttrpc.server`` and ``ttrpc.client``: the asyncio transport (uvloop when installed).
- ``ttrpc.blocking``: a socket client with no asyncio, for short-lived commands.
- ``ttrpc.codegen``: the protoc plugin that writes typed ``<file>_ttrpc.py`` stubs.

Importing ``ttrpc`` itself imports no asyncio.
"""

from __future__ import annotations

from .codes import Code
from .errors import ProtocolError, RpcError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any, TypeVar

    T = TypeVar("T")

__all__ = ["Code", "ProtocolError", "RpcError", "run"]


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when installed, else asyncio (see ``ttrpc.loop``)."""
    from .loop import run as _run

    return _run(main)
