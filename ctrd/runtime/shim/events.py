"""Publishing task events to the daemon: ttrpc ``containerd.services.events.ttrpc.v1.Events/
Forward`` calls to ``TTRPC_ADDRESS``, one at a time and in order.

Publishing never blocks or fails a task operation: :meth:`Publisher.publish` only queues. The
queue is sent on the loop; an event the daemon cannot take (not listening, connection lost, no
answer in time) is retried a few times with back-off and then dropped with a log line, as
containerd's shims do when their daemon is away. An event the daemon answers with an error is
dropped at once (a retry would get the same answer).
"""

from __future__ import annotations

import itertools
import socket
import time
from collections import deque

from ctrd import typeurl
from ctrd.api.containerd.services.ttrpc.events.v1 import events_pb2
from ctrd.api.ttrpc import ttrpc_pb2
from ctrd.runtime.shim import log
from ctrd.runtime.shim.loop import Loop, Timer
from ctrd.ttrpc import framing

SERVICE = "containerd.services.events.ttrpc.v1.Events"
ATTEMPTS = 5
ANSWER_TIMEOUT = 2.0


class _Event:
    __slots__ = ("topic", "payload", "attempts")

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload, self.attempts = topic, payload, 0


class Publisher:
    def __init__(self, loop: Loop, address: str, namespace: str) -> None:
        self.loop = loop
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self._queue: deque[_Event] = deque()
        self._sock: socket.socket | None = None
        self._decoder = framing.Decoder()
        self._ids = itertools.count(1, 2)
        self._inflight: int | None = None  # stream id awaiting its answer
        self._timer: Timer | None = None
        self._retry: Timer | None = None

    def publish(self, topic: str, event) -> None:
        now = time.time_ns()
        env = events_pb2.Envelope(namespace=self.namespace, topic=topic,
                                  event=typeurl.pack(event))
        env.timestamp.seconds, env.timestamp.nanos = divmod(now, 1_000_000_000)
        self._queue.append(_Event(topic, events_pb2.ForwardRequest(envelope=env)
                                  .SerializeToString()))
        log.debug("event queued", topic=topic)
        if self._inflight is None and self._retry is None:
            self.loop.call_soon(self._send)

    @property
    def idle(self) -> bool:
        return not self._queue

    def close(self) -> None:
        for t in (self._timer, self._retry):
            if t is not None:
                t.cancel()
        self._disconnect()
        for ev in self._queue:
            log.warning("event dropped: shim exiting", topic=ev.topic)
        self._queue.clear()

    # -- sending
    def _connect(self) -> socket.socket:
        if self._sock is None:
            if not self.address:
                raise OSError("no TTRPC_ADDRESS")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.setblocking(False)
                s.connect(self.address)  # unix: completes at once, or fails
            except OSError:
                s.close()
                raise
            self._sock = s
            self._decoder = framing.Decoder()
            self.loop.add_reader(s.fileno(), self._readable)
        return self._sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._inflight = None

    def _send(self) -> None:
        self._retry = None
        if self._inflight is not None or not self._queue:
            return
        ev = self._queue[0]
        sid = next(self._ids)
        req = ttrpc_pb2.Request(service=SERVICE, method="Forward", payload=ev.payload,
                                timeout_nano=int(ANSWER_TIMEOUT * 1e9))
        req.metadata.add(key="containerd-namespace-ttrpc", value=self.namespace)
        data = framing.encode(sid, framing.TYPE_REQUEST, req.SerializeToString())
        try:
            sock = self._connect()
            n = sock.send(data)
            if n != len(data):  # a few hundred bytes on a fresh socket: not expected
                raise OSError("short write")
        except OSError as e:
            self._failed(f"{e.strerror or e}")
            return
        self._inflight = sid
        self._timer = self.loop.call_later(ANSWER_TIMEOUT, self._failed, "no answer")

    def _readable(self) -> None:
        try:
            data = self._sock.recv(65536) if self._sock else b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if self._inflight is not None:
                self._failed("connection closed")
            else:
                self._disconnect()
            return
        for frame in self._decoder.feed(data):
            if frame.stream_id != self._inflight or isinstance(frame, framing.OversizedFrame):
                continue
            resp = ttrpc_pb2.Response()
            try:
                resp.ParseFromString(frame.payload)
            except Exception:  # noqa: BLE001
                resp.status.code, resp.status.message = 13, "malformed response"
            ev = self._queue.popleft()
            if resp.status.code != 0:
                log.error("event refused by the daemon", topic=ev.topic,
                          error=resp.status.message)
            else:
                log.debug("event published", topic=ev.topic)
            self._inflight = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._send()

    def _failed(self, why: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._disconnect()
        if not self._queue:
            return
        ev = self._queue[0]
        ev.attempts += 1
        if ev.attempts >= ATTEMPTS:
            self._queue.popleft()
            log.error("event dropped: daemon unreachable", topic=ev.topic, error=why,
                      address=self.address)
            delay = 0.0
        else:
            delay = 0.05 * (2 ** ev.attempts)
        if self._queue:
            self._retry = self.loop.call_later(delay, self._send)
