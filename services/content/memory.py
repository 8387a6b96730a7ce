"""glibc malloc tuning for processes that move big buffers.

Every ttrpc frame and decoded chunk is a fresh ~1 MiB object. With glibc's defaults the
freed memory goes back to the kernel (brk trimmed, or munmap) after each one and is faulted
in, zero-filled, for the next: most of a transfer's system time. ``keep_freed_memory`` raises
the trim and mmap thresholds so freed chunks are reused. A no-op where mallopt is missing.
"""

from __future__ import annotations

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim: int = 256 << 20, mmap: int = 32 << 20) -> bool:
    """Raise the thresholds for this process; True if glibc took them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_TRIM_THRESHOLD, trim)) and bool(
            libc.mallopt(M_MMAP_THRESHOLD, mmap)
        )
    except (OSError, AttributeError):
        return False
