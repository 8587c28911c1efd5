"""The daemon's event exchange: services publish, subscribers (Events.Subscribe, plugins,
tests) receive. containerd's ``events/exchange`` with the same validation and filter
semantics, and a bound on what a slow subscriber may hold.

Publishing::

    exchange.publish(namespace, "/namespaces/create", NamespaceCreate(name=..., labels=...))
    exchange.forward(Envelope(timestamp_ns, namespace, topic, any_event))  # on behalf of others

- :meth:`Exchange.publish` stamps the event with the current time, packs a message into an
  ``Any`` with its bare type URL (``containerd.events.NamespaceCreate``, what ``ctr`` decodes)
  and validates as containerd's ``Publish`` does: the namespace is required
  (FailedPrecondition) and must be an identifier, the topic starts with ``/`` and each of
  its ``/``-separated components is an identifier (InvalidArgument).
- :meth:`Exchange.forward` takes an :class:`Envelope` made elsewhere (a shim's event, the
  Events.Forward call) and validates it as containerd's ``Forward`` does: namespace, topic,
  and a timestamp that is set (Go's zero time, year 1, counts as unset). ctrd also requires
  an event: an ``Any`` with a type URL, whose value decodes if the type is one ctrd knows.
- Both are synchronous, never block and never fail because of a subscriber; they are cheap
  (validated topics and namespaces are cached) and safe to call from worker threads (the
  event is handed to each subscriber's event loop; events published from one thread keep
  their order).

Subscribing::

    async with exchange.subscribe('topic~="^/namespaces/"', "namespace==default") as sub:
        async for env in sub:
            ...

:meth:`Exchange.subscribe` registers at once (nothing published after it returns is missed)
and returns a :class:`Subscription`, an async iterator of :class:`Envelope` in publish order.
Filter strings use containerd's filter language (:mod:`ctrd.filters`); an event is delivered
if it matches *any* of them (none: every event). Field paths, as containerd's envelope
adaptor and its generated ``Field`` methods define them:

- ``topic``, ``namespace`` (absent when empty); ``timestamp`` is not filterable;
- ``event.<field>...``: a field of the decoded event. String fields (absent when empty),
  bool fields (``true``/``false``), ``labels.<key>`` of a ``labels`` map, nested messages
  and ``Any`` fields (decoded in turn) by their field names; numbers, enums, bytes,
  timestamps and repeated fields are not filterable. Unlike containerd, which answers
  ``event.*`` only for its own event types, this works for any message type loaded in the
  process (third-party plugins' events included); an event whose type is unknown or whose
  value does not decode has no ``event.*`` fields.

Filters run when an event is published, so a subscriber's queue holds only what it wants.

Slow subscribers: containerd queues without limit for a slow subscriber. ctrd bounds each
subscription (``queue_size`` events and ``max_queued_bytes`` of event data); one that falls
further behind is dropped: it stops receiving new events, gets the events already queued,
then its iterator raises :class:`SubscriberOverflow` (Unavailable: the client may
resubscribe; the events in between are lost, and it is told so).

Unsubscribing: leave an ``async with`` block or call :meth:`Subscription.close` (a gRPC
stream cancelled by its client ends its subscription that way, in the handler's
``finally``). As a backstop the exchange holds subscribers weakly: an abandoned subscription
unsubscribes when it is garbage collected (late, if a traceback still refers to it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from google.protobuf import any_pb2, descriptor, descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from ctrd import filters, identifiers, typeurl
from ctrd.errdefs import CtrdError, FailedPrecondition, InvalidArgument, Unavailable, quote

__all__ = ["Envelope", "Exchange", "SubscriberOverflow", "Subscription", "validate_envelope",
           "validate_topic"]

log = logging.getLogger("ctrd.events")

# Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds, and the last second that a
# google.protobuf.Timestamp may hold (9999-12-31T23:59:59Z).
GO_ZERO_SECONDS = -62135596800
MAX_SECONDS = 253402300799
_NS = 1_000_000_000

DEFAULT_QUEUE_SIZE = 1024
DEFAULT_MAX_QUEUED_BYTES = 64 << 20
_ENVELOPE_OVERHEAD = 128  # bytes counted per queued envelope besides its event and topic


class SubscriberOverflow(Unavailable):
    """A subscriber fell too far behind and was dropped."""


# --------------------------------------------------------------------------------------------
# Envelope


_UNDECODED: Any = object()


@dataclass(frozen=True, slots=True)
class Envelope:
    """An event as it travels: when, in which namespace, on which topic, and what.

    ``timestamp_ns`` is nanoseconds since the Unix epoch (UTC); ``None`` only in an envelope
    built from a message without one, which :meth:`Exchange.forward` refuses. ``event`` is
    shared by every subscriber: treat it as read-only.
    """

    timestamp_ns: int | None
    namespace: str
    topic: str
    event: any_pb2.Any | None
    _decoded: Any = field(default=_UNDECODED, init=False, repr=False, compare=False)

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch (as a float: nanoseconds are approximate)."""
        return (self.timestamp_ns or 0) / _NS

    @classmethod
    def from_proto(cls, pb: Message) -> "Envelope":
        """From an Envelope message (``containerd.services.events.v1.Envelope`` or the ttrpc
        one): an unset timestamp, or Go's zero time, becomes ``None``."""
        ts: int | None = None
        if pb.HasField("timestamp"):
            s, n = pb.timestamp.seconds, pb.timestamp.nanos
            if not (s == GO_ZERO_SECONDS and n == 0):
                if not (GO_ZERO_SECONDS <= s <= MAX_SECONDS and 0 <= n < _NS):
                    raise InvalidArgument(f"event envelope has an invalid timestamp "
                                          f"({s}s {n}ns)")
                ts = s * _NS + n
        return cls(ts, pb.namespace, pb.topic, pb.event if pb.HasField("event") else None)

    def to_proto(self, cls: type[Message] | None = None) -> Message:
        """As ``cls`` (default ``containerd.services.events.v1.Envelope``)."""
        if cls is None:
            from ctrd.api.containerd.services.events.v1.events_pb2 import Envelope as cls
        pb = cls(namespace=self.namespace, topic=self.topic)
        if self.timestamp_ns is not None:
            pb.timestamp.seconds, pb.timestamp.nanos = divmod(self.timestamp_ns, _NS)
        if self.event is not None:
            pb.event.CopyFrom(self.event)
        return pb

    def decoded(self) -> Message | None:
        """The event as its message type, or None if the type is unknown or the value does
        not decode (computed once, shared by every filter that asks)."""
        d = self._decoded
        if d is _UNDECODED:
            d = _decode_any(self.event) if self.event is not None else None
            object.__setattr__(self, "_decoded", d)
        return d

    def field(self, path: tuple[str, ...]) -> str | None:
        """The filter adaptor: the value at ``path``, or None where absent."""
        if not path:
            return None
        head = path[0]
        if head == "topic":
            return self.topic or None
        if head == "namespace":
            return self.namespace or None
        if head == "event":
            msg = self.decoded()
            return None if msg is None else _message_field(msg, path[1:])
        return None


