"""The proxy's own connections to its backends' replicas, for what it asks them itself
(health for introspection and `moor services`, namespace usage before a delete).

Calls it forwards for clients do not go through here: proxy/splice.py carries them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from moorage import errdefs
from moorage.rpc import Peer
from ttrpc.errors import RpcError


class Backend(Peer):
    """One replica: its socket path and a lazily (re)connected client; statuses stay raw."""

    def __init__(self, process: str, path: str) -> None:
        super().__init__(path, error_factory=RpcError)
        self.process = process
        self.path = path

class Pool:
    """The replicas of one process."""

    def __init__(self, process: str, paths: Sequence[str]) -> None:
        self.process = process
        self.backends = [Backend(process, p) for p in paths]


async def ping(backend: Backend, timeout: float = 1.0) -> tuple[bool, float | None, str, tuple[str, ...]]:
    """(healthy, round trip µs, error, notes) of one replica's internal Health call; notes are
    the warnings a healthy replica reports (see BuildContext.health_notes)."""
    from moorage.runner import INTERNAL_SERVICE

    try:
        client = await asyncio.wait_for(backend.client(), timeout)
        start = time.perf_counter()
        body = await client.unary_raw(INTERNAL_SERVICE, "Health", b"", int(timeout * 1e9))
        rtt = (time.perf_counter() - start) * 1e6
    except (OSError, RpcError, errdefs.Error, TimeoutError) as exc:
        return False, None, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__, ()
    return True, rtt, "", _notes(body)


def _notes(body: bytes) -> tuple[str, ...]:
    import msgpack

    try:
        notes = msgpack.unpackb(body).get("notes") or ()
    except Exception:
        return ()
    return tuple(str(n) for n in notes) if isinstance(notes, (list, tuple)) else ()
