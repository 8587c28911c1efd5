"""Progress events of a transfer, sent to the client's progress stream as containerd sends
them (``containerd.types.transfer.Progress``: event, name, parents, progress, total, desc).

:class:`ProgressSender` may be called from any thread (the pull pipeline runs in worker
threads); events queue to one sender task on the loop. The queue is bounded: a client that
does not read its progress stream costs at most :data:`MAX_QUEUED` events, then the oldest
are dropped (progress is advisory; the transfer's result is its RPC's answer). ``close``
sends what is queued, then closes the stream, which ends the client's progress reader.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Iterable

from ctrd import typeurl
from ctrd.api.containerd.types import descriptor_pb2
from ctrd.api.containerd.types.transfer import progress_pb2

log = logging.getLogger("ctrd.transfer")

MAX_QUEUED = 4096


class ProgressSender:
    def __init__(self, stream=None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._stream = stream  # None once the client stopped reading
        self._owned = stream   # closed by close(), whatever happened
        self._loop = loop or asyncio.get_running_loop()
        self._queue: collections.deque = collections.deque(maxlen=MAX_QUEUED)
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.ensure_future(self._run()) if stream is not None else None

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def __call__(self, event: str, name: str = "", *, parents: Iterable[str] = (),
                 progress: int = 0, total: int = 0,
                 desc: descriptor_pb2.Descriptor | None = None) -> None:
        """Queue one event (thread-safe, never blocks)."""
        if self._stream is None:
            return
        msg = progress_pb2.Progress(event=event, name=name, parents=list(parents),
                                    progress=progress, total=total, desc=desc)
        self._queue.append(msg)
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is gone (daemon stopping)
            pass

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                msg = self._queue.popleft()
                try:
                    await self._stream.send(typeurl.pack(msg))
                except EOFError:
                    self._queue.clear()
                    self._stream = None  # the client stopped reading: drop the rest
                    return
            if self._closing:
                return

    async def close(self) -> None:
        """Flush queued events, then close the stream (the client's reader ends)."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)
        except (asyncio.TimeoutError, TimeoutError):
            self._task.cancel()
            log.debug("progress stream did not drain within 5s; closing it")
        self._stream = None
        if self._owned is not None:
            self._owned.close()
