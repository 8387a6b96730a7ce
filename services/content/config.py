"""``[content]``: the content process's own settings (the common keys are the suite's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContentConfig:
    workers: int = 8
    """Threads for blocking work (file I/O, hashing, fsync, SQLite); bounds concurrent ingests
    that make progress at once."""

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 256:
            raise ValueError("workers must be between 1 and 256")
