"""Byte streams over a named stream, with containerd 2.3.4's flow control
(core/transfer/streaming): how an archive travels between ctr and the daemon.

The receiving side grants credit with ``WindowUpdate{update: W}`` whenever what it has
granted and not yet received falls below ``W`` (containerd's :data:`WINDOW`, 64 KiB; the
daemon's import grants :data:`RECEIVE_WINDOW`); the sending side sends
``Data`` of at most :data:`MAX_CHUNK` (32 KiB) and never more than its credit. The sender's
clean end is the client closing its side of the stream (``EOFError`` from ``recv``).

- :class:`StreamReceiver` (import: ctr sends, the daemon receives, as containerd's
  ``ReceiveStream``): ``read()`` gives the next chunk, ``b""`` at the clean end.
- :class:`StreamSender` (export: the daemon sends, as containerd's ``WriteByteStream``):
  ``write()`` blocks until the client's credit allows; ``close()`` ends the stream.
- :class:`BlockingWriter`: a sender as a file object for code in a worker thread (the
  archive writer of :mod:`ctrd.images.archive`).

What a peer may not do (each an error that ends the transfer, never a hang or unbounded
memory): send ``Data`` beyond the credit granted (InvalidArgument), send nothing for
``stall_timeout`` seconds (DeadlineExceeded), send only messages that are not ``Data``
(more than :data:`MAX_IGNORED` in a row: InvalidArgument), go away mid-stream (the stream
aborts: Canceled, never read as a complete archive). A window update that is zero or
negative is ignored (containerd would wrap its counter); credit is capped at
:data:`MAX_CREDIT`.
"""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import CancelledError as FutureCancelled, Future

from google.protobuf import message

from ctrd import errdefs, typeurl
from ctrd.api.containerd.types.transfer import streaming_pb2 as spb
from ctrd.streaming.manager import Stream, StreamAborted

log = logging.getLogger("ctrd.transfer")

MAX_CHUNK = 32 * 1024       # containerd's maxRead
WINDOW = 2 * MAX_CHUNK      # containerd's windowSize
# What the daemon grants when it receives an archive: the grant size is the receiver's
# choice in this protocol (ctr's sender takes any), and containerd's 64 KiB makes ctr wait
# for a window update every second chunk, several times slower (bench/README.md, "Figures the
# code cites"). In flight at most this much.
RECEIVE_WINDOW = 1 << 20
MAX_CREDIT = 1 << 30        # credit a client may grant ahead (int32 in containerd)
MAX_IGNORED = 1024          # non-Data messages in a row a receiver tolerates
LINGER = 5.0                # seconds close() waits for the client to take the last bytes

_DATA = spb.Data.DESCRIPTOR.full_name
_UPDATE = spb.WindowUpdate.DESCRIPTOR.full_name


def _timeout(stall: float | None) -> float | None:
    return stall if stall and stall > 0 else None


class StreamReceiver:
    """The daemon's side of a byte stream the client sends (one reader task at a time)."""

    def __init__(self, stream: Stream, stall_timeout: float | None = None,
                 what: str = "stream", window: int = WINDOW) -> None:
        self._stream = stream
        self._stall = _timeout(stall_timeout)
        self._what = what
        self._grant_size = window
        self._window = 0   # granted and not yet received
        self._eof = False
        self.received = 0

    async def _grant(self) -> None:
        if self._window >= self._grant_size:
            return
        try:
            await self._stream.send(typeurl.pack(spb.WindowUpdate(update=self._grant_size)))
            self._window += self._grant_size
        except EOFError:
            pass  # as containerd: the client may have sent everything and closed already

    async def read(self) -> bytes:
        """The next chunk; ``b""`` once the client closed its side."""
        ignored = 0
        while not self._eof:
            await self._grant()
            try:
                msg = await asyncio.wait_for(self._stream.recv(), self._stall)
            except StreamAborted:
                raise errdefs.Canceled(f"{self._what} ended before the client closed it "
                                       f"(after {self.received} bytes)") from None
            except EOFError:
                self._eof = True
                break
            except (asyncio.TimeoutError, TimeoutError):
                raise errdefs.DeadlineExceeded(
                    f"{self._what}: nothing received for {self._stall:g}s "
                    f"(after {self.received} bytes)") from None
            name = typeurl.name_of(msg)
            if name != _DATA:
                ignored += 1
                if ignored > MAX_IGNORED:
                    raise errdefs.InvalidArgument(
                        f"{self._what}: more than {MAX_IGNORED} messages in a row that are "
                        f"not {_DATA} (last {msg.type_url!r})")
                log.debug("%s: ignoring a %s", self._what, msg.type_url)
                continue
            try:
                data = spb.Data.FromString(msg.value).data
            except message.DecodeError as e:
                raise errdefs.InvalidArgument(f"{self._what}: a Data message that does "
                                              f"not parse: {e}") from None
            if len(data) > self._window:
                raise errdefs.InvalidArgument(
                    f"{self._what}: {len(data)} bytes of Data with {self._window} bytes of "
                    f"window granted")
            self._window -= len(data)
            self.received += len(data)
            if data:
                return data
            ignored = 0
        return b""


