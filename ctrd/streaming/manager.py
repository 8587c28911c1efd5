"""The stream manager: streams by namespace and name, for as long as their client keeps them.

Contract:
- A :class:`Stream` carries ``google.protobuf.Any`` messages both ways: ``send`` and ``recv``
  may run at the same time, one of each; ``close`` ends it for both (the client sees the end
  of its stream) and is idempotent. ``recv`` raises :class:`EOFError` when the client closed
  its side (a clean end: ctr's byte streams end so), :class:`StreamAborted` (an EOFError)
  when the stream ended otherwise: closed here, or its client went away. A byte stream
  cut short must not read as a complete one.
- :meth:`StreamManager.register` names a stream within a namespace (a name taken is
  AlreadyExists); it is unregistered when closed or when its client goes. ``get`` hands it
  to one user (a Transfer), which closes it when done, as containerd's transfer service does.
- At most :data:`MAX_STREAMS` streams are open at once: a client that opens streams and never
  uses them cannot grow the daemon without bound (ResourceExhausted beyond it).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from google.protobuf import any_pb2

from ctrd import errdefs

MAX_STREAMS = 1024
MAX_NAME = 256


class StreamAborted(EOFError):
    """The stream ended without its client closing its side: closed here, or the client
    went away (its call was cancelled)."""


class Stream(Protocol):
    async def send(self, msg: any_pb2.Any) -> None: ...

    async def recv(self) -> any_pb2.Any: ...

    def close(self) -> None: ...


def validate_name(name: str) -> str:
    """A stream name: non-empty, at most :data:`MAX_NAME` printable characters (containerd's
    clients use ``<prefix>-<nanoseconds>-<base64>``)."""
    if not name:
        raise errdefs.InvalidArgument("stream id must not be empty")
    if len(name) > MAX_NAME:
        raise errdefs.InvalidArgument(f"stream id is {len(name)} characters, more than "
                                      f"{MAX_NAME}")
    if not name.isprintable():
        raise errdefs.InvalidArgument(f"stream id {name!r} has unprintable characters")
    return name


class StreamManager:
    """Streams by (namespace, name). Loop-bound: call from the daemon's event loop."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self._streams: dict[tuple[str, str], Stream] = {}
        self._max = max_streams

    def register(self, ns: str, name: str, stream: Stream) -> None:
        key = (ns, validate_name(name))
        if key in self._streams:
            raise errdefs.AlreadyExists(f"stream {name!r}")
        if len(self._streams) >= self._max:
            raise errdefs.ResourceExhausted(f"{self._max} streams are open; close some first")
        self._streams[key] = stream

    def unregister(self, ns: str, name: str, stream: Stream) -> None:
        if self._streams.get((ns, name)) is stream:
            del self._streams[(ns, name)]

    def get(self, ns: str, name: str) -> Stream:
        try:
            return self._streams[(ns, name)]
        except KeyError:
            raise errdefs.NotFound(f"stream {name!r}") from None

    def __len__(self) -> int:
        return len(self._streams)


class QueueStream:
    """An in-process :class:`Stream` pair end (tests, and daemon-internal users): what one
    side sends the other receives."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[any_pb2.Any | None] = asyncio.Queue()
        self.peer: QueueStream | None = None
        self.closed = False

    @classmethod
    def pair(cls) -> tuple["QueueStream", "QueueStream"]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    async def send(self, msg: any_pb2.Any) -> None:
        if self.closed or self.peer is None or self.peer.closed:
            raise EOFError("stream closed")
        self.peer.inbox.put_nowait(msg)

    async def recv(self) -> any_pb2.Any:
        """The peer's close reads as the client closing its side (EOFError); this end's own
        close as an abort (:class:`StreamAborted`)."""
        if self.closed:
            raise StreamAborted("stream closed")
        msg = await self.inbox.get()
        if msg is None:
            if self.closed:
                raise StreamAborted("stream closed")
            raise EOFError("stream closed by its peer")
        return msg

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.inbox.put_nowait(None)
            if self.peer is not None:
                self.peer.inbox.put_nowait(None)
