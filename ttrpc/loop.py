"""Event loop choice: uvloop when it is installed, plain asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def install() -> bool:
    """Make new event loops uvloop ones if possible; True if uvloop is in use."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def tune_malloc(mmap_threshold: int = 16 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Keep buffers up to 16 MiB on glibc's heap instead of fresh mmaps.

    By default glibc serves every allocation above ~128 KiB-1 MiB with its own mmap and
    unmaps it on free, so each large frame costs page faults on every copy; in a VM these
    dominate (1 MiB calls ran 5x slower here). Retains at most ``trim_threshold`` bytes of
    free heap. Returns False where mallopt is unavailable (non-glibc).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None, malloc: bool = True) -> T:
    """``asyncio.run`` on uvloop when it is installed; ``malloc`` applies ``tune_malloc()``."""
    if malloc:
        tune_malloc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main, debug=debug)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop, debug=debug) as runner:
        return runner.run(main)
