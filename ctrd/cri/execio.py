"""Output capture for ExecSync: FIFOs the shim writes, read by the daemon into capped buffers.

Lifecycle: ``async with Capture(dir, exec_id, limit) as io`` makes ``<dir>/<exec_id>/`` with
the stdout/stderr FIFOs and opens their read ends (non-blocking, so no writer is needed yet);
pass ``io.stdout``/``io.stderr`` to the exec; after the process exited, ``await
io.drain(timeout)`` waits for both writers to close; leaving the block closes and removes
everything. Output beyond ``limit`` bytes per stream is dropped (the process is not blocked).
"""

from __future__ import annotations

import asyncio
import os
import shutil


class _Reader:
    def __init__(self, path: str, limit: int) -> None:
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.buf = bytearray()
        self.limit = limit
        self.done = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the writer closed: EOF (readable is only signalled once one opened)
            self.close()
            return
        room = self.limit - len(self.buf)
        if room > 0:
            self.buf += data[:room]

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        self.done.set()


class Capture:
    def __init__(self, base: str, exec_id: str, limit: int) -> None:
        self.dir = os.path.join(base, exec_id)
        self.limit = limit
        self._readers: list[_Reader] = []

    @property
    def stdout(self) -> str:
        return os.path.join(self.dir, "stdout")

    @property
    def stderr(self) -> str:
        return os.path.join(self.dir, "stderr")

    async def __aenter__(self) -> "Capture":
        os.makedirs(self.dir, mode=0o700)
        try:
            self._readers = [_Reader(self.stdout, self.limit), _Reader(self.stderr, self.limit)]
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in self._readers)),
                                   timeout)
        except TimeoutError:
            pass  # a grandchild kept the pipe open: return what came

    @property
    def out(self) -> bytes:
        return bytes(self._readers[0].buf)

    @property
    def err(self) -> bytes:
        return bytes(self._readers[1].buf)

    async def __aexit__(self, *exc) -> None:
        for r in self._readers:
            r.close()
        shutil.rmtree(self.dir, ignore_errors=True)
