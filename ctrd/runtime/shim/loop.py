"""A minimal single-threaded epoll event loop for the shim.

Lifecycle: ``Loop()``, register fd callbacks (:meth:`add_reader`/:meth:`add_writer`), timers
(:meth:`call_later`) and signal handlers (:meth:`add_signal_handler`), :meth:`run` until
:meth:`stop`. Callbacks run one at a time on the loop's thread; an exception in a callback is
logged and does not stop the loop. Signals arrive through the interpreter's wakeup fd, so a
handler runs as an ordinary callback (never inside a half-finished operation).
"""

from __future__ import annotations

import heapq
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable

from ctrd.runtime.shim import log


class Timer:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable, args: tuple) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: "Timer") -> bool:
        return self.when < other.when


class Loop:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._timers: list[Timer] = []
        self._ready: deque[tuple[Callable, tuple]] = deque()
        self._signals: dict[int, Callable[[], None]] = {}
        self._sig_r = -1
        self._wake_r = self._wake_w = -1
        self._running = False

    # -- fds
    def _update(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | \
               (select.EPOLLOUT if fd in self._writers else 0)
        try:
            if mask:
                try:
                    self._ep.modify(fd, mask)
                except FileNotFoundError:
                    self._ep.register(fd, mask)
            else:
                self._ep.unregister(fd)
        except (FileNotFoundError, OSError):
            pass  # already closed: epoll forgot it

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    # -- callbacks and timers
    def call_soon(self, callback: Callable, *args) -> None:
        self._ready.append((callback, args))

    def call_later(self, delay: float, callback: Callable, *args) -> Timer:
        t = Timer(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, t)
        return t

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        """From another thread: run ``callback(*args)`` on the loop. (deque.append is atomic;
        the byte on the wake-up pipe ends the loop's poll.)"""
        self._ready.append((callback, args))
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: the loop wakes up anyway

    def enable_threads(self) -> None:
        """Make :meth:`call_soon_threadsafe` wake the loop (call on the loop's thread before
        starting a thread that uses it)."""
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.add_reader(self._wake_r, self._drain_wake)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- signals
    def add_signal_handler(self, sig: int, callback: Callable[[], None]) -> None:
        if self._sig_r < 0:
            self._sig_r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.add_reader(self._sig_r, self._read_signals)
        self._signals[sig] = callback
        # A Python-level handler installs the C handler that writes to the wakeup fd.
        signal.signal(sig, _ignore)

    def _read_signals(self) -> None:
        try:
            data = os.read(self._sig_r, 4096)
        except BlockingIOError:
            return
        for sig in set(data):
            cb = self._signals.get(sig)
            if cb is not None:
                cb()

    # -- running
    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self._run_once()

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run until ``done()`` or ``timeout`` seconds passed; returns ``done()``."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self._run_once(max_wait=max(0.0, deadline - time.monotonic()))
        return done()

    def _run_once(self, max_wait: float | None = None) -> None:
        timeout = -1.0 if max_wait is None else max_wait
        if self._ready:
            timeout = 0
        elif self._timers:
            wait = max(0.0, self._timers[0].when - time.monotonic())
            timeout = wait if timeout < 0 else min(timeout, wait)
        for fd, ev in self._ep.poll(timeout):
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                cb = self._readers.get(fd)
                if cb is not None:
                    self._safe(cb, ())
            if ev & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
                cb = self._writers.get(fd)
                if cb is not None:
                    self._safe(cb, ())
            if ev & (select.EPOLLHUP | select.EPOLLERR) and fd not in self._readers \
                    and fd not in self._writers:
                self._update(fd)
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            t = heapq.heappop(self._timers)
            if not t.cancelled:
                self._ready.append((t.callback, t.args))
        for _ in range(len(self._ready)):
            cb, args = self._ready.popleft()
            self._safe(cb, args)

    @staticmethod
    def _safe(cb: Callable, args: tuple) -> None:
        try:
            cb(*args)
        except Exception as e:  # noqa: BLE001 - one failing callback must not stop the shim
            log.error("callback failed", error=repr(e), trace=_trace(e))

    def close(self) -> None:
        if self._sig_r >= 0:
            signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._ep.close()


def _ignore(signum, frame) -> None:
    pass


def _trace(e: BaseException) -> str:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
