"""Events: the exchange (unit), the Events services in-process over gRPC, and the real ``ctr
events`` against ctrd and containerd 1.6 (integration).

Background ``ctr events`` processes run in their own sessions and are killed (SIGKILL to the
process group) in teardown whatever happened; daemons are the conftest fixtures'.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from google.protobuf import any_pb2, empty_pb2

from conftest import CTR, ctr
from ctrd import errdefs
from ctrd.api.containerd.events import container_pb2, namespace_pb2, task_pb2
from ctrd.api.containerd.services.events.v1 import events_pb2 as pb
from ctrd.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_pb
from ctrd.events.exchange import (GO_ZERO_SECONDS, Envelope, Exchange, SubscriberOverflow,
                                  Subscription)

TTRPC_SERVICE = "containerd.services.events.ttrpc.v1.Events"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def nsc(name: str, **labels: str) -> namespace_pb2.NamespaceCreate:
    return namespace_pb2.NamespaceCreate(name=name, labels=labels)


def any_of(type_url: str, value: bytes = b"") -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=value)


def env(ns="n1", topic="/tasks/exit", ts_ns: int | None = 1_700_000_000_123_456_789,
        event: any_pb2.Any | None = None) -> Envelope:
    if event is None:
        event = any_of("containerd.events.TaskExit",
                       task_pb2.TaskExit(container_id="c1", pid=42).SerializeToString())
    return Envelope(ts_ns, ns, topic, event)


async def take(sub: Subscription, n: int, timeout: float = 5) -> list[Envelope]:
    return [await asyncio.wait_for(anext(sub), timeout) for _ in range(n)]


async def drain(sub: Subscription) -> list[Envelope]:
    """What is queued now."""
    return await take(sub, sub.pending)


# ============================================================================================
# The exchange


def test_publish_delivers_an_envelope_with_a_bare_type_url_in_order():
    async def main():
        x = Exchange()
        sub = x.subscribe()
        before = time.time_ns()
        for i in range(100):
            x.publish("default", f"/namespaces/n{i}", nsc(f"n{i}", a="b"))
        got = await take(sub, 100)
        assert [e.topic for e in got] == [f"/namespaces/n{i}" for i in range(100)]
        first = got[0]
        assert first.namespace == "default"
        assert first.event.type_url == "containerd.events.NamespaceCreate"
        assert namespace_pb2.NamespaceCreate.FromString(first.event.value) == nsc("n0", a="b")
        assert before <= first.timestamp_ns <= time.time_ns()
        assert abs(first.timestamp - time.time()) < 5
        assert all(a.timestamp_ns <= b.timestamp_ns for a, b in zip(got, got[1:]))
    run(main())


def test_subscribe_registers_at_once_and_later_subscribers_miss_earlier_events():
    async def main():
        x = Exchange()
        early = x.subscribe()  # not iterated yet: still registered
        x.publish("default", "/a", nsc("one"))
        late = x.subscribe()
        x.publish("default", "/b", nsc("two"))
        assert [e.topic for e in await take(early, 2)] == ["/a", "/b"]
        assert [e.topic for e in await take(late, 1)] == ["/b"]
        assert late.pending == early.pending == 0
    run(main())


def test_an_anys_type_url_is_kept_and_a_message_is_packed():
    async def main():
        x = Exchange()
        sub = x.subscribe()
        e1 = x.publish("ns", "/x", any_of("example.com/Thing", b"\x01"))
        e2 = x.publish("ns", "/y", any_of("type.googleapis.com/containerd.events.NamespaceDelete",
                                          namespace_pb2.NamespaceDelete(name="q")
                                          .SerializeToString()))
        got = await take(sub, 2)
        assert got == [e1, e2]
        assert got[0].event.type_url == "example.com/Thing"
        assert got[1].field(("event", "name")) == "q"
    run(main())


@pytest.mark.parametrize("filters, expected", [
    ((), ["a", "b", "c", "d", "e"]),
    (("",), ["a", "b", "c", "d", "e"]),
    (('topic=="/namespaces/create"',), ["a", "c"]),
    (("namespace==other",), ["c"]),
    (("namespace!=other",), ["a", "b", "d", "e"]),
    (('topic~="^/namespaces/"',), ["a", "b", "c"]),
    (("topic~=/tasks/",), ["d", "e"]),
    (('topic=="/namespaces/create",namespace==default',), ["a"]),          # AND
    (('topic=="/namespaces/update"', "namespace==other"), ["b", "c"]),     # OR
    (("event.name==b",), ["b"]),
    (("event.name",), ["a", "b", "c"]),
    (('event.labels."k.l"==v',), ["a"]),
    (("event.labels.k.l==v",), ["a"]),      # the rest of the path joined with "." is the key
    (("event.labels",), []),                # key "": present in no map
    (("event.labels.other",), []),
    (("event.container_id==c1",), ["d"]),
    (("event.pid==42",), []),               # numbers are not filterable (as containerd)
    (("event.exited_at",), []),             # nor timestamps
    (("event.nope",), []),
    (("timestamp",), []),                   # containerd: unhandled
    (("nope",), []),
    (("event.container_id",), ["d"]),       # "e" has an unknown type: no event fields
])
def test_filters(filters, expected):
    async def main():
        x = Exchange()
        sub = x.subscribe(*filters)
        keys = {}
        keys[id(x.publish("default", "/namespaces/create", nsc("a", **{"k.l": "v"})))] = "a"
        keys[id(x.publish("default", "/namespaces/update",
                          namespace_pb2.NamespaceUpdate(name="b")))] = "b"
        keys[id(x.publish("other", "/namespaces/create", nsc("c")))] = "c"
        keys[id(x.forward(env(ns="default", topic="/tasks/exit")))] = "d"
        keys[id(x.forward(env(ns="default", topic="/tasks/oom",
                              event=any_of("example.com/Unknown", b"\x0a\x02c1"))))] = "e"
        assert [keys[id(e)] for e in await drain(sub)] == expected
    run(main())


def test_event_fields_follow_containerds_generated_adaptors():
    inner = nsc("inner", x="y")
    create = container_pb2.ContainerCreate(
        id="c1", image="img", runtime=container_pb2.ContainerCreate.Runtime(
            name="io.containerd.runc.v2",
            options=any_of("containerd.events.NamespaceCreate", inner.SerializeToString())))
    e = Envelope(1, "default", "/containers/create",
                 any_of("containerd.events.ContainerCreate", create.SerializeToString()))
    f = e.field
    assert f(("event", "id")) == "c1"
    assert f(("event", "runtime", "name")) == "io.containerd.runc.v2"
    assert f(("event", "runtime", "options", "name")) == "inner"     # Any, decoded in turn
    assert f(("event", "runtime", "options", "labels", "x")) == "y"
    assert f(("event", "runtime")) is None
    assert f(("event", "runtime", "options", "nope")) is None
    assert f(("event",)) is None and f(()) is None
    # An unset nested message, a garbage nested Any.
    bare = container_pb2.ContainerCreate(id="c2")
    e2 = Envelope(1, "d", "/c", any_of("containerd.events.ContainerCreate",
                                       bare.SerializeToString()))
    assert e2.field(("event", "runtime", "name")) is None
    bad = container_pb2.ContainerCreate(id="c3", runtime=container_pb2.ContainerCreate.Runtime(
        options=any_of("containerd.events.NamespaceCreate", b"\xff\xff")))
    e3 = Envelope(1, "d", "/c", any_of("containerd.events.ContainerCreate",
                                       bad.SerializeToString()))
    assert e3.field(("event", "runtime", "options", "name")) is None
    # Booleans are "true"/"false", always present; empty strings are absent.
    ev = task_pb2.TaskCheckpointed(container_id="c1", checkpoint="")
    e4 = Envelope(1, "d", "/t", any_of("containerd.events.TaskCheckpointed",
                                       ev.SerializeToString()))
    assert e4.field(("event", "checkpoint")) is None
    from ctrd.api.containerd.events import task_pb2 as t
    io = t.TaskCreate(container_id="c", io=t.TaskIO(stdin="/in", terminal=True))
    e5 = Envelope(1, "d", "/t", any_of("containerd.events.TaskCreate", io.SerializeToString()))
    assert e5.field(("event", "io", "terminal")) == "true"
    assert e5.field(("event", "io", "stdin")) == "/in"
    assert e5.field(("event", "rootfs")) is None        # repeated: not filterable
    # Empty topic/namespace are absent.
    assert Envelope(1, "", "", None).field(("topic",)) is None
    assert Envelope(1, "", "", None).field(("namespace",)) is None


def test_a_filter_that_does_not_parse_is_invalid_argument():
    async def main():
        x = Exchange()
        with pytest.raises(errdefs.InvalidArgument) as e:
            x.subscribe("topic==")
        assert str(e.value) == ("failed parsing subscription filters: filters: parse error: "
                                "[topic==]: expected value or quoted: invalid argument")
        assert x.subscriber_count == 0
    run(main())


def test_a_match_predicate_combines_with_filters():
    async def main():
        x = Exchange()
        sub = x.subscribe("namespace==a", match=lambda e: e.topic.endswith("/keep"))
        for ns in ("a", "b"):
            for t in ("/x/keep", "/x/drop"):
                x.publish(ns, t, nsc("n"))
        assert [(e.namespace, e.topic) for e in await drain(sub)] == [("a", "/x/keep")]
    run(main())


# --- slow subscribers -----------------------------------------------------------------------

def test_a_slow_subscriber_is_dropped_with_an_error_and_others_are_unaffected():
    async def main():
        x = Exchange(queue_size=5)
        slow = x.subscribe()
        fast = x.subscribe()
        got_fast = []
        for i in range(20):
            x.publish("ns", f"/t/e{i}", nsc(f"e{i}"))  # never blocks
            got_fast.append(await anext(fast))
        assert [e.topic for e in got_fast] == [f"/t/e{i}" for i in range(20)]
        assert x.subscriber_count == 1 and slow.closed
        # The slow one gets what was queued, then the error; nothing after.
        assert [e.topic for e in await take(slow, 5)] == [f"/t/e{i}" for i in range(5)]
        with pytest.raises(SubscriberOverflow) as err:
            await anext(slow)
        assert err.value.code == errdefs.UNAVAILABLE
        assert "fell too far behind" in str(err.value)
        with pytest.raises(SubscriberOverflow):  # and it stays failed
            await anext(slow)
    run(main())


def test_queued_bytes_are_bounded_too():
    async def main():
        x = Exchange(queue_size=1000, max_queued_bytes=1 << 20)
        sub = x.subscribe()
        blob = any_of("example.com/Blob", b"x" * (256 << 10))
        for _ in range(10):
            x.publish("ns", "/blob", blob)
        assert sub.closed
        got = 0
        with pytest.raises(SubscriberOverflow):
            async for _ in sub:
                got += 1
        assert got == 3  # 4 x 256 KiB and overhead > 1 MiB
    run(main())


def test_a_single_event_larger_than_the_byte_bound_still_gets_through():
    async def main():
        x = Exchange(max_queued_bytes=1000)
        sub = x.subscribe()
        x.publish("ns", "/big", any_of("example.com/Blob", b"x" * 5000))
        assert len((await anext(sub)).event.value) == 5000
        assert not sub.closed
    run(main())


def test_a_failing_predicate_drops_only_its_subscriber():
    async def main():
        x = Exchange()

        def boom(e):
            raise RuntimeError("bad predicate")

        bad = x.subscribe(match=boom)
        good = x.subscribe()
        x.publish("ns", "/t", nsc("a"))  # does not raise
        assert (await anext(good)).topic == "/t"
        with pytest.raises(errdefs.Unavailable, match="bad predicate"):
            await anext(bad)
        assert x.subscriber_count == 1
    run(main())


# --- unsubscribing --------------------------------------------------------------------------

def test_close_ends_the_iterator_and_wakes_a_waiting_consumer():
    async def main():
        x = Exchange()
        sub = x.subscribe()
        waiting = asyncio.create_task(anext(sub))
        await asyncio.sleep(0.01)
        sub.close()
        with pytest.raises(StopAsyncIteration):
            await waiting
        assert x.subscriber_count == 0
        x.publish("ns", "/t", nsc("a"))
        assert sub.pending == 0
        sub.close()  # idempotent
    run(main())


def test_close_with_an_error_raises_it_to_the_consumer():
    async def main():
        x = Exchange()
        sub = x.subscribe()
        x.publish("ns", "/t", nsc("a"))
        x.close_subscriptions(errdefs.Unavailable("shutting down"))
        with pytest.raises(errdefs.Unavailable, match="shutting down"):
            await anext(sub)
        assert x.subscriber_count == 0
    run(main())


def test_async_with_break_cancel_and_garbage_collection_all_unsubscribe():
    async def main():
        x = Exchange()
        async with x.subscribe() as sub:
            assert x.subscriber_count == 1
        assert x.subscriber_count == 0 and sub.closed

        async def consume():
            async for e in x.subscribe():
                if e.topic == "/stop":
                    break
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        assert x.subscriber_count == 1
        x.publish("ns", "/stop", nsc("a"))
        await task
        gc.collect()
        assert x.subscriber_count == 0

        async def wait_forever():  # the gRPC handler's shape: cancelled by its client
            async with x.subscribe() as sub:
                async for _ in sub:
                    pass
        task = asyncio.create_task(wait_forever())
        await asyncio.sleep(0.01)
        assert x.subscriber_count == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert x.subscriber_count == 0

        x.subscribe("topic==x")  # dropped on the floor
        gc.collect()
        assert x.subscriber_count == 0
    run(main())


def test_publishing_from_threads_is_delivered_on_the_subscribers_loop_in_order():
    async def main():
        x = Exchange()
        sub = x.subscribe()

        def publish_many(tag):
            for i in range(200):
                x.publish("ns", f"/{tag}/e{i}", nsc("a"))

        await asyncio.gather(asyncio.to_thread(publish_many, "a"),
                             asyncio.to_thread(publish_many, "b"))
        got = await take(sub, 400)
        for tag in "ab":
            mine = [e.topic for e in got if e.topic.startswith(f"/{tag}/")]
            assert mine == [f"/{tag}/e{i}" for i in range(200)]
    run(main())


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("namespace, topic, kind, message", [
    ("", "/a", errdefs.FailedPrecondition,
     "failed publishing event: namespace is required: failed precondition"),
    ("B!", "/a", errdefs.InvalidArgument,
     'failed publishing event: namespace validation: identifier "B!" must match '
     "^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$: invalid argument"),
    ("ns", "", errdefs.InvalidArgument, 'envelope topic "": must not be empty: invalid argument'),
    ("ns", "a/b", errdefs.InvalidArgument,
     "envelope topic \"a/b\": must start with '/': invalid argument"),
    ("ns", "/", errdefs.InvalidArgument,
     'envelope topic "/": must have at least one component: invalid argument'),
    ("ns", "/a//b", errdefs.InvalidArgument,
     'envelope topic "/a//b": failed validation on component "": identifier must not be '
     "empty: invalid argument"),
    ("ns", "/a/", errdefs.InvalidArgument, None),
    ("ns", "/a/b c", errdefs.InvalidArgument, None),
    ("ns", "/" + "x" * 77, errdefs.InvalidArgument, None),
])
def test_publish_validates_like_containerd(namespace, topic, kind, message):
    x = Exchange()
    with pytest.raises(kind) as e:
        x.publish(namespace, topic, nsc("a"))
    assert type(e.value) is kind
    if message is not None:
        assert str(e.value) == message


def test_a_huge_bad_topic_is_refused_with_a_bounded_message():
    x = Exchange()
    with pytest.raises(errdefs.InvalidArgument) as e:
        x.publish("ns", "/a" * 1_000_000 + "/B!", nsc("a"))
    assert len(str(e.value)) < 3000


@pytest.mark.parametrize("envelope, message", [
    (env(ns=""), "event envelope has invalid namespace: identifier must not be empty"),
    (env(ns="a/b"), "event envelope has invalid namespace: identifier \"a/b\" must match"),
    (env(topic="tasks"), "envelope topic \"tasks\": must start with '/'"),
    (env(ts_ns=None), "timestamp must be set on forwarded event"),
    (Envelope(1, "n", "/t", None), "event must be set"),
    (env(event=any_of("", b"abc")), "event must have a type URL"),
    (env(event=any_of("containerd.events.TaskExit", b"\xff\xff\xff")),
     'event of type "containerd.events.TaskExit": value is not a valid '
     "containerd.events.TaskExit"),
])
def test_forward_validates_envelopes(envelope, message):
    x = Exchange()
    with pytest.raises(errdefs.InvalidArgument) as e:
        x.forward(envelope)
    assert str(e.value).startswith(message), str(e.value)
    assert str(e.value).endswith(": invalid argument")


def test_forward_accepts_unknown_types_and_the_epoch():
    async def main():
        x = Exchange()
        sub = x.subscribe()
        a = x.forward(env(event=any_of("example.com/Whatever", b"\x00\x01")))
        b = x.forward(env(ts_ns=0))
        c = x.forward(env(ts_ns=-5))  # before 1970 is a time too
        assert await take(sub, 3) == [a, b, c]
    run(main())


def test_envelope_proto_round_trip_keeps_nanoseconds_and_refuses_bad_timestamps():
    e = env(ts_ns=1_700_000_000_123_456_789)
    for cls in (pb.Envelope, ttrpc_pb.Envelope):
        p = e.to_proto(cls)
        assert (p.timestamp.seconds, p.timestamp.nanos) == (1_700_000_000, 123_456_789)
        back = Envelope.from_proto(p)
        assert back == e
    before = env(ts_ns=-1).to_proto()
    assert (before.timestamp.seconds, before.timestamp.nanos) == (-1, 999_999_999)
    unset = pb.Envelope(namespace="n", topic="/t")
    assert Envelope.from_proto(unset).timestamp_ns is None
    assert Envelope.from_proto(unset).event is None
    go_zero = pb.Envelope(namespace="n", topic="/t")
    go_zero.timestamp.seconds = GO_ZERO_SECONDS
    assert Envelope.from_proto(go_zero).timestamp_ns is None
    for s, n in ((GO_ZERO_SECONDS - 1, 0), (253402300800, 0), (0, -1), (0, 10**9)):
        bad = pb.Envelope(namespace="n", topic="/t")
        bad.timestamp.seconds, bad.timestamp.nanos = s, n
        with pytest.raises(errdefs.InvalidArgument, match="invalid timestamp"):
            Envelope.from_proto(bad)


def test_publish_refuses_what_is_not_a_message():
    x = Exchange()
    with pytest.raises(errdefs.InvalidArgument, match="event must be set"):
        x.publish("ns", "/t", None)
    with pytest.raises(TypeError):
        x.publish("ns", "/t", {"not": "a message"})


# ============================================================================================
# The services in-process (gRPC over a unix socket, our ErrorInterceptor)


class _Served:
    def __init__(self, exchange, path):
        self.exchange, self.path = exchange, path

    async def __aenter__(self):
        from grpc import aio

        from ctrd.api.containerd.services.events.v1 import events_pb2_grpc
        from ctrd.services.events import EventsService
        from ctrd.services.grpcutil import ErrorInterceptor

        self.server = aio.server(interceptors=[ErrorInterceptor()])
        self.service = EventsService(self.exchange)
        self.service.register_grpc(self.server)
        self.server.add_insecure_port("unix:" + self.path)
        await self.server.start()
        self.channel = aio.insecure_channel("unix:" + self.path)
        self.stub = events_pb2_grpc.EventsStub(self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()
        await self.server.stop(0)

    async def wait_subscribers(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.exchange.subscriber_count != n:
            assert time.monotonic() < deadline, self.exchange.subscriber_count
            await asyncio.sleep(0.01)


MD = (("containerd-namespace", "default"),)


def test_service_subscribe_publish_and_cancel(tmp_path):
    async def main():
        x = Exchange()
        async with _Served(x, str(tmp_path / "s.sock")) as s:
            call = s.stub.Subscribe(pb.SubscribeRequest(filters=["namespace==default"]),
                                    metadata=MD)
            await s.wait_subscribers(1)
            await s.stub.Publish(pb.PublishRequest(
                topic="/namespaces/create",
                event=any_of("containerd.events.NamespaceCreate", nsc("q").SerializeToString())),
                metadata=MD)
            x.publish("elsewhere", "/namespaces/create", nsc("skipped"))
            await s.stub.Forward(pb.ForwardRequest(envelope=env(ns="default").to_proto()),
                                 metadata=MD)
            first = await call.read()
            second = await call.read()
            assert (first.namespace, first.topic) == ("default", "/namespaces/create")
            assert first.event.type_url == "containerd.events.NamespaceCreate"
            assert first.HasField("timestamp") and first.timestamp.seconds > 1_600_000_000
            assert Envelope.from_proto(second) == env(ns="default")
            call.cancel()
            await s.wait_subscribers(0)   # the client went away: so did the subscription
    run(main())


def test_service_errors(tmp_path):
    import grpc

    async def main():
        x = Exchange()
        async with _Served(x, str(tmp_path / "s.sock")) as s:
            async def code_of(coro):
                try:
                    await coro
                except grpc.aio.AioRpcError as e:
                    return e.code(), e.details()
                return grpc.StatusCode.OK, ""

            good = any_of("containerd.events.NamespaceCreate", nsc("q").SerializeToString())
            assert await code_of(s.stub.Publish(pb.PublishRequest(topic="/a", event=good))) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "failed publishing event: namespace is required: failed precondition")
            c, m = await code_of(s.stub.Publish(pb.PublishRequest(topic="/a", event=good),
                                                metadata=(("containerd-namespace", "a b"),)))
            assert c == grpc.StatusCode.INVALID_ARGUMENT
            assert m.startswith("failed publishing event: namespace validation: identifier")
            assert await code_of(s.stub.Publish(pb.PublishRequest(topic="a", event=good),
                                                metadata=MD)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "envelope topic \"a\": must start with '/': invalid argument")
            assert await code_of(s.stub.Publish(pb.PublishRequest(topic="/a"), metadata=MD)) == (
                grpc.StatusCode.INVALID_ARGUMENT, "event must be set: invalid argument")
            c, m = await code_of(s.stub.Publish(pb.PublishRequest(
                topic="/a", event=any_of("containerd.events.NamespaceCreate", b"\xff")),
                metadata=MD))
            assert c == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in m
            assert await code_of(s.stub.Forward(pb.ForwardRequest(), metadata=MD)) == (
                grpc.StatusCode.INVALID_ARGUMENT, "envelope must be set: invalid argument")
            assert await code_of(s.stub.Forward(pb.ForwardRequest(
                envelope=env(ts_ns=None).to_proto()))) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "timestamp must be set on forwarded event: invalid argument")

            call = s.stub.Subscribe(pb.SubscribeRequest(filters=["topic=="]))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == (
                "subscription error: failed parsing subscription filters: filters: parse "
                "error: [topic==]: expected value or quoted: invalid argument")
            assert x.subscriber_count == 0
    run(main())


def test_service_drops_a_stream_that_falls_behind(tmp_path):
    import grpc

    async def main():
        x = Exchange(queue_size=4)
        async with _Served(x, str(tmp_path / "s.sock")) as s:
            call = s.stub.Subscribe(pb.SubscribeRequest())
            await s.wait_subscribers(1)
            for i in range(10):  # all at once: the stream cannot have sent any yet
                x.publish("ns", f"/t/e{i}", nsc("a"))
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as e:
                while True:
                    got.append((await call.read()).topic)
            assert got == [f"/t/e{i}" for i in range(4)]
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert e.value.details().startswith("subscription error: event subscriber fell "
                                                "too far behind")
            assert x.subscriber_count == 0
    run(main())


def test_service_ends_streams_when_the_daemon_stops_serving(tmp_path):
    import grpc

    async def main():
        x = Exchange()
        async with _Served(x, str(tmp_path / "s.sock")) as s:
            mine = x.subscribe()  # an in-process subscriber is not the service's to end
            call = s.stub.Subscribe(pb.SubscribeRequest())
            await s.wait_subscribers(2)
            await s.service.set_serving(False)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "the daemon is shutting down" in e.value.details()
            assert not mine.closed
            with pytest.raises(grpc.aio.AioRpcError):
                await s.stub.Subscribe(pb.SubscribeRequest()).read()
    run(main())


def test_ttrpc_forward_in_process(tmp_path):
    from ctrd.services.events import EventsService
    from ctrd.ttrpc.client import Client
    from ctrd.ttrpc.server import Server

    async def main():
        x = Exchange()
        server = Server()
        EventsService(x).register_ttrpc(server)
        path = str(tmp_path / "t.sock")
        await server.start(path)
        client = await Client.connect(path)
        try:
            sub = x.subscribe()
            await client.call(TTRPC_SERVICE, "Forward",
                              ttrpc_pb.ForwardRequest(envelope=env().to_proto(ttrpc_pb.Envelope)),
                              empty_pb2.Empty)
            assert await anext(sub) == env()
            with pytest.raises(errdefs.InvalidArgument, match="timestamp must be set"):
                await client.call(TTRPC_SERVICE, "Forward", ttrpc_pb.ForwardRequest(
                    envelope=env(ts_ns=None).to_proto(ttrpc_pb.Envelope)), empty_pb2.Empty)
            with pytest.raises(errdefs.NotImplemented_):
                await client.call(TTRPC_SERVICE, "Publish", ttrpc_pb.ForwardRequest(),
                                  empty_pb2.Empty)
        finally:
            await client.close()
            await server.stop()
    run(main())


# ============================================================================================
# Integration: the real ctr against ctrd and containerd

needs_ctr = pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")

_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \+0000 UTC) ")


class Watcher:
    """``ctr events [FILTER...]`` in the background; its lines as they come."""

    def __init__(self, address: str, *filters: str) -> None:
        self.proc = subprocess.Popen([CTR, "--address", address, "events", *filters],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._pumps = [threading.Thread(target=self._pump, args=(stream, into), daemon=True)
                       for stream, into in ((self.proc.stdout, self.lines),
                                            (self.proc.stderr, self.errors))]
        for t in self._pumps:
            t.start()

    def _pump(self, stream, into) -> None:
        for line in stream:
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float = 10.0, what: str = "a line") -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                finished = not any(t.is_alive() for t in self._pumps)
                if left <= 0 or finished:
                    raise AssertionError(f"ctr events: no {what} in {self.lines!r}; "
                                         f"stderr {self.errors!r}; rc {self.proc.poll()}")
                self._cond.wait(min(left, 0.2))

    def exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def watch():
    """Factory: ``watch(address, *filters)`` starts a Watcher; all are killed in teardown."""
    started: list[Watcher] = []

    def start(address: str, *filters: str) -> Watcher:
        w = Watcher(address, *filters)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


SYNC_NS = "evsync"
SYNC_FILTER = f"event.name=={SYNC_NS}"


def sync(address: str, w: Watcher, tag: str) -> None:
    """Make an event ``w`` must print (labelling namespace evsync) until it does: afterwards
    the subscription is live and everything published before has been printed."""
    deadline = time.monotonic() + 20
    for attempt in range(1000):
        mark = f"{tag}{attempt}"
        r = ctr(address, "namespaces", "label", SYNC_NS, f"mark={mark}")
        assert r.returncode == 0, r.stderr
        try:
            w.wait_for(lambda line: f'"mark":"{mark}"' in line, timeout=0.5, what=mark)
            return
        except AssertionError:
            if time.monotonic() > deadline or w.proc.poll() is not None:
                raise


def payload(lines: list[str]) -> list[str]:
    """Lines without their timestamps, markers left out."""
    out = []
    for line in lines:
        m = _TS.match(line)
        assert m, f"not an event line: {line!r}"
        if f'"name":"{SYNC_NS}"' not in line:
            out.append(line[m.end():])
    return out


NAMESPACE_SCRIPT = [
    "namespaces create evtest a=b c=d",
    "namespaces label evtest a=z",
    "namespaces label evtest a=",
    "namespaces create evtest",          # already exists: no event
    "namespaces rm evtest",
    "namespaces rm evtest",              # not found: no event
]


def _namespace_events(address: str, watch) -> list[str]:
    w = watch(address)
    sync(address, w, "start")
    for line in NAMESPACE_SCRIPT:
        ctr(address, *line.split())
    sync(address, w, "end")
    return payload(w.lines)



def _parse(line: str) -> tuple[str, str, dict]:
    ns, topic, body = line.split(" ", 2)
    return ns, topic, json.loads(body)


@pytest.mark.integration
@needs_ctr
def test_ctr_events_prints_namespace_events(ctrd, watch):
    got = [_parse(line) for line in _namespace_events(ctrd.address, watch)]
    assert [(topic, ev["name"]) for _, topic, ev in got] == [
        ("/namespaces/create", "evtest"), ("/namespaces/update", "evtest"),
        ("/namespaces/update", "evtest"), ("/namespaces/delete", "evtest")]
    assert got[0][2] == {"name": "evtest", "labels": {"a": "b", "c": "d"}}
    assert got[-1] == ("evtest", "/namespaces/delete", {"name": "evtest"})


@pytest.mark.integration
@needs_ctr
def test_namespace_event_topics_and_types_match_containerd(ctrd, containerd, watch):
    theirs = [_parse(line) for line in _namespace_events(containerd.address, watch)]
    ours = [_parse(line) for line in _namespace_events(ctrd.address, watch)]
    assert [(t, sorted(e), e["name"]) for _, t, e in ours] == \
        [(t, sorted(e), e["name"]) for _, t, e in theirs]


@pytest.mark.integration
@needs_ctr
def test_namespace_event_lines_match_containerd(ctrd, containerd, watch):
    theirs = _namespace_events(containerd.address, watch)
    ours = _namespace_events(ctrd.address, watch)
    assert ours == theirs


# --- Forward over ttrpc (what shims do) ------------------------------------------------------

def _ttrpc_forward(address: str, envelopes: list[ttrpc_pb.Envelope]) -> list[object]:
    """Forward each envelope over ttrpc to ``address``; the result or the error of each."""
    from ctrd.ttrpc.client import Client

    async def main():
        client = await Client.connect(address)
        out: list[object] = []
        try:
            for e in envelopes:
                try:
                    out.append(await client.call(TTRPC_SERVICE, "Forward",
                                                 ttrpc_pb.ForwardRequest(envelope=e),
                                                 empty_pb2.Empty, timeout=10))
                except errdefs.CtrdError as err:
                    out.append(err)
        finally:
            await client.close()
        return out

    return run(main())


def _task_envelopes() -> list[ttrpc_pb.Envelope]:
    exited = task_pb2.TaskExit(container_id="c1", id="c1", pid=42, exit_status=3)
    exited.exited_at.seconds, exited.exited_at.nanos = 1_700_000_001, 500_000_000
    events = [
        (1_700_000_000_123_456_789, "/tasks/create",
         task_pb2.TaskCreate(container_id="c1", bundle="/run/b", pid=42,
                             io=task_pb2.TaskIO(stdout="/o", terminal=True))),
        (1_700_000_000_500_000_000, "/tasks/start", task_pb2.TaskStart(container_id="c1",
                                                                        pid=42)),
        (1_700_000_001_000_000_000, "/tasks/exit", exited),
        (0, "/tasks/oom", task_pb2.TaskOOM(container_id="c1")),
    ]
    from ctrd import typeurl
    return [Envelope(ts, "fwd", topic, typeurl.pack(ev)).to_proto(ttrpc_pb.Envelope)
            for ts, topic, ev in events]


def _forwarded_lines(address: str, watch) -> list[str]:
    w = watch(address, "namespace==fwd", SYNC_FILTER)
    sync(address, w, "start")
    results = _ttrpc_forward(address + ".ttrpc", _task_envelopes())
    assert all(isinstance(r, empty_pb2.Empty) for r in results), results
    sync(address, w, "end")
    return [line for line in w.lines if f'"name":"{SYNC_NS}"' not in line]


@pytest.mark.integration
@needs_ctr
def test_ttrpc_forward_shows_up_in_ctr_events(ctrd, watch):
    lines = _forwarded_lines(ctrd.address, watch)
    assert lines[0] == ('2023-11-14 22:13:20.123456789 +0000 UTC fwd /tasks/create '
                        '{"container_id":"c1","bundle":"/run/b","io":{"stdout":"/o",'
                        '"terminal":true},"pid":42}')
    assert lines[1].startswith("2023-11-14 22:13:20.5 +0000 UTC fwd /tasks/start ")
    assert lines[2].startswith("2023-11-14 22:13:21 +0000 UTC fwd /tasks/exit ")
    assert lines[3] == ('1970-01-01 00:00:00 +0000 UTC fwd /tasks/oom '
                        '{"container_id":"c1"}')
    assert len(lines) == 4


@pytest.mark.integration
@needs_ctr
def test_forwarded_events_print_exactly_as_with_containerd(ctrd, containerd, watch):
    assert _forwarded_lines(ctrd.address, watch) == _forwarded_lines(containerd.address, watch)


# --- filters through ctr --------------------------------------------------------------------

@pytest.mark.integration
@needs_ctr
def test_ctr_events_filters(ctrd, watch):
    deletes = watch(ctrd.address, 'topic=="/namespaces/delete"', SYNC_FILTER)
    infra = watch(ctrd.address, "event.labels.team==infra,namespace!=evsync", SYNC_FILTER)
    for w in (deletes, infra):
        sync(ctrd.address, w, "start")
    for line in ["namespaces create a1 team=infra", "namespaces create a2 team=web",
                 "namespaces rm a1", "namespaces rm a2"]:
        assert ctr(ctrd.address, *line.split()).returncode == 0
    for w in (deletes, infra):
        sync(ctrd.address, w, "end")
    assert [(_parse(x)[1], _parse(x)[2]["name"]) for x in payload(deletes.lines)] == [
        ("/namespaces/delete", "a1"), ("/namespaces/delete", "a2")]
    assert [(_parse(x)[1], _parse(x)[2]["name"]) for x in payload(infra.lines)] == [
        ("/namespaces/create", "a1")]


@pytest.mark.integration
@needs_ctr
def test_a_bad_filter_reads_as_containerds(ctrd, containerd):
    def desc(address):
        r = ctr(address, "events", "topic==", timeout=20)
        assert r.returncode == 1
        return re.sub(r"code = \w+ ", "", r.stderr.strip())

    # Same message; ctrd sends InvalidArgument where containerd (unmapped) sends Unknown.
    assert desc(ctrd.address) == desc(containerd.address)
    assert "code = InvalidArgument" in ctr(ctrd.address, "events", "topic==").stderr


# --- hostile publishers -----------------------------------------------------------------------

def _hostile_envelopes() -> dict[str, ttrpc_pb.Envelope]:
    good = _task_envelopes()[2]

    def bad(**changes):
        e = ttrpc_pb.Envelope()
        e.CopyFrom(good)
        for k, v in changes.items():
            if v is None:
                e.ClearField(k)
            else:
                getattr(e, k).CopyFrom(v) if k in ("event", "timestamp") else setattr(e, k, v)
        return e

    go_zero = bad()
    go_zero.timestamp.seconds, go_zero.timestamp.nanos = GO_ZERO_SECONDS, 0
    return {
        "no namespace": bad(namespace=""),
        "bad namespace": bad(namespace="../etc"),
        "no topic": bad(topic=""),
        "relative topic": bad(topic="tasks/exit"),
        "bad topic": bad(topic="/tasks/ex it"),
        "no timestamp": bad(timestamp=None),
        "zero timestamp": go_zero,
    }


@pytest.mark.integration
@needs_ctr
def test_forward_validation_errors_read_as_containerds(ctrd, containerd):
    cases = _hostile_envelopes()
    ours = _ttrpc_forward(ctrd.address + ".ttrpc", list(cases.values()))
    theirs = _ttrpc_forward(containerd.address + ".ttrpc", list(cases.values()))
    for name, o, t in zip(cases, ours, theirs):
        assert isinstance(o, errdefs.InvalidArgument), (name, o)
        assert (type(o), str(o)) == (type(t), str(t)), name


@pytest.mark.integration
@needs_ctr
def test_hostile_forwards_and_publishes_get_errors_and_the_daemon_keeps_serving(ctrd, watch):
    import grpc

    from ctrd.api.containerd.services.events.v1 import events_pb2_grpc

    w = watch(ctrd.address, "namespace==fwd", SYNC_FILTER)
    sync(ctrd.address, w, "start")

    # ttrpc: containerd's checks, plus an event that is missing (containerd 1.6 crashes on
    # that one), has no type, or does not decode as its (known) type.
    hostile = list(_hostile_envelopes().values())
    no_event = ttrpc_pb.Envelope()
    no_event.CopyFrom(_task_envelopes()[0])
    no_event.ClearField("event")
    no_type = ttrpc_pb.Envelope()
    no_type.CopyFrom(no_event)
    no_type.event.value = b"abc"
    garbage = ttrpc_pb.Envelope()
    garbage.CopyFrom(_task_envelopes()[0])
    garbage.event.value = b"\xff" * 64
    results = _ttrpc_forward(ctrd.address + ".ttrpc",
                             hostile + [no_event, no_type, garbage, ttrpc_pb.Envelope()])
    assert all(isinstance(r, errdefs.InvalidArgument) for r in results), results
    assert str(results[-4]) == "event must be set: invalid argument"
    assert str(results[-3]) == "event must have a type URL: invalid argument"
    assert "is not a valid containerd.events.TaskCreate" in str(results[-2])

    # ttrpc: a payload that is not a ForwardRequest at all.
    async def raw():
        from ctrd.ttrpc.client import Client

        class Garbage:
            def SerializeToString(self):
                return b"\xff\xfe\xfd"

        client = await Client.connect(ctrd.address + ".ttrpc")
        try:
            with pytest.raises(errdefs.InvalidArgument, match="malformed"):
                await client.call(TTRPC_SERVICE, "Forward", Garbage(), empty_pb2.Empty,
                                  timeout=10)
        finally:
            await client.close()
    run(raw())

    # gRPC Publish and Forward.
    with grpc.insecure_channel("unix:" + ctrd.address) as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        md = (("containerd-namespace", "fwd"),)
        good = any_of("containerd.events.TaskOOM",
                      task_pb2.TaskOOM(container_id="published").SerializeToString())
        cases = [
            (pb.PublishRequest(topic="/tasks/oom", event=good), (),
             grpc.StatusCode.FAILED_PRECONDITION),
            (pb.PublishRequest(topic="/tasks/oom", event=good),
             (("containerd-namespace", "no/pe"),), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.PublishRequest(topic="oom", event=good), md, grpc.StatusCode.INVALID_ARGUMENT),
            (pb.PublishRequest(topic="/tasks/oom"), md, grpc.StatusCode.INVALID_ARGUMENT),
            (pb.PublishRequest(topic="/tasks/oom", event=any_of("containerd.events.TaskOOM",
                                                                b"\x0a\xff")),
             md, grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for req, metadata, code in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.Publish(req, metadata=metadata, timeout=10)
            assert e.value.code() == code, (req, e.value.details())
        for req in (pb.ForwardRequest(), pb.ForwardRequest(envelope=pb.Envelope(
                namespace="fwd", topic="/t"))):
            with pytest.raises(grpc.RpcError) as e:
                stub.Forward(req, metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # An event of a type ctr does not know is accepted and ctr skips it with a warning.
        stub.Publish(pb.PublishRequest(topic="/custom/thing",
                                       event=any_of("example.com/Thing", b"\x01")),
                     metadata=md, timeout=10)
        stub.Publish(pb.PublishRequest(topic="/tasks/oom", event=good), metadata=md,
                     timeout=10)

    # Still serving: the good event arrives and nothing hostile was printed.
    assert _ttrpc_forward(ctrd.address + ".ttrpc", _task_envelopes()[3:]) == [empty_pb2.Empty()]
    sync(ctrd.address, w, "end")
    lines = [line for line in w.lines if f'"name":"{SYNC_NS}"' not in line]
    assert [_parse(_TS.sub("", line))[1:] for line in lines] == [
        ("/tasks/oom", {"container_id": "published"}),
        ("/tasks/oom", {"container_id": "c1"})]
    assert any("cannot unmarshal an event from Any" in e for e in w.errors), w.errors
    assert w.proc.poll() is None
    assert ctr(ctrd.address, "version").returncode == 0


# --- subscribers come and go ------------------------------------------------------------------

@pytest.mark.integration
@needs_ctr
def test_many_ctr_events_killed_abruptly_leave_the_daemon_serving(ctrd, watch):
    watchers = [watch(ctrd.address) for _ in range(8)]
    survivor = watch(ctrd.address, SYNC_FILTER)
    for w in watchers:
        sync(ctrd.address, w, "start")
    for w in watchers:
        w.kill()
    sync(ctrd.address, survivor, "after")
    assert ctr(ctrd.address, "namespaces", "ls").returncode == 0


@pytest.mark.integration
@needs_ctr
def test_stopping_the_daemon_ends_ctr_events_promptly(ctrd, watch):
    w = watch(ctrd.address)
    sync(ctrd.address, w, "start")
    assert ctrd.stop() == 0
    assert w.exit() == 1
    # The Events service ends its streams with this error as the daemon starts stopping; a
    # stream left to the 10 s grace period would be cut by the server with another error.
    assert any("the daemon is shutting down" in e for e in w.errors), w.errors
