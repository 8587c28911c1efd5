"""ttrpc: sans-IO framing, our server and client, hostile frames, and a real Go peer."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest

from ctrd import errdefs
from ctrd.api.containerd.services.ttrpc.events.v1 import events_pb2
from ctrd.api.ttrpc import ttrpc_pb2
from ctrd.ttrpc import framing
from ctrd.ttrpc.client import Client
from ctrd.ttrpc.server import Server

EVENTS = events_pb2.DESCRIPTOR.services_by_name["Events"]
EMPTY = "google.protobuf.Empty"


# --- framing ------------------------------------------------------------------------------

def test_frames_survive_any_split():
    frames = [framing.encode(1, framing.TYPE_REQUEST, b"abc"),
              framing.encode(3, framing.TYPE_REQUEST, b""),
              framing.encode(5, framing.TYPE_RESPONSE, os.urandom(70000), flags=0)]
    data = b"".join(frames)
    rng = random.Random(7)
    for _ in range(50):
        d = framing.Decoder()
        got, i = [], 0
        while i < len(data):
            n = rng.randint(1, 9000)
            got += d.feed(data[i:i + n])
            i += n
        assert [(f.stream_id, f.type, len(f.payload)) for f in got] == \
            [(1, 1, 3), (3, 1, 0), (5, 2, 70000)]
        assert d.pending == 0


def test_header_layout_is_big_endian():
    assert framing.encode(7, 2, b"xy", flags=4) == b"\0\0\0\x02\0\0\0\x07\x02\x04xy"


def test_oversized_frame_is_skipped_and_reported():
    d = framing.Decoder()
    big = struct.pack(">IIBB", framing.MAX_PAYLOAD + 1, 9, 1, 0)
    out = d.feed(big + b"x" * 1000)
    assert out == [framing.OversizedFrame(9, 1, framing.MAX_PAYLOAD + 1)]
    rest = framing.MAX_PAYLOAD + 1 - 1000
    assert d.feed(b"y" * rest + framing.encode(11, 1, b"ok")) == \
        [framing.Frame(11, 1, 0, b"ok")]
    with pytest.raises(ValueError, match="exceeds the maximum"):
        framing.encode(1, 1, b"z" * (framing.MAX_PAYLOAD + 1))


# --- server and client --------------------------------------------------------------------

class EventsImpl:
    def __init__(self):
        self.seen = []

    async def Forward(self, request, ctx):
        self.seen.append((ctx.namespace, request.envelope.topic))
        if request.envelope.topic == "/fail":
            raise errdefs.NotFound("no such topic")
        if request.envelope.topic == "/crash":
            raise RuntimeError("bug")
        if request.envelope.topic == "/slow":
            await asyncio.sleep(5)
        from google.protobuf import empty_pb2
        return empty_pb2.Empty()


async def _serve(tmp_path):
    server = Server()
    impl = EventsImpl()
    server.register_service(EVENTS, impl)
    path = str(tmp_path / "t.sock")
    await server.start(path)
    return server, impl, path


def forward(topic):
    req = events_pb2.ForwardRequest()
    req.envelope.topic = topic
    req.envelope.namespace = "ns"
    return req


def test_round_trip_errors_and_concurrency(tmp_path):
    from google.protobuf import empty_pb2

    async def main():
        server, impl, path = await _serve(tmp_path)
        client = await Client.connect(path)
        svc = EVENTS.full_name
        md = {"containerd-namespace-ttrpc": "k8s.io"}
        await client.call(svc, "Forward", forward("/a"), empty_pb2.Empty, metadata=md)
        assert impl.seen == [("k8s.io", "/a")]
        with pytest.raises(errdefs.NotFound, match="no such topic"):
            await client.call(svc, "Forward", forward("/fail"), empty_pb2.Empty)
        with pytest.raises(errdefs.CtrdError, match="bug"):
            await client.call(svc, "Forward", forward("/crash"), empty_pb2.Empty)
        with pytest.raises(errdefs.NotImplemented_, match="Nope"):
            await client.call(svc, "Nope", forward("/a"), empty_pb2.Empty)
        # A slow call does not hold up others on the same connection; timeouts are enforced.
        slow = asyncio.create_task(client.call(svc, "Forward", forward("/slow"),
                                               empty_pb2.Empty, timeout=0.3))
        await asyncio.gather(*(client.call(svc, "Forward", forward(f"/c{i}"), empty_pb2.Empty)
                               for i in range(50)))
        with pytest.raises(errdefs.DeadlineExceeded):
            await slow
        await client.close()
        with pytest.raises(errdefs.Unavailable):
            await client.call(svc, "Forward", forward("/a"), empty_pb2.Empty)
        await server.stop(grace=1)
        assert not os.path.exists(path)

    asyncio.run(main())


def test_hostile_frames_get_errors_and_the_connection_survives(tmp_path):
    async def main():
        server, impl, path = await _serve(tmp_path)
        reader, writer = await asyncio.open_unix_connection(path)
        dec = framing.Decoder()

        async def ask(frame_bytes):
            writer.write(frame_bytes)
            while True:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "server closed the connection"
                frames = dec.feed(data)
                if frames:
                    resp = ttrpc_pb2.Response()
                    resp.ParseFromString(frames[0].payload)
                    return frames[0].stream_id, resp.status.code, resp.status.message

        # Not a ttrpc.Request.
        assert (await ask(framing.encode(1, 1, b"\xff\xff\xff")))[:2] == (1, 3)
        # A Request whose payload is not the method's input type.
        bad = ttrpc_pb2.Request(service=EVENTS.full_name, method="Forward",
                                payload=b"\x0a\xff\xff\xff\xff\x0f")
        sid, code, msg = await ask(framing.encode(3, 1, bad.SerializeToString()))
        assert (sid, code) == (3, errdefs.INVALID_ARGUMENT) and "malformed" in msg
        # A frame type we do not serve, and an oversized frame.
        assert (await ask(framing.encode(5, 9, b"")))[:2] == (5, errdefs.UNIMPLEMENTED)
        header = struct.pack(">IIBB", framing.MAX_PAYLOAD + 10, 7, 1, 0)
        writer.write(header)
        writer.write(b"\0" * (framing.MAX_PAYLOAD + 10))
        sid, code, msg = await ask(b"")
        assert (sid, code) == (7, framing.RESOURCE_EXHAUSTED) and "exceed maximum message size" in msg
        # Still a working connection.
        good = ttrpc_pb2.Request(service=EVENTS.full_name, method="Forward",
                                 payload=forward("/ok").SerializeToString())
        assert (await ask(framing.encode(9, 1, good.SerializeToString())))[:2] == (9, 0)
        writer.close()
        await server.stop(grace=1)

    asyncio.run(main())


@pytest.mark.integration
def test_our_client_against_containerds_go_ttrpc_server(containerd):
    """containerd's own ttrpc socket serves Events.Forward: a real Go ttrpc peer."""
    from google.protobuf import empty_pb2

    async def main():
        client = await Client.connect(containerd.address + ".ttrpc")
        req = forward("/ctrd/test")
        req.envelope.event.type_url = "containerd.events.NamespaceCreate"
        # containerd's own validation answers through ttrpc's status: errors map both ways.
        with pytest.raises(errdefs.InvalidArgument, match="timestamp must be set"):
            await client.call(EVENTS.full_name, "Forward", req, empty_pb2.Empty, timeout=5)
        req.envelope.timestamp.GetCurrentTime()
        await client.call(EVENTS.full_name, "Forward", req, empty_pb2.Empty, timeout=5)
        with pytest.raises(errdefs.NotImplemented_):
            await client.call(EVENTS.full_name, "Nope", req, empty_pb2.Empty, timeout=5)
        await client.close()

    asyncio.run(main())
