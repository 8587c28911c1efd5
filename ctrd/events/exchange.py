"""The daemon's event exchange: services publish, subscribers (Events.Subscribe, tests,
plugins) receive.

Contract: :meth:`Exchange.publish` never blocks and never fails because of a subscriber; a
subscriber that falls more than ``queue_size`` events behind is dropped (its iterator ends
with :class:`SubscriberOverflow`), as a stuck client must not hold the daemon's memory.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from google.protobuf import any_pb2
from google.protobuf.message import Message

from ctrd import identifiers, typeurl
from ctrd.errdefs import InvalidArgument, Unavailable


class SubscriberOverflow(Unavailable):
    pass


@dataclass(frozen=True)
class Envelope:
    timestamp: float  # seconds since the epoch
    namespace: str
    topic: str
    event: any_pb2.Any


def validate_topic(topic: str) -> None:
    if not topic.startswith("/") or len(topic) < 2:
        raise InvalidArgument(f"topic {topic!r} must start with '/' and name something")
    for part in topic[1:].split("/"):
        identifiers.validate(part)


class Exchange:
    def __init__(self, queue_size: int = 1024) -> None:
        self._subscribers: set[asyncio.Queue] = set()
        self._queue_size = queue_size

    def publish(self, namespace: str, topic: str, event: Message | any_pb2.Any) -> Envelope:
        validate_topic(topic)
        identifiers.validate(namespace)
        packed = event if isinstance(event, any_pb2.Any) else typeurl.pack(event)
        return self.forward(Envelope(time.time(), namespace, topic, packed))

    def forward(self, env: Envelope) -> Envelope:
        for q in list(self._subscribers):
            if q.full():
                self._subscribers.discard(q)
                q.put_nowait_overflow = True  # type: ignore[attr-defined]
                continue
            q.put_nowait(env)
        return env

    async def subscribe(self, match: Callable[[Envelope], bool] | None = None
                        ) -> AsyncIterator[Envelope]:
        q: asyncio.Queue = asyncio.Queue(self._queue_size)
        self._subscribers.add(q)
        try:
            while True:
                if getattr(q, "put_nowait_overflow", False) and q.empty():
                    raise SubscriberOverflow("event subscriber fell too far behind")
                env = await q.get()
                if match is None or match(env):
                    yield env
        finally:
            self._subscribers.discard(q)
