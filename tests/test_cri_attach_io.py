"""ctrd.cri.streaming.attach_io on real FIFOs (no daemon): what a log-less container's output
relay promises -- output from subscription on, dropped without subscribers, the end at the
writers' EOF, a slow subscriber pausing the relay (the writer then fills the pipe and is
held back) instead of growing the daemon."""

from __future__ import annotations

import asyncio
import errno
import os

from ctrd.cri.streaming.attach_io import SUB_LIMIT, OutputRelay, Relays, fifo_paths


def _writer(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_NONBLOCK)


def _unread(fd: int) -> int:
    """Bytes in the pipe behind ``fd`` (FIONREAD)."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


async def _get(sub, timeout: float = 10):
    return await asyncio.wait_for(sub.get(), timeout)


def test_fifo_paths_and_tty(tmp_path):
    out, err = fifo_paths(str(tmp_path), "c1", tty=False)
    assert out == str(tmp_path / "containers" / "c1" / "stdout")
    assert err == str(tmp_path / "containers" / "c1" / "stderr")
    assert fifo_paths(str(tmp_path), "c1", tty=True)[1] == ""


def test_output_from_subscription_on_then_the_end(tmp_path):
    async def run():
        relay = OutputRelay(str(tmp_path), "c1", tty=False)
        relay.start()
        out, err = _writer(relay.stdout_path), _writer(relay.stderr_path)
        try:
            os.write(out, b"before\n")  # nobody attached: dropped
            while _unread(out):  # the relay read it (into nowhere)
                await asyncio.sleep(0.01)
            sub = relay.subscribe()
            os.write(out, b"o1\n")
            assert await _get(sub) == ("stdout", b"o1\n")
            os.write(err, b"e1\n")
            assert await _get(sub) == ("stderr", b"e1\n")
        finally:
            os.close(out)
            os.close(err)
        assert await _get(sub) is None  # every writer gone: the end
        assert await _get(sub) is None  # and it stays the end
        assert relay.done.is_set()
        assert await _get(relay.subscribe()) is None  # a late subscriber sees the end
        relay.close()
    asyncio.run(run())


def test_slow_subscriber_holds_the_writer_back(tmp_path):
    async def run():
        relay = OutputRelay(str(tmp_path), "c2", tty=True)
        assert relay.stderr_path == ""
        relay.start()
        sub = relay.subscribe()
        fd = _writer(relay.stdout_path)
        written = 0
        chunk = b"x" * 65536
        try:
            stalled = 0
            while stalled < 20:  # write until the pipe stays full
                try:
                    written += os.write(fd, chunk)
                    stalled = 0
                except OSError as e:
                    assert e.errno == errno.EAGAIN
                    stalled += 1
                await asyncio.sleep(0.01)
                assert written < 64 * SUB_LIMIT, "the relay never held the writer back"
            assert sub.buffered >= SUB_LIMIT
            # the subscriber catches up: everything written arrives, in order
            got = 0
            while got < written:
                item = await _get(sub)
                got += len(item[1])
                if got >= written:
                    break
            assert got == written
        finally:
            os.close(fd)
            relay.close()
    asyncio.run(run())


def test_unsubscribed_slow_client_releases_the_relay(tmp_path):
    async def run():
        relays = Relays(str(tmp_path))
        relay = relays.open("c3", tty=True)
        assert relays.open("c3", tty=True) is relay  # one relay per running container
        slow = relay.subscribe()
        fd = _writer(relay.stdout_path)
        try:
            for _ in range(40):
                try:
                    os.write(fd, b"y" * 65536)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            relay.unsubscribe(slow)  # the client went away without reading
            fast = relay.subscribe()
            await asyncio.sleep(0.1)
            # the relay reads on: the pipe drains and new output reaches the new client
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    os.write(fd, b"marker")
                    break
                except BlockingIOError:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.01)
            seen = b""
            while b"marker" not in seen:
                seen = (seen + (await _get(fast))[1])[-64:]
        finally:
            os.close(fd)
            relays.close_all()
        assert relay.done.is_set()
        assert relays.get("c3") is None
    asyncio.run(run())


def test_reopen_only_with_fifos(tmp_path):
    async def run():
        relays = Relays(str(tmp_path))
        assert relays.reopen("none") is None  # a container with a log file has no FIFOs
        relays.open("c4", tty=False).close()
        relays._relays.clear()
        again = relays.reopen("c4")
        assert again is not None and again.stderr_path  # stderr FIFO there: no tty
        relays.close_all()
    asyncio.run(run())