# --------------------------------------------------------------------------------------------
# Event types and their fields


_EVENT_MODULES = ("container_pb2", "content_pb2", "image_pb2", "namespace_pb2",
                  "snapshot_pb2", "task_pb2")


@functools.cache
def _load_event_types() -> None:
    """containerd's own event messages are always known, whoever imported what."""
    import importlib

    for name in _EVENT_MODULES:
        importlib.import_module(f"ctrd.api.containerd.events.{name}")


@functools.lru_cache(maxsize=512)
def _message_class(name: str) -> type[Message] | None:
    _load_event_types()
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    return GetMessageClass(desc)


def _decode_any(any_: any_pb2.Any) -> Message | None:
    cls = _message_class(typeurl.name_of(any_))
    if cls is None:
        return None
    msg = cls()
    try:
        msg.ParseFromString(any_.value)
    except Exception:  # noqa: BLE001 - DecodeError, RecursionError...: undecodable
        return None
    return msg


_FD = descriptor.FieldDescriptor
_TIMESTAMP = "google.protobuf.Timestamp"
_ANY = "google.protobuf.Any"


def _is_labels(fd: descriptor.FieldDescriptor) -> bool:
    mt = fd.message_type
    return (fd.name == "labels" and mt is not None and mt.GetOptions().map_entry
            and mt.fields_by_name["value"].type == _FD.TYPE_STRING)


