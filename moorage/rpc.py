"""The two RPC edges of a moorage process, in one place.

``status_of`` is what every server hands ttrpc to turn an exception into a status (errdefs
kinds travel as their code; anything else is None, so ttrpc answers UNKNOWN and logs it).
``connect`` opens an asyncio ttrpc client whose failures raise errdefs kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from moorage import errdefs

if TYPE_CHECKING:
    from ttrpc.client import Client


def status_of(exc: BaseException) -> tuple[int, str] | None:
    """(code, message) for an errdefs kind; None for anything else."""
    if isinstance(exc, errdefs.Error):
        return errdefs.to_status(exc)
    return None


async def connect(
    path: Path | str, error_factory: Callable[[int, str], Exception] = errdefs.from_status
) -> Client:
    """An asyncio ttrpc client to ``path``; a refused connection raises errdefs.Unavailable.
    Statuses a call gets back raise ``error_factory(code, message)`` (errdefs kinds by
    default; a forwarder passes ttrpc's RpcError to keep them verbatim)."""
    from ttrpc.client import Client

    try:
        return await Client.connect(str(path), error_factory=error_factory)
    except OSError as exc:
        raise errdefs.Unavailable(f"connect {path}: {exc.strerror or exc}") from exc


class Peer:
    """A lazily connected client to one address (usually the proxy) that reconnects.

    ``await peer.client()`` returns a live connection, opening a new one after the old one
    dropped (the proxy or a backend restarted), so a long-running process keeps reaching its
    peers without restarting. Calls in flight when a connection drops still fail with
    Unavailable: whether to retry is the caller's call.
    """

    def __init__(
        self, address: Path | str, error_factory: Callable[[int, str], Exception] = errdefs.from_status
    ) -> None:
        import asyncio

        self.address = str(address)
        self.error_factory = error_factory
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client.closed

    async def client(self) -> Client:
        current = self._client
        if current is not None and not current.closed:
            return current
        async with self._lock:
            if self._client is None or self._client.closed:
                self._client = await connect(self.address, self.error_factory)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
