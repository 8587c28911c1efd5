"""The stall rule of registry transfers, enforced on the socket by a watchdog thread.

A socket timeout alone does not bound a transfer: every ``recv`` that gets one byte within
the timeout restarts it, so a registry that trickles its headers, a chunk-size line or its
body a byte per second would hold a pull for days. A :class:`Guard` measures the time its
reader spends *waiting* on the registry (inside a read, not while the caller writes what it
got to disk) and the payload bytes that wait brought:

- ``strict`` phases (the response headers, draining a body before reusing the connection,
  an error body): the phase must end within ``timeout`` seconds of waiting;
- the body: every ``timeout`` seconds of waiting must bring at least ``required`` bytes
  (fewer remaining bytes are enough), else it is a stall.

Lifecycle: ``Guard(timeout, required)``; :meth:`Guard.attach` gives it the socket (the
connection does, when it sends a request: :mod:`ctrd.remotes.transport`) and arms it; the
reader brackets each wait with :meth:`Guard.enter` / :meth:`Guard.leave`; :meth:`Guard.disarm`
when the response is done with (before its connection goes back to the pool). When the rule is
broken the watchdog shuts the socket down (the blocked read returns at once, an EOF or an
error) and sets :attr:`Guard.fired` to the reason; the reader reports that reason.
"""

from __future__ import annotations

import math
import socket
import threading
import time

TICK_MAX = 0.5   # seconds between the watchdog's checks, at most
TICK_MIN = 0.02


class Guard:
    """One response's stall rule; see the module doc. Thread-safe."""

    def __init__(self, timeout: float, required: float = 1, url: str = "") -> None:
        self.timeout, self.required, self.url = timeout, required, url
        self.remaining: int | None = None  # payload bytes still expected (None: unknown)
        self.fired = ""
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._strict = True    # the headers come first
        self._waited = 0.0     # seconds of waiting in this window, finished reads
        self._bytes = 0        # payload bytes in this window
        self._entered: float | None = None

    @property
    def tick(self) -> float:
        return min(TICK_MAX, max(TICK_MIN, self.timeout / 8))

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock`` (a plain or TLS socket) from now on."""
        if not isinstance(sock, socket.socket) or math.isinf(self.timeout):
            return  # TLS-in-TLS wrappers are not sockets: the socket timeout still applies
        with self._lock:
            self._sock = sock
        WATCHDOG.add(self)

    def disarm(self) -> None:
        """Stop watching (the socket may then go back to the pool)."""
        WATCHDOG.remove(self)
        with self._lock:
            self._sock = None

    def enter(self, strict: bool = False) -> None:
        """A read starts waiting; ``strict``: this phase must end within ``timeout``."""
        with self._lock:
            if strict != self._strict:
                self._strict, self._waited, self._bytes = strict, 0.0, 0
            self._entered = time.monotonic()

    def leave(self, n: int = 0) -> None:
        """The read returned ``n`` payload bytes."""
        with self._lock:
            if self._entered is not None:
                self._waited += time.monotonic() - self._entered
                self._entered = None
            self._bytes += n
            if self.remaining is not None:
                self.remaining -= n
            if not self._strict and self._waited >= self.timeout and \
                    self._bytes >= self._need():
                self._waited, self._bytes = 0.0, 0

    def _need(self) -> float:
        if self.remaining is not None:
            return min(self.required, self.remaining + self._bytes)
        return self.required

    def check(self, now: float) -> bool:
        """(watchdog) Whether the rule is broken; if so shut the socket down."""
        with self._lock:
            waited = self._waited + (now - self._entered if self._entered is not None else 0)
            if waited < self.timeout:
                return False
            if self._strict:
                self.fired = f"no answer within {self.timeout:g}s (transfer stalled)"
            elif self._entered is not None and now - self._entered >= self.timeout:
                self.fired = f"no data for {self.timeout:g}s (transfer stalled)"
            elif self._bytes < self._need():
                self.fired = (f"{self._bytes} bytes in {waited:.1f}s, below "
                              f"{self._need():.0f} bytes per {self.timeout:g}s "
                              "(transfer stalled)")
            else:  # enough: a new window
                self._waited, self._bytes = 0.0, 0
                if self._entered is not None:
                    self._entered = now
                return False
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                # socket.socket's own shutdown: SSLSocket's would drop its SSL object under
                # the reading thread's feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        return True


class _Watchdog:
    """The thread that checks every armed guard each tick (it sleeps while none is)."""

    def __init__(self) -> None:
        self._guards: set[Guard] = set()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, g: Guard) -> None:
        with self._cv:
            self._guards.add(g)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ctrd-stall-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def remove(self, g: Guard) -> None:
        # Under the lock: once this returns, no check of ``g`` is running or will run.
        with self._cv:
            self._guards.discard(g)

    def _run(self) -> None:
        with self._cv:
            while True:
                while not self._guards:
                    self._cv.wait()
                now = time.monotonic()
                for g in list(self._guards):
                    if g.check(now):
                        self._guards.discard(g)
                if self._guards:
                    self._cv.wait(min(g.tick for g in self._guards))


WATCHDOG = _Watchdog()