def _message_field(msg: Message, path: tuple[str, ...]) -> str | None:
    """containerd's generated ``Field`` method, for any message."""
    while path:
        fd = msg.DESCRIPTOR.fields_by_name.get(path[0])
        if fd is None:
            return None
        if fd.is_repeated:
            if not _is_labels(fd):
                return None
            labels = getattr(msg, fd.name)
            return labels.get(".".join(path[1:])) if labels else None
        if fd.type == _FD.TYPE_STRING:
            return getattr(msg, fd.name) or None
        if fd.type == _FD.TYPE_BOOL:
            return "true" if getattr(msg, fd.name) else "false"
        if fd.type != _FD.TYPE_MESSAGE or fd.message_type.full_name == _TIMESTAMP:
            return None
        if not msg.HasField(fd.name):
            return None
        sub = getattr(msg, fd.name)
        if fd.message_type.full_name == _ANY:
            sub = _decode_any(sub)
            if sub is None:
                return None
        msg, path = sub, path[1:]
    return None


# --------------------------------------------------------------------------------------------
# Validation


_MAX_SHOWN = 1024  # characters of a hostile topic quoted in an error


def _q(s: str) -> str:
    return quote(s if len(s) <= _MAX_SHOWN else s[:_MAX_SHOWN] + "...")


def validate_topic(topic: str) -> str:
    """containerd's topic rules; returns ``topic`` or raises InvalidArgument."""
    if len(topic) <= 256:
        return _validate_topic_cached(topic)
    return _validate_topic(topic)


def _validate_topic(topic: str) -> str:
    if topic == "":
        reason = "must not be empty"
    elif topic[0] != "/":
        reason = "must start with '/'"
    elif len(topic) == 1:
        reason = "must have at least one component"
    else:
        for component in topic[1:].split("/"):
            try:
                identifiers.validate(component)
            except InvalidArgument as e:
                raise InvalidArgument(f"envelope topic {_q(topic)}: failed validation on "
                                      f"component {_q(component)}: {e.detail}") from None
        return topic
    raise InvalidArgument(f"envelope topic {_q(topic)}: {reason}")


_validate_topic_cached = functools.lru_cache(maxsize=1024)(_validate_topic)


@functools.lru_cache(maxsize=1024)
def _validate_namespace(namespace: str) -> str:
    return identifiers.validate(namespace)


def _check_namespace(namespace: str) -> None:
    """What containerd's Publish asks of the caller's namespace (NamespaceRequired)."""
    if not namespace:
        raise FailedPrecondition("failed publishing event: namespace is required")
    try:
        _validate_namespace(namespace)
    except InvalidArgument as e:
        raise InvalidArgument(f"failed publishing event: namespace validation: "
                              f"{e.detail}") from None


def _check_event(event: any_pb2.Any | None) -> Message | None:
    """An event is set, has a type URL, and decodes if its type is known. Returns the
    decoded message (None for a type ctrd does not know)."""
    if event is None:
        raise InvalidArgument("event must be set")
    if not event.type_url:
        raise InvalidArgument("event must have a type URL")
    name = typeurl.name_of(event)
    cls = _message_class(name)
    if cls is None:
        return None
    msg = cls()
    try:
        msg.ParseFromString(event.value)
    except Exception:  # noqa: BLE001
        raise InvalidArgument(f"event of type {_q(event.type_url)}: value is not a valid "
                              f"{name}") from None
    return msg