class StreamSender:
    """The daemon's side of a byte stream it sends to the client. A task reads the client's
    window updates; :meth:`write` waits for credit. Loop-bound."""

    def __init__(self, stream: Stream, stall_timeout: float | None = None,
                 what: str = "stream") -> None:
        self._stream = stream
        self._stall = _timeout(stall_timeout)
        self._what = what
        self._credit = 0
        self.granted = 0
        self.sent = 0
        self._updated = asyncio.Event()
        self._peer_done = False  # the client will grant nothing more
        self._closed = False
        self._task = asyncio.ensure_future(self._read_updates())

    async def _read_updates(self) -> None:
        try:
            while True:
                try:
                    msg = await self._stream.recv()
                except EOFError:
                    return
                if typeurl.name_of(msg) != _UPDATE:
                    log.debug("%s: ignoring a %s", self._what, msg.type_url)
                    continue
                try:
                    update = spb.WindowUpdate.FromString(msg.value).update
                except message.DecodeError:
                    log.debug("%s: a WindowUpdate that does not parse", self._what)
                    continue
                if update <= 0:
                    log.debug("%s: ignoring a window update of %d", self._what, update)
                    continue
                self._credit = min(self._credit + update, MAX_CREDIT)
                self.granted += update
                self._updated.set()
        finally:
            self._peer_done = True
            self._updated.set()

    async def _wait_credit(self) -> None:
        while self._credit <= 0:
            if self._closed:
                raise errdefs.Canceled(f"{self._what} closed")
            if self._peer_done:
                raise errdefs.Canceled(f"{self._what}: the client stopped reading after "
                                       f"{self.sent} bytes")
            self._updated.clear()
            try:
                await asyncio.wait_for(self._updated.wait(), self._stall)
            except (asyncio.TimeoutError, TimeoutError):
                raise errdefs.DeadlineExceeded(
                    f"{self._what}: the client granted no window for {self._stall:g}s "
                    f"(after {self.sent} bytes)") from None

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await self._wait_credit()
            n = min(MAX_CHUNK, len(view), self._credit)
            try:
                await self._stream.send(typeurl.pack(spb.Data(data=bytes(view[:n]))))
            except EOFError:
                raise errdefs.Canceled(f"{self._what}: the client went away after "
                                       f"{self.sent} bytes") from None
            self._credit -= n
            self.sent += n
            view = view[n:]

    async def close(self, linger: float = LINGER) -> None:
        """End the stream. When the client's window is below :data:`WINDOW` after the last
        bytes, it grants more once it has taken them: wait (at most ``linger`` s) for that
        so ctr's copy to its file is done before the Transfer call returns (containerd
        does not wait, and ctr may exit with the last chunk still in flight)."""
        if self._closed:
            return
        if self.sent and self.granted - self.sent < WINDOW and not self._peer_done:
            granted = self.granted
            deadline = asyncio.get_running_loop().time() + linger
            while self.granted == granted and not self._peer_done:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                self._updated.clear()
                try:
                    await asyncio.wait_for(self._updated.wait(), left)
                except (asyncio.TimeoutError, TimeoutError):
                    break
        self.abort()

    def abort(self) -> None:
        """Close without waiting (a failed transfer)."""
        self._closed = True
        self._task.cancel()
        self._updated.set()
        self._stream.close()


class BlockingWriter(io.RawIOBase):
    """A :class:`StreamSender` as a writable file for a worker thread: each ``write`` runs
    the sender on ``loop`` and returns when the bytes are sent. ``abort()`` (any thread)
    makes the pending and later writes fail with Canceled."""

    def __init__(self, sender: StreamSender, loop: asyncio.AbstractEventLoop) -> None:
        self._sender = sender
        self._loop = loop
        self._pending: Future | None = None
        self._aborted = False

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self._aborted:
            raise errdefs.Canceled("export stream aborted")
        data = bytes(b)
        fut = asyncio.run_coroutine_threadsafe(self._write(data), self._loop)
        self._pending = fut
        try:
            err = fut.result()
        except (asyncio.CancelledError, FutureCancelled):
            raise errdefs.Canceled("export stream aborted") from None
        finally:
            self._pending = None
        if err is not None:
            raise err
        return len(data)

    async def _write(self, data: bytes) -> Exception | None:
        # the error comes back as a value: once abort() cancelled the hand-over, nobody
        # would retrieve it from the task (asyncio would log it as never retrieved)
        try:
            await self._sender.write(data)
        except Exception as e:  # noqa: BLE001 - re-raised in the writing thread
            return e
        return None

    def abort(self) -> None:
        self._aborted = True
        fut = self._pending
        if fut is not None:
            fut.cancel()
