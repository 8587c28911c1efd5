"""The output of a container that has no log file, kept readable for attach.

A container whose config names a ``log_path`` has its output written by the shim into the
kubelet's log file, and attach follows that file (:mod:`.backend`). A container without one
(crictl, critest, any client that does not ask for logs) would otherwise write into
``/dev/null``; containerd instead always hands the task FIFOs its CRI plugin reads and fans
out to every attach (``internal/cri/io.ContainerIO``). This module does that for the
log-less case:

- :func:`fifo_paths` -- where the FIFOs live: ``<state>/containers/<id>/{stdout,stderr}``
  (no ``stderr`` with a tty: the terminal carries both), beside the stdin FIFO.
- :class:`OutputRelay` -- made before the task is created (the read ends are opened here,
  ``O_RDONLY|O_NONBLOCK``, so the shim's own open never waits), or again after a daemon
  restart for a running container (the process's fds 1-2 are the FIFOs opened read-write by
  the shim, so while no daemon reads, output waits in the pipe, never ``EPIPE``). It reads
  both FIFOs for the container's life, drops what nobody is attached to (containerd
  does the same), and ends at EOF (every process holding the FIFOs gone).
- :meth:`OutputRelay.subscribe` -- one attach: a :class:`Subscription` that gets every
  chunk read from now on, tagged ``stdout``/``stderr``, then ``None`` at the end. A
  subscriber that falls more than :data:`SUB_LIMIT` bytes behind pauses the relay until it
  caught up (containerd's writer group blocks on a slow writer the same way), so a slow
  client slows the container's output, it does not lose it nor grow the daemon.

Lifecycle: ``relay = OutputRelay(dir, tty)``; ``relay.start()`` on the loop; a relay ends by
itself at EOF; ``relay.close()`` (idempotent) stops it and closes the FIFOs' read ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import dataclass, field

log = logging.getLogger("ctrd.cri.streaming")

CHUNK = 64 * 1024
SUB_LIMIT = 1 << 20  # bytes one subscriber may lag before the relay waits for it


def fifo_paths(state_dir: str, container_id: str, tty: bool) -> tuple[str, str]:
    """(stdout, stderr) FIFO paths of a log-less container; stderr is "" with a tty."""
    d = os.path.join(state_dir, "containers", container_id)
    return os.path.join(d, "stdout"), ("" if tty else os.path.join(d, "stderr"))


def _open_reader(path: str) -> int:
    """The read end of the FIFO at ``path``, made when missing (mode 0600)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a fifo")
    return fd


@dataclass(eq=False)  # hashed by identity: relays keep a set of them
class Subscription:
    """One attach's view of the output: ``await get()`` -> (stream, data), or None once the
    output ended (or the relay closed)."""

    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    buffered: int = 0
    space: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.space.set()

    def put(self, item: tuple[str, bytes] | None) -> None:
        if item is not None:
            self.buffered += len(item[1])
            if self.buffered >= SUB_LIMIT:
                self.space.clear()
        self.queue.put_nowait(item)

    async def get(self) -> tuple[str, bytes] | None:
        item = await self.queue.get()
        if item is not None:
            self.buffered -= len(item[1])
            if self.buffered < SUB_LIMIT:
                self.space.set()
        else:
            self.queue.put_nowait(None)  # the end stays the end for a later get()
        return item


class OutputRelay:
    """The read side of a log-less container's stdout/stderr FIFOs (see the module doc)."""

    def __init__(self, state_dir: str, container_id: str, tty: bool) -> None:
        self.stdout_path, self.stderr_path = fifo_paths(state_dir, container_id, tty)
        self.container_id = container_id
        self._fds: dict[str, int] = {}
        self._subs: set[Subscription] = set()
        self._tasks: list[asyncio.Task] = []
        self.done = asyncio.Event()
        try:
            self._fds["stdout"] = _open_reader(self.stdout_path)
            if self.stderr_path:
                self._fds["stderr"] = _open_reader(self.stderr_path)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Start reading (on the running loop)."""
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._pump(name, fd))
                           for name, fd in self._fds.items()]
            asyncio.ensure_future(self._wait_all())

    async def _wait_all(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._finish()

    def _finish(self) -> None:
        if not self.done.is_set():
            self.done.set()
            for sub in list(self._subs):
                sub.put(None)

    def subscribe(self) -> Subscription:
        sub = Subscription()
        if self.done.is_set():
            sub.put(None)
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.space.set()  # never leave the relay waiting on a subscriber that left

    async def _readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            loop.remove_reader(fd)

    async def _pump(self, name: str, fd: int) -> None:
        # Before the first writer came, read() says EOF at once: wait for poll first (Linux
        # reports a FIFO that never had a writer as not readable, and POLLHUP once the
        # writers that came have gone).
        while True:
            await self._readable(fd)
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError as e:
                log.debug("%s of container %s: %s", name, self.container_id, e)
                return
            if not data:
                return
            for sub in list(self._subs):
                sub.put((name, data))
            for sub in list(self._subs):
                if not sub.space.is_set():
                    await sub.space.wait()

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}
        self._finish()


class Relays:
    """The relays of a CRI runtime's log-less containers, by container id."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._relays: dict[str, OutputRelay] = {}

    def open(self, container_id: str, tty: bool) -> OutputRelay:
        """A started relay for the container (its FIFOs made when missing); one that had
        ended is replaced."""
        old = self._relays.get(container_id)
        if old is not None and not old.done.is_set():
            return old
        relay = OutputRelay(self.state_dir, container_id, tty)
        relay.start()
        self._relays[container_id] = relay
        return relay

    def reopen(self, container_id: str) -> OutputRelay | None:
        """After a daemon restart: the relay of a running container whose output FIFOs
        exist (a container with a log file has none; tty: no stderr FIFO). A failure is
        logged: the container still runs, attach then has no output."""
        out, err = fifo_paths(self.state_dir, container_id, False)
        if not os.path.exists(out):
            return None
        try:
            return self.open(container_id, tty=not os.path.exists(err))
        except OSError as e:
            log.warning("container %s: reopen its output FIFOs: %s", container_id, e)
            return None

    def get(self, container_id: str) -> OutputRelay | None:
        return self._relays.get(container_id)

    def close(self, container_id: str) -> None:
        relay = self._relays.pop(container_id, None)
        if relay is not None:
            relay.close()

    def close_all(self) -> None:
        for cid in list(self._relays):
            self.close(cid)
