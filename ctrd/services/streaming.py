"""containerd.services.streaming.v1.Streaming: a client opens a bidirectional stream of
``Any``, names it with a first ``StreamInit``, and daemon-side work (a Transfer) finds it by
that name in the :class:`~ctrd.streaming.manager.StreamManager`.

Lifecycle of one call, as containerd 2.3.4's service: read ``StreamInit`` (within
:data:`INIT_TIMEOUT`: a client that never sends is dropped with DEADLINE_EXCEEDED), register,
answer an ``Empty`` (the client's Create returns on it), then stay open until the user of the
stream closes it or the client goes; either way the name is released.
"""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2
from grpc import aio

from ctrd import errdefs, typeurl
from ctrd.api.containerd.services.streaming.v1 import streaming_pb2 as pb
from ctrd.api.containerd.services.streaming.v1 import streaming_pb2_grpc as pb_grpc
from ctrd.services.grpcutil import namespace
from ctrd.streaming.manager import StreamAborted, StreamManager

INIT_TIMEOUT = 10.0  # seconds a new stream may take to name itself


READ_AHEAD = 8  # messages read ahead of the stream's user (grpc's flow control beyond)
_EOF, _ABORTED = object(), object()


class GRPCStream:
    """One Streaming call as a :class:`~ctrd.streaming.manager.Stream`.

    Reading: on the first ``recv`` a task starts that reads the call into a small queue
    (one task for the stream's life, not one per message: a byte stream is thousands of
    messages); ``close`` empties the queue and leaves an abort marker in it, which ends a
    pending ``recv``."""

    def __init__(self, context: aio.ServicerContext) -> None:
        self._context = context
        self._closed = asyncio.Event()
        self._inbox: asyncio.Queue = asyncio.Queue(READ_AHEAD)
        self._reader: asyncio.Future | None = None
        self._ended: object | None = None  # _EOF or _ABORTED once recv saw it

    async def send(self, msg) -> None:
        if self._closed.is_set():
            raise EOFError("stream closed")
        try:
            await self._context.write(msg)
        except (aio.AbortError, aio.UsageError, RuntimeError) as e:
            raise EOFError(f"stream closed: {e}") from None

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._context.read()
                if msg is aio.EOF:
                    await self._inbox.put(_EOF)
                    return
                await self._inbox.put(msg)
        except (aio.AbortError, aio.UsageError, RuntimeError):
            await self._inbox.put(_ABORTED)

    async def recv(self):
        if self._ended is None and not self._closed.is_set():
            if self._reader is None:
                self._reader = asyncio.ensure_future(self._read_loop())
            item = await self._inbox.get()
            if item is not _EOF and item is not _ABORTED:
                return item
            self._ended = item
        if self._ended is _EOF and not self._closed.is_set():
            raise EOFError("client closed the stream")
        raise StreamAborted("stream closed")

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._reader is not None:
            self._reader.cancel()
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(_ABORTED)

    async def wait_closed(self) -> None:
        await self._closed.wait()


class StreamingService(pb_grpc.StreamingServicer):
    def __init__(self, manager: StreamManager, init_timeout: float = INIT_TIMEOUT) -> None:
        self.manager = manager
        self.init_timeout = init_timeout

    def register_grpc(self, server) -> None:
        pb_grpc.add_StreamingServicer_to_server(self, server)

    async def Stream(self, request_iterator, context):
        ns = namespace(context)
        try:
            first = await asyncio.wait_for(context.read(), self.init_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise errdefs.DeadlineExceeded(
                f"no StreamInit within {self.init_timeout:g}s of opening the stream") from None
        if first is aio.EOF:
            return
        init = typeurl.unpack(first, pb.StreamInit)
        stream = GRPCStream(context)
        self.manager.register(ns, init.id, stream)
        try:
            await context.write(typeurl.pack(empty_pb2.Empty()))
            await stream.wait_closed()
        finally:
            stream.close()
            self.manager.unregister(ns, init.id, stream)
