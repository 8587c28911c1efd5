"""When to collect: containerd's GC scheduler, on asyncio.

Collection runs after deletions (``deletion_threshold`` 0 means: soon after any deletion),
after ``mutation_threshold`` mutations, or on demand (:meth:`Scheduler.schedule_and_wait`,
what a synchronous delete uses). ``pause_threshold`` bounds the share of time spent
collecting: after a collection that took ``d`` on average, the next periodic one waits
``d / pause_threshold - d``. ``schedule_delay`` postpones a triggered collection (to batch
deletions); ``startup_delay`` schedules the first one after start.

Lifecycle: ``start()`` once the event loop runs, ``close()`` at shutdown. Collections run in
a worker thread; ``mutation`` callbacks may come from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from ctrd.durations import parse_seconds
from ctrd.gc.config import SchedulerConfig
from ctrd.metadata.gc import Stats

log = logging.getLogger("ctrd.gc")


MINIMUM_GC_TIME = 0.005  # s: containerd's minimumGCTime


class Scheduler:
    def __init__(self, collect: Callable[[], Stats], config: SchedulerConfig) -> None:
        self._collect = collect
        self.config = config
        self._schedule_delay = parse_seconds(config.schedule_delay)
        self._startup_delay = parse_seconds(config.startup_delay)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future] = []
        self._deletions = 0
        self._mutations = 0
        self._triggered = False
        self._next: float | None = None  # monotonic time of the next collection
        self._interval = 1.0
        self._gc_time = 0.0
        self._collections = 0
        self._last: float | None = None
        self._task: asyncio.Task | None = None
        self.last_stats: Stats | None = None

    @property
    def pending_mutations(self) -> int:
        """Mutations the scheduler has taken in since its last collection."""
        return self._mutations

    @property
    def scheduled(self) -> bool:
        """Whether a collection is due (a time is set for it); False: none runs until a
        deletion, enough mutations or :meth:`schedule_and_wait` asks for one."""
        return self._next is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._startup_delay > 0:
            self._next = time.monotonic() + self._startup_delay
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for w in self._waiters:
            if not w.done():
                w.set_exception(RuntimeError("gc scheduler stopped"))

    def mutation(self, dirty: bool) -> None:
        """Called after each metadata mutation (from any thread)."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._on_mutation, dirty)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _on_mutation(self, dirty: bool) -> None:
        c = self.config
        if dirty:
            self._deletions += 1
        self._mutations += 1
        if c.deletion_threshold > 0 and self._deletions >= c.deletion_threshold:
            self._schedule(self._schedule_delay)
        elif self._next is None and (
                (c.deletion_threshold == 0 and self._deletions > 0)
                or (c.mutation_threshold > 0 and self._mutations >= c.mutation_threshold)):
            self._schedule(self._schedule_delay, paced=True)

    def _schedule(self, delay: float, paced: bool = False) -> None:
        """Collect ``delay`` s from now; ``paced``: not before one interval after the last
        collection (where containerd's scheduler would wait for its next tick)."""
        at = time.monotonic() + delay
        if paced and self._last is not None:
            at = max(at, self._last + self._interval)
        if self._next is None or self._next > at:
            self._next = at
            self._wake.set()

    async def schedule_and_wait(self) -> Stats:
        """Collect now (after ``schedule_delay``) and return that collection's stats."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._triggered = True
        self._schedule(self._schedule_delay)
        return await fut

    async def _run(self) -> None:
        c = self.config
        while True:
            self._wake.clear()
            if self._next is None:
                await self._wake.wait()
                continue
            delay = self._next - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                    continue  # rescheduled: recompute
                except TimeoutError:
                    pass
            if (not self._triggered and self._last is not None and self._deletions == 0
                    and (c.mutation_threshold == 0
                         or self._mutations < c.mutation_threshold)):
                # Nothing to do: sleep until a mutation asks (containerd re-arms a timer
                # every interval instead: 4 wake-ups a second on an idle daemon).
                self._next = None
                continue
            waiters, self._waiters = self._waiters, []
            self._triggered = False
            self._deletions = self._mutations = 0
            try:
                stats = await asyncio.to_thread(self._collect)
            except Exception as e:  # noqa: BLE001 - keep scheduling; tell the waiters
                log.exception("garbage collection failed")
                self._next = time.monotonic() + self._interval + 1.0
                for w in waiters:
                    if not w.done():
                        w.set_exception(e)
                continue
            self.last_stats = stats
            self._gc_time += stats.elapsed
            self._collections += 1
            if c.pause_threshold > 0:
                # containerd's floor (minimumGCTime): a 0.3 ms collection must not make
                # the interval 15 ms
                avg = max(self._gc_time / self._collections, MINIMUM_GC_TIME)
                self._interval = avg / c.pause_threshold - avg
            self._last = time.monotonic()
            self._next = self._last + self._interval
            for w in waiters:
                if not w.done():
                    w.set_result(stats)
