"""Single-use, expiring tokens for streaming requests (kubelet's request cache).

``put(request)`` stores a request and returns a token (URL-safe, unguessable); ``take``
returns it once: the token is gone after its first use, after ``ttl`` seconds, or when the
cache is full (the oldest goes first). Clock: ``time.monotonic`` unless given.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

TTL = 60.0
MAX_IN_FLIGHT = 1000


class TokenCache(Generic[T]):
    def __init__(self, ttl: float = TTL, max_size: int = MAX_IN_FLIGHT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self.clock = clock
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        while self._items:
            token, (deadline, _) = next(iter(self._items.items()))
            if deadline > now and len(self._items) <= self.max_size:
                break
            del self._items[token]

    def put(self, request: T) -> str:
        token = secrets.token_urlsafe(12)
        self._items[token] = (self.clock() + self.ttl, request)
        self._expire()
        return token

    def take(self, token: str) -> T | None:
        """The request of a live token, consuming it; None if unknown, used or expired."""
        self._expire()
        item = self._items.pop(token, None)
        return None if item is None else item[1]

    def __len__(self) -> int:
        self._expire()
        return len(self._items)
