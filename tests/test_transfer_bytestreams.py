"""Byte streams with containerd's flow control (ctrd.transfer.bytestreams) over an in-process
QueueStream pair: the peer here plays ctr's side (containerd's SendStream / ReceiveStream
logic, written out), the daemon's side is the code under test."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ctrd import errdefs, typeurl
from ctrd.api.containerd.types.transfer import streaming_pb2 as spb
from ctrd.streaming.manager import QueueStream
from ctrd.transfer import bytestreams as bs


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def data(b: bytes):
    return typeurl.pack(spb.Data(data=b))


def update(n: int):
    return typeurl.pack(spb.WindowUpdate(update=n))


async def client_send(peer: QueueStream, payload: bytes) -> list[int]:
    """containerd's SendStream: send within the window granted; returns the chunk sizes."""
    sizes, remaining, off = [], 0, 0
    while off < len(payload):
        while remaining <= 0:
            msg = typeurl.unpack(await peer.recv(), spb.WindowUpdate)
            remaining += msg.update
        n = min(bs.MAX_CHUNK, remaining, len(payload) - off)
        await peer.send(data(payload[off:off + n]))
        sizes.append(n)
        remaining -= n
        off += n
    peer.close()  # the client's CloseSend
    return sizes


async def client_receive(peer: QueueStream) -> tuple[bytes, list[int]]:
    """containerd's ReceiveStream: grant 64 KiB whenever the window is below it."""
    out, window, sizes = bytearray(), 0, []
    while True:
        if window < bs.WINDOW:
            try:
                await peer.send(update(bs.WINDOW))
                window += bs.WINDOW
            except EOFError:
                pass
        try:
            msg = await peer.recv()
        except EOFError:
            return bytes(out), sizes
        d = typeurl.unpack(msg, spb.Data).data
        assert len(d) <= window, "the daemon sent beyond the window"
        window -= len(d)
        sizes.append(len(d))
        out += d


def test_receiver_reads_what_the_client_sends_within_the_window():
    payload = bytes(range(256)) * 1000  # 256000 bytes: several windows

    async def main():
        mine, peer = QueueStream.pair()
        recv = bs.StreamReceiver(mine, 10)
        sender = asyncio.ensure_future(client_send(peer, payload))
        got = bytearray()
        while chunk := await recv.read():
            got += chunk
        return bytes(got), await sender, recv.received

    got, sizes, received = run(main())
    assert got == payload and received == len(payload)
    assert max(sizes) <= bs.MAX_CHUNK


def test_sender_stays_within_the_clients_window():
    payload = b"x" * 300_000

    async def main():
        mine, peer = QueueStream.pair()
        sender = bs.StreamSender(mine, 10)
        reader = asyncio.ensure_future(client_receive(peer))
        await sender.write(payload[:1000])
        await sender.write(payload[1000:])
        await sender.close()
        return await reader, sender

    (got, sizes), sender = run(main())
    assert got == payload and sender.sent == len(payload)
    assert max(sizes) <= bs.MAX_CHUNK


def test_data_beyond_the_window_is_refused():
    async def main():
        mine, peer = QueueStream.pair()
        recv = bs.StreamReceiver(mine, 10)
        await peer.send(data(b"y" * (bs.WINDOW + 1)))  # more than the first grant
        with pytest.raises(errdefs.InvalidArgument, match="window"):
            await recv.read()

    run(main())


def test_an_aborted_stream_is_not_a_clean_end():
    async def main():
        mine, peer = QueueStream.pair()
        recv = bs.StreamReceiver(mine, 10)
        await peer.send(data(b"abc"))
        assert await recv.read() == b"abc"
        mine.close()  # the stream closed here (the client's call went away)
        with pytest.raises(errdefs.Canceled, match="before the client closed it"):
            await recv.read()

    run(main())


def test_a_silent_client_stalls_out():
    async def main():
        mine, _peer = QueueStream.pair()
        recv = bs.StreamReceiver(mine, 0.2)
        with pytest.raises(errdefs.DeadlineExceeded, match="nothing received"):
            await recv.read()
        mine2, _peer2 = QueueStream.pair()
        sender = bs.StreamSender(mine2, 0.2)
        with pytest.raises(errdefs.DeadlineExceeded, match="granted no window"):
            await sender.write(b"z")
        sender.abort()

    run(main())


def test_junk_messages_in_a_row_are_bounded():
    async def main():
        mine, peer = QueueStream.pair()
        recv = bs.StreamReceiver(mine, 10)
        for _ in range(bs.MAX_IGNORED + 1):
            await peer.send(update(5))
        with pytest.raises(errdefs.InvalidArgument, match="in a row"):
            await recv.read()
        mine2, peer2 = QueueStream.pair()
        recv2 = bs.StreamReceiver(mine2, 10)
        await peer2.send(data(b"ok"))
        assert await recv2.read() == b"ok"
        bad = data(b"")
        bad.value = b"\xff\xff\xff"
        await peer2.send(bad)
        with pytest.raises(errdefs.InvalidArgument, match="does not parse"):
            await recv2.read()

    run(main())


def test_negative_and_absurd_window_updates():
    async def main():
        mine, peer = QueueStream.pair()
        sender = bs.StreamSender(mine, 0.5)
        await peer.send(update(-100))
        await peer.send(update(0))
        # a negative update gives no credit: the write times out rather than misbehaving
        with pytest.raises(errdefs.DeadlineExceeded):
            await sender.write(b"a")
        await peer.send(update(2**31 - 1))
        await peer.send(update(2**31 - 1))
        await sender.write(b"b" * 100_000)
        chunks = []
        while sum(len(c) for c in chunks) < 100_000:
            chunks.append(typeurl.unpack(await peer.recv(), spb.Data).data)
        assert max(len(c) for c in chunks) <= bs.MAX_CHUNK
        assert sender._credit <= bs.MAX_CREDIT
        sender.abort()

    run(main())


def test_sender_fails_when_the_client_stops_reading():
    async def main():
        mine, peer = QueueStream.pair()
        sender = bs.StreamSender(mine, 10)
        await peer.send(update(10))
        await sender.write(b"0123456789")
        peer.close()  # no more window will come
        with pytest.raises(errdefs.Canceled, match="stopped reading|went away"):
            await sender.write(b"more")
        sender.abort()

    run(main())


def test_blocking_writer_from_a_thread_and_abort():
    async def main():
        mine, peer = QueueStream.pair()
        sender = bs.StreamSender(mine, 10)
        out = bs.BlockingWriter(sender, asyncio.get_running_loop())
        reader = asyncio.ensure_future(client_receive(peer))
        payload = b"q" * 200_000
        await asyncio.to_thread(out.write, payload)
        await sender.close()
        got, _ = await reader
        assert got == payload
        # a writer blocked on a client that grants nothing is freed by abort()
        mine2, _peer2 = QueueStream.pair()
        sender2 = bs.StreamSender(mine2, 30)
        out2 = bs.BlockingWriter(sender2, asyncio.get_running_loop())
        failed = threading.Event()

        def blocked():
            try:
                out2.write(b"never")
            except errdefs.Canceled:
                failed.set()

        t = asyncio.ensure_future(asyncio.to_thread(blocked))
        await asyncio.sleep(0.05)
        out2.abort()
        await t
        assert failed.is_set()
        with pytest.raises(errdefs.Canceled):
            await asyncio.to_thread(out2.write, b"x")
        sender2.abort()

    run(main())
