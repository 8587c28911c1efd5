"""Unit tests of the streaming pieces that need no daemon: the SPDY/3.1 sans-I/O module, the
token cache, and the streaming server's stream-creation timeout (with a backend that only
records calls)."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest

from ctrd import errdefs
from ctrd.cri.streaming import spdy
from ctrd.cri.streaming.server import RequestCache, StreamingServer


def pair():
    return spdy.Connection(client=False), spdy.Connection(client=True)


def test_dictionary_is_spdy3s():
    # 1423 bytes; its adler32 is the DICTID every SPDY/3 header block's zlib header names
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2
    block = spdy.Codec()._header_block({"streamtype": ["error"]})
    assert block[2:6] == bytes.fromhex("e3c6a7c2")


def test_every_frame_round_trips():
    enc, dec = spdy.Codec(), spdy.Codec()
    frames = [spdy.SynStream(1, {"streamtype": ["stdout"], "port": ["80"]}, spdy.FLAG_FIN,
                             priority=3),
              spdy.SynReply(1, {}), spdy.HeadersFrame(1, {"a": ["1", "2"]}),
              spdy.RstStream(3, spdy.CANCEL), spdy.Settings([(0, 7, 1 << 20)]),
              spdy.Ping(2), spdy.GoAway(5, 0), spdy.WindowUpdate(1, 4096),
              spdy.Data(1, b"x" * 70000, spdy.FLAG_FIN)]
    wire = b"".join(enc.encode(f) for f in frames)
    out = []
    for i in range(0, len(wire), 7):  # in pieces: frames complete across feeds
        out += dec.feed(wire[i:i + 7])
    assert out == frames


def test_hostile_input():
    srv, _ = pair()
    with pytest.raises(spdy.ProtocolError, match="version"):
        srv.receive_data(struct.pack(">HHI", 0x8000 | 2, 1, 10) + b"\0" * 10)
    assert b"\x80\x03\x00\x07" in srv.data_to_send()  # GOAWAY(PROTOCOL_ERROR) queued
    srv, _ = pair()
    with pytest.raises(spdy.ProtocolError, match="too large"):
        srv.receive_data(struct.pack(">HHI", 0x8003, 1, 0xFFFFFF))
    srv, _ = pair()
    with pytest.raises(spdy.ProtocolError):  # a header block that is not zlib
        srv.receive_data(struct.pack(">HHI", 0x8003, 1, 14) + struct.pack(">IIBB", 1, 0, 0, 0)
                         + b"junk")
    srv, _ = pair()
    with pytest.raises(spdy.ProtocolError, match="lowercase"):  # as Go's framer refuses it
        srv.receive_data(_syn_with_raw_header(b"Streamtype", b"x"))


def _syn_with_raw_header(name: bytes, value: bytes) -> bytes:
    raw = struct.pack(">I", 1) + struct.pack(">I", len(name)) + name + \
        struct.pack(">I", len(value)) + value
    z = zlib.compressobj(zdict=spdy.DICTIONARY)
    block = z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH)
    body = struct.pack(">IIBB", 1, 0, 0, 0) + block
    return struct.pack(">HHI", 0x8003, 1, len(body)) + body


def test_stream_rules_and_ping():
    srv, cli = pair()
    sid = cli.open_stream({"streamtype": ["error"]})
    assert isinstance(srv.receive_data(cli.data_to_send())[0], spdy.StreamOpened)
    # a client reusing an id, or using a server id, gets RST PROTOCOL_ERROR
    assert srv.receive_data(cli.codec.encode(spdy.SynStream(sid, {}))) == []
    assert srv.receive_data(cli.codec.encode(spdy.SynStream(4, {}))) == []
    rst = spdy.Codec().feed(srv.data_to_send())
    assert [(f.stream_id, f.status) for f in rst] == [(1, spdy.PROTOCOL_ERROR),
                                                     (4, spdy.PROTOCOL_ERROR)]
    # data on a stream that never existed: INVALID_STREAM
    srv.receive_data(spdy.Codec().encode(spdy.Data(99, b"x")))
    assert spdy.Codec().feed(srv.data_to_send()) == [spdy.RstStream(99, spdy.INVALID_STREAM)]
    # a client ping is echoed; a server ping comes back as acknowledged
    srv.receive_data(spdy.Codec().encode(spdy.Ping(7)))
    assert spdy.Codec().feed(srv.data_to_send()) == [spdy.Ping(7)]
    pid = srv.ping()
    cli.receive_data(srv.data_to_send())
    assert srv.receive_data(cli.data_to_send()) == [spdy.PingAcknowledged(pid)]


def test_flow_control_enforced_once_the_peer_shows_it():
    srv, cli = pair()
    sid = cli.open_stream({"streamtype": ["stdout"]})
    srv.receive_data(cli.data_to_send())
    srv.reply(sid)
    # spdystream never sends WINDOW_UPDATE: no limit then
    assert srv.send_data(sid, b"a" * 100_000) == 100_000
    srv2, cli2 = pair()
    sid = cli2.open_stream({"streamtype": ["stdout"]})
    cli2.settings([(0, spdy.SETTINGS_INITIAL_WINDOW_SIZE, 1000)])
    srv2.receive_data(cli2.data_to_send())
    assert srv2.send_data(sid, b"a" * 5000) == 1000
    assert srv2.send_window(sid) == 0
    events = cli2.receive_data(srv2.data_to_send())
    assert sum(len(e.data) for e in events) == 1000
    cli2.consumed(sid, 1000)  # half the window used: an update goes back
    evs = srv2.receive_data(cli2.data_to_send())
    assert spdy.WindowUpdated(sid, 1000) in evs
    assert srv2.send_data(sid, b"a" * 4000, fin=True) == 1000


def test_request_cache_ttl_single_use_and_bound():
    now = [0.0]
    c = RequestCache(ttl=60, max_in_flight=3, clock=lambda: now[0])
    t1 = c.insert("exec", "r1")
    assert c.consume(t1) == ("exec", "r1") and c.consume(t1) is None
    toks = [c.insert("exec", i) for i in range(3)]
    with pytest.raises(errdefs.ResourceExhausted) as e:
        c.insert("exec", "x")
    # containerd's status text, as the kubelet's streaming package makes it (no kind suffix)
    assert errdefs.to_status(e.value) == (
        errdefs.RESOURCE_EXHAUSTED, "maximum number of in-flight requests exceeded")
    now[0] = 61.0
    assert c.consume(toks[0]) is None  # expired
    c.insert("exec", "y")  # the expired ones made room
    assert len(c) == 1


def test_streams_not_created_in_time_end_the_session():
    calls = []

    class Backend:
        async def exec(self, req, streams):
            calls.append(req)
            return 0

    class Req:
        container_id, cmd, tty, stdin, stdout, stderr = "c", ["true"], False, False, True, True

    async def run():
        from spdy_client import SpdyClient

        srv = StreamingServer(Backend(), "127.0.0.1", 0, creation_timeout=0.3)
        await srv.start()
        try:
            c = await SpdyClient.connect(srv.get_exec(Req()), ["v4.channel.k8s.io"])
            c.open({"streamtype": "error"})  # stdout and stderr never come
            await asyncio.wait_for(c.closed.wait(), 10)
            assert srv.sessions == 0 or await _drained(srv)
        finally:
            await srv.stop()

    asyncio.run(run())
    assert calls == []


async def _drained(srv) -> bool:
    for _ in range(100):
        if srv.sessions == 0:
            return True
        await asyncio.sleep(0.05)
    return False
