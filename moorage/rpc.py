"""The two RPC edges of a moorage process, in one place.

``status_of`` is what every server hands ttrpc to turn an exception into a status (errdefs
kinds travel as their code; anything else is None, so ttrpc answers UNKNOWN and logs it).
``connect`` opens an asyncio ttrpc client whose failures raise errdefs kinds.
"""

from __future__ import annotations

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


async def connect(path: Path | str) -> Client:
    """An asyncio ttrpc client to ``path``; a refused connection raises errdefs.Unavailable."""
    from ttrpc.client import Client

    try:
        return await Client.connect(str(path), error_factory=errdefs.from_status)
    except OSError as exc:
        raise errdefs.Unavailable(f"connect {path}: {exc.strerror or exc}") from exc
