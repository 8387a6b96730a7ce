"""When the garbage collector runs: containerd's scheduler (plugins/gc/scheduler.go).

Inputs are mutations (a create, update or delete seen on the event exchange, or a lease
change) and among them deletions (``dirty``: something may have become garbage), plus manual
triggers. The rules, with containerd's defaults:

- ``pause_threshold`` (0.02): collections take at most this share of real time; after each,
  the next check comes ``avg/pause_threshold - avg`` later, ``avg`` the mean collection time
  (at least 5 ms, containerd's floor);
- ``deletion_threshold`` (0 = off): this many deletions since the last collection schedule one
  now (after ``schedule_delay``);
- ``mutation_threshold`` (100): this many mutations since the last collection make the next
  check collect even without deletions (it never schedules one by itself);
- ``schedule_delay`` (0 s): how long after a trigger or a threshold the collection runs;
- ``startup_delay`` (0.1 s): the first check after start (unlike containerd's, it collects only
  if something asked for it: a proxy restart does not sweep unleased work in progress).

At a check, a collection runs if anything asked for it (a trigger, a deletion, or the
mutation threshold); otherwise the check is just rescheduled. A collection that could not
run (a service down) is retried with a doubling delay, from 1 s up to ``MAX_RETRY`` (one
warning each), until one runs. So a burst of ``rm`` gives one
collection at the next check, and an idle suite never collects. Events stamped before the
last collection began are ignored (that collection saw their effect).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from moorage import errdefs

log = logging.getLogger("moorage.proxy.gc")

MAX_RETRY = 60.0
"""The longest wait before retrying a collection that could not run."""

MIN_GC_TIME = 0.005
"""The shortest collection the pause ratio assumes (containerd's minimumGCTime)."""


@dataclass(frozen=True)
class Thresholds:
    pause_threshold: float = 0.02
    deletion_threshold: int = 0
    mutation_threshold: int = 100
    schedule_delay: float = 0.0
    startup_delay: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.pause_threshold <= 0.5:
            raise ValueError("gc pause_threshold must be in (0, 0.5]")
        if self.deletion_threshold < 0 or self.mutation_threshold < 0:
            raise ValueError("gc thresholds must be >= 0")
        if self.schedule_delay < 0 or self.startup_delay < 0:
            raise ValueError("gc delays must be >= 0")


class Scheduler:
    """Calls ``collect`` by the rules above; whoever collects reports it with :meth:`ran`."""

    def __init__(self, collect: Callable[[], Awaitable[object]], thresholds: Thresholds | None = None) -> None:
        self.collect = collect
        self.t = thresholds or Thresholds()
        self.deletions = 0
        self.mutations = 0
        self.triggered = False
        self.last_start: float | None = None
        """Epoch seconds when the last collection began (events before it are ignored)."""
        self.total = 0.0
        self.collections = 0
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._running: asyncio.Task[None] | None = None
        self._retry = 0.0

    @property
    def interval(self) -> float:
        """Seconds between checks: what keeps collections under the pause threshold."""
        avg = max(self.total / self.collections, MIN_GC_TIME) if self.collections else MIN_GC_TIME
        return avg / self.t.pause_threshold - avg

    def start(self) -> None:
        self._schedule(self.t.startup_delay)

    def _schedule(self, delay: float, sooner_only: bool = False) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._timer is not None:
            if sooner_only and self._due <= due:
                return
            self._timer.cancel()
        self._due = due
        self._timer = loop.call_later(delay, self._check)

    def mutated(self, dirty: bool, stamp: float | None = None) -> None:
        """A mutation (``dirty``: a deletion) happened at ``stamp`` (time.time(); None: now)."""
        if stamp is not None and self.last_start is not None and stamp < self.last_start:
            return
        self.mutations += 1
        if dirty:
            self.deletions += 1
        if self.t.deletion_threshold and self.deletions >= self.t.deletion_threshold:
            self._schedule(self.t.schedule_delay, sooner_only=True)

    def trigger(self) -> None:
        """Collect at the next opportunity (``schedule_delay`` from now at the latest)."""
        self.triggered = True
        self._schedule(self.t.schedule_delay, sooner_only=True)

    def ran(self, began: float, seconds: float) -> None:
        """A collection (scheduled or on demand) that began at ``began`` took ``seconds``."""
        self.last_start = began
        self.total += seconds
        self.collections += 1
        self.triggered = False
        self.deletions = 0
        self.mutations = 0

    def _check(self) -> None:
        self._timer = None
        wanted = self.triggered or self.deletions > 0 or (
            self.t.mutation_threshold > 0 and self.mutations >= self.t.mutation_threshold)
        if not wanted or (self._running is not None and not self._running.done()):
            self._schedule(self.interval)
            return
        self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self.collect()
        except Exception as exc:  # noqa: BLE001 - the scheduler outlives any one collection
            self._retry = min(max(self._retry * 2, 1.0), MAX_RETRY)
            if isinstance(exc, errdefs.Error):
                log.warning("scheduled collection did not run: %s; retrying in %.0fs", exc, self._retry)
            else:
                log.exception("scheduled collection failed; retrying in %.0fs", self._retry)
            self._schedule(self._retry)
        else:
            self._retry = 0.0
            self._schedule(self.interval)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running is not None:
            self._running.cancel()
            try:
                await self._running
            except BaseException:  # noqa: BLE001 - cancelled
                pass