def validate_envelope(env: Envelope) -> None:
    """What :meth:`Exchange.forward` requires (containerd's ``validateEnvelope``, plus an
    event)."""
    try:
        _validate_namespace(env.namespace)  # only valid names are cached
    except InvalidArgument as e:
        raise InvalidArgument(f"event envelope has invalid namespace: {e.detail}") from None
    validate_topic(env.topic)
    if env.timestamp_ns is None:
        raise InvalidArgument("timestamp must be set on forwarded event")
    decoded = _check_event(env.event)
    if decoded is not None and env._decoded is _UNDECODED:
        object.__setattr__(env, "_decoded", decoded)


# --------------------------------------------------------------------------------------------
# Subscriptions


def _size(env: Envelope) -> int:
    return _ENVELOPE_OVERHEAD + len(env.topic) + (len(env.event.value) + len(env.event.type_url)
                                                  if env.event is not None else 0)


class Subscription:
    """One subscriber's view of the exchange: an async iterator of envelopes.

    Made by :meth:`Exchange.subscribe`; lives on the event loop it was made on. Ends
    (StopAsyncIteration) after :meth:`close`; raises :class:`SubscriberOverflow` (after the
    events already queued) when dropped for falling behind, or the error given to
    :meth:`close`.
    """

    __slots__ = ("_exchange", "_key", "_loop", "_match", "_buf", "_bytes", "_max_events",
                 "_max_bytes", "_waiter", "_error", "_done", "__weakref__")

    def __init__(self, exchange: "Exchange", match: Callable[[Envelope], bool] | None,
                 max_events: int, max_bytes: int) -> None:
        self._exchange = exchange
        self._key = 0
        self._loop = asyncio.get_running_loop()
        self._match = match
        self._buf: deque[Envelope] = deque()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._done = False

    # -- consumer side

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Envelope:
        while not self._buf:
            if self._error is not None:
                raise self._error.with_traceback(None)
            if self._done:
                raise StopAsyncIteration
            fut = self._waiter = self._loop.create_future()
            try:
                await fut
            finally:
                if self._waiter is fut:
                    self._waiter = None
        env = self._buf.popleft()
        self._bytes -= _size(env)
        return env

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once the subscription receives no more events (closed or dropped)."""
        return self._done

    @property
    def pending(self) -> int:
        """Events queued and not yet consumed."""
        return len(self._buf)

    def close(self, error: BaseException | None = None) -> None:
        """Unsubscribe and drop what is queued. With ``error``, the consumer's next read
        raises it (instead of ending). Idempotent; call on the subscription's loop."""
        if error is not None and self._error is None:
            self._error = error
        self._done = True
        self._buf.clear()
        self._bytes = 0
        self._exchange._remove(self._key)
        self._wake()

    # -- exchange side (on the subscription's loop)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _offer(self, env: Envelope) -> None:
        if self._done or (self._match is not None and not self._match(env)):
            return
        size = _size(env)
        if len(self._buf) >= self._max_events or (
                self._buf and self._bytes + size > self._max_bytes):
            self._drop()
            return
        self._buf.append(env)
        self._bytes += size
        if self._waiter is not None:
            self._wake()

    def _drop(self) -> None:
        log.warning("dropping a slow event subscriber",
                    extra={"queued": len(self._buf), "bytes": self._bytes})
        self._error = SubscriberOverflow(
            f"event subscriber fell too far behind (more than {self._max_events} events or "
            f"{self._max_bytes} bytes queued) and was dropped; later events were not "
            f"delivered")
        self._done = True
        self._exchange._remove(self._key)
        self._wake()

    def _fail(self, err: BaseException) -> None:
        self._error = err
        self._done = True
        self._exchange._remove(self._key)
        self._wake()


# --------------------------------------------------------------------------------------------
# The exchange


class Exchange:
    """Publish, forward, subscribe. See the module documentation for the contract."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE,
                 max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        if queue_size < 1 or max_queued_bytes < 1:
            raise ValueError("queue_size and max_queued_bytes must be positive")
        self._queue_size = queue_size
        self._max_bytes = max_queued_bytes
        self._subs: dict[int, weakref.ref[Subscription]] = {}
        self._targets: tuple[weakref.ref[Subscription], ...] = ()
        self._next_key = 0

    # -- publishing

    def publish(self, namespace: str, topic: str,
                event: Message | any_pb2.Any | None) -> Envelope:
        """Publish ``event`` (a message, or an ``Any`` carried as is) on ``topic`` in
        ``namespace``, stamped now. Returns the envelope."""
        _check_namespace(namespace)
        validate_topic(topic)
        if event is None or isinstance(event, any_pb2.Any):
            decoded = _check_event(event)
        elif isinstance(event, Message):
            decoded, event = event, typeurl.pack(event)
        else:
            raise TypeError(f"cannot publish a {type(event).__name__}: not a protobuf message")
        env = Envelope(time.time_ns(), namespace, topic, event)
        if decoded is not None:
            object.__setattr__(env, "_decoded", decoded)
        if self._targets:
            self._broadcast(env)
        return env

    def forward(self, env: Envelope) -> Envelope:
        """Distribute an envelope made elsewhere, after :func:`validate_envelope`."""
        validate_envelope(env)
        if self._targets:
            self._broadcast(env)
        return env

    def _broadcast(self, env: Envelope) -> None:
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for ref in self._targets:
            sub = ref()
            if sub is None:
                continue
            if sub._loop is current:
                self._offer(sub, env)
            else:
                try:
                    sub._loop.call_soon_threadsafe(self._offer, sub, env)
                except RuntimeError:  # its loop is closed: it will never read again
                    self._remove(sub._key)

    @staticmethod
    def _offer(sub: Subscription, env: Envelope) -> None:
        try:
            sub._offer(env)
        except Exception as e:  # noqa: BLE001 - a subscriber's filter must not fail publish
            log.exception("event subscriber failed; dropping it")
            sub._fail(e if isinstance(e, CtrdError)
                      else Unavailable(f"event subscription failed: {e}"))

    # -- subscribing

    def subscribe(self, *filter_strings: str, match: Callable[[Envelope], bool] | None = None,
                  queue_size: int | None = None,
                  max_queued_bytes: int | None = None) -> Subscription:
        """Subscribe to events matching any of ``filter_strings`` (containerd's filter
        language; none: all) and, if given, the predicate ``match``. Must be called on the
        event loop that will consume the subscription. Raises InvalidArgument for a filter
        that does not parse."""
        try:
            flt = filters.parse_all(*filter_strings) if filter_strings else filters.ALWAYS
        except InvalidArgument as e:
            raise InvalidArgument(f"failed parsing subscription filters: {e.detail}") from None
        predicate: Callable[[Envelope], bool] | None
        if flt is filters.ALWAYS:
            predicate = match
        elif match is None:
            predicate = lambda env: flt.match(env.field)  # noqa: E731
        else:
            predicate = lambda env: flt.match(env.field) and match(env)  # noqa: E731
        sub = Subscription(self, predicate, queue_size or self._queue_size,
                           max_queued_bytes or self._max_bytes)
        self._next_key += 1
        sub._key = key = self._next_key
        self._subs[key] = weakref.ref(sub, lambda _, key=key: self._remove(key))
        self._targets = tuple(self._subs.values())
        return sub

    def _remove(self, key: int) -> None:
        if self._subs.pop(key, None) is not None:
            self._targets = tuple(self._subs.values())

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def close_subscriptions(self, error: BaseException | None = None,
                            subscriptions: Iterable[Subscription] | None = None) -> None:
        """End ``subscriptions`` (default: all), with ``error`` if given (e.g. on shutdown)."""
        targets = list(subscriptions) if subscriptions is not None else \
            [s for r in self._targets if (s := r()) is not None]
        for sub in targets:
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if sub._loop is current:
                sub.close(error)
            else:
                try:
                    sub._loop.call_soon_threadsafe(sub.close, error)
                except RuntimeError:
                    self._remove(sub._key)
