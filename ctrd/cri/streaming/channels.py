"""The two wire forms of a streaming session on an upgraded connection, as byte channels.

- :class:`SpdySession`: SPDY/3.1 (:mod:`.spdy`) -- the client opens one stream per channel,
  each with a ``streamtype`` header (and ``port``/``requestID`` for port-forward); streams
  half-close with FIN.
- :class:`WsSession`: WebSocket (the ``websockets`` package's sans-I/O
  ``ServerProtocol``) -- channels are the first byte of each message (the base64 protocols:
  an ASCII digit, then base64 text); v5 adds a close signal (255, channel). Protocol
  errors (bad framing, a message over the size limit, a bad close signal) fail the
  connection with a close frame and end the session like a peer that went away.

Both give the protocol handlers the same two shapes: :class:`InChannel` (``await read()``,
``b""`` at EOF) and an output with ``await write(data)`` and ``await close()``. Lifecycle:
``run()`` reads the socket until the peer goes (then every input channel reads EOF, writes
raise ``ConnectionError`` and ``gone`` is set); ``await aclose()`` ends the session
gracefully (GOAWAY / close frame, the write side shut, a bounded wait for the peer to close)
and closes the socket. Nothing is left behind once both returned.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from typing import Callable

from ctrd.cri.streaming import spdy

log = logging.getLogger("ctrd.cri.streaming")

READ_CHUNK = 64 * 1024
BUFFER_LIMIT = 1 << 20     # bytes buffered per input channel before the socket is not read
CLOSE_GRACE = 5.0          # seconds a closing session waits for the peer to close


class InChannel:
    """Bytes from the client on one channel; EOF (``b""``) when the client closed it or the
    connection went away."""

    def __init__(self, on_consumed: Callable[[int], None] | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self._ready = asyncio.Event()
        self._on_consumed = on_consumed

    def feed(self, data: bytes) -> None:
        if data and not self.eof:
            self._chunks.append(data)
            self.buffered += len(data)
            self._ready.set()

    def feed_eof(self) -> None:
        self.eof = True
        self._ready.set()

    async def read(self) -> bytes:
        while not self._chunks:
            if self.eof:
                return b""
            self._ready.clear()
            await self._ready.wait()
        data = self._chunks.popleft()
        self.buffered -= len(data)
        if self._on_consumed is not None:
            self._on_consumed(len(data))
        return data


class _Session:
    """What both wire forms share: the socket, idle tracking, backpressure, shutdown."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 idle_timeout: float = 0.0) -> None:
        self.reader = reader
        self.writer = writer
        self.gone = asyncio.Event()
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()
        self._space = asyncio.Event()
        self._space.set()
        self._closing = False

    def _inputs(self) -> list[InChannel]:
        raise NotImplementedError

    def _space_freed(self, _n: int = 0) -> None:
        if not self._space.is_set() and all(c.buffered < BUFFER_LIMIT for c in self._inputs()):
            self._space.set()

    async def _read(self) -> bytes:
        while any(c.buffered >= BUFFER_LIMIT for c in self._inputs()):
            self._space.clear()
            await self._space.wait()
        timeout = self.idle_timeout or None
        while True:
            try:
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                if time.monotonic() - self.last_activity >= self.idle_timeout:
                    log.debug("streaming session idle for %ss: closing", self.idle_timeout)
                    return b""
                continue
            self.last_activity = time.monotonic()
            return data

    async def _drain(self) -> None:
        if self.gone.is_set():
            raise ConnectionResetError("the client went away")
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self._lost()
            raise ConnectionResetError(str(e)) from None
        self.last_activity = time.monotonic()

    def _write(self, data: bytes) -> None:
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def _lost(self) -> None:
        if not self.gone.is_set():
            self.gone.set()
            for c in self._inputs():
                c.feed_eof()
            self._space.set()

    async def _finish(self) -> None:
        """Wait (bounded) for the peer to close, then close the socket. The peer closes once
        it has read everything (a client's SPDY library may drop frames it still had queued
        if it saw EOF first), so our side is not shut before."""
        if not self.gone.is_set():
            try:
                await asyncio.wait_for(self.gone.wait(), CLOSE_GRACE)
            except TimeoutError:
                pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# --- SPDY -----------------------------------------------------------------------------------

class SpdyStream:
    """One SPDY stream: input (the client's half) and output (ours)."""

    def __init__(self, session: "SpdySession", sid: int, headers: spdy.Headers) -> None:
        self.session = session
        self.id = sid
        self.headers = headers
        self.input = InChannel(self._consumed)
        self.reset_by_peer = False
        self._window = asyncio.Event()

    def header(self, name: str) -> str:
        return spdy.header(self.headers, name)

    def _consumed(self, n: int) -> None:
        self.session.conn.consumed(self.id, n)
        self.session.flush()
        self.session._space_freed()

    async def read(self) -> bytes:
        return await self.input.read()

    async def write(self, data: bytes) -> None:
        s = self.session
        view = memoryview(data)
        while view:
            if self.reset_by_peer or s.gone.is_set():
                raise ConnectionResetError("stream closed by the client")
            if s.conn.send_window(self.id) == 0:
                if self.id not in s.conn.streams:
                    raise ConnectionResetError("stream closed")
                self._window.clear()
                await self._window.wait()
                continue
            try:
                n = s.conn.send_data(self.id, bytes(view))
            except KeyError:
                raise ConnectionResetError("stream closed") from None
            view = view[n:]
            s.flush()
            await s._drain()

    async def close(self) -> None:
        """Half-close (FIN): the client reads EOF."""
        if not self.session.gone.is_set():
            self.session.conn.end_stream(self.id)
            self.session.flush()

    def reset(self) -> None:
        if not self.session.gone.is_set():
            self.session.conn.reset(self.id, spdy.CANCEL)
            self.session.flush()
        self.input.feed_eof()


class SpdySession(_Session):
    """The server side of a SPDY connection. ``on_stream(stream)`` is called for each stream
    the client opens and returns None to accept it (a SYN_REPLY is sent) or an error text to
    reset it."""

    def __init__(self, reader, writer, on_stream: Callable[[SpdyStream], str | None],
                 idle_timeout: float = 0.0) -> None:
        super().__init__(reader, writer, idle_timeout)
        self.conn = spdy.Connection(client=False)
        self.streams: dict[int, SpdyStream] = {}
        self.on_stream = on_stream

    def _inputs(self) -> list[InChannel]:
        return [s.input for s in self.streams.values()]

    def flush(self) -> None:
        self._write(self.conn.data_to_send())

    async def run(self, initial: bytes = b"") -> None:
        try:
            data = initial
            while True:
                if data:
                    try:
                        events = self.conn.receive_data(data)
                    except spdy.ProtocolError as e:
                        log.debug("SPDY protocol error from the client: %s", e)
                        self.flush()
                        break
                    for ev in events:
                        self._dispatch(ev)
                    self.flush()
                data = await self._read()
                if not data:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._lost()
            for st in self.streams.values():
                st._window.set()

    def _dispatch(self, ev) -> None:
        if isinstance(ev, spdy.StreamOpened):
            st = SpdyStream(self, ev.stream_id, ev.headers)
            if ev.fin:
                st.input.feed_eof()
            self.streams[st.id] = st
            err = self.on_stream(st)
            if err is not None:
                log.debug("stream %d rejected: %s", st.id, err)
                self.conn.reset(st.id, spdy.CANCEL)
                self.streams.pop(st.id, None)
            elif st.id in self.conn.streams:
                self.conn.reply(st.id, {})
        elif isinstance(ev, spdy.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.input.feed(ev.data)
                if not ev.data:
                    pass
                if ev.fin:
                    st.input.feed_eof()
        elif isinstance(ev, spdy.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.reset_by_peer = True
                st.input.feed_eof()
                st._window.set()
        elif isinstance(ev, spdy.WindowUpdated):
            if ev.stream_id == 0:
                for st in self.streams.values():
                    st._window.set()
            elif ev.stream_id in self.streams:
                self.streams[ev.stream_id]._window.set()
        elif isinstance(ev, spdy.GoAwayReceived):
            pass  # the client closes the socket next; streams end then

    def forget(self, st: SpdyStream) -> None:
        self.streams.pop(st.id, None)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self.gone.is_set():
            for sid in list(self.conn.streams):
                self.conn.end_stream(sid)
            self.conn.goaway(spdy.GOAWAY_OK)
            self.flush()
        await self._finish()


# --- WebSocket ------------------------------------------------------------------------------

STREAM_CLOSE = 255  # v5.channel.k8s.io: (255, channel) closes the client's half of a channel


class WsOut:
    """Output channel ``n`` of a WebSocket session."""

    def __init__(self, session: "WsSession", n: int) -> None:
        self.session = session
        self.n = n

    async def write(self, data: bytes) -> None:
        await self.session.send(self.n, data)

    async def close(self) -> None:
        pass  # the channel protocol has no half-close from the server


class WsSession(_Session):
    """The server side of an accepted WebSocket with k8s channel framing. ``inputs``: the
    channel numbers the client may write (others are dropped, as wsstream does)."""

    def __init__(self, reader, writer, protocol, subprotocol: str, inputs: list[int],
                 idle_timeout: float = 0.0, channels: int = 0) -> None:
        super().__init__(reader, writer, idle_timeout)
        self.proto = protocol
        self.subprotocol = subprotocol
        self.base64 = "base64" in subprotocol
        self.stream_close = subprotocol == "v5.channel.k8s.io"
        self.inputs = {n: InChannel(self._space_freed) for n in inputs}
        # how many channels the protocol has (a v5 close signal for another one is a
        # protocol error, as in wsstream); 0: one past the highest input
        self.channels = channels or (max(inputs) + 1 if inputs else 0)
        self.failure = ""  # why the session was failed (a protocol error), "" if it was not
        self._partial: list[bytes] | None = None
        self._partial_text = False

    def _inputs(self) -> list[InChannel]:
        return list(self.inputs.values())

    def flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                self._write(chunk)

    def out(self, n: int) -> WsOut:
        return WsOut(self, n)

    async def send(self, n: int, data: bytes) -> None:
        if self.gone.is_set() or self._closing:
            raise ConnectionResetError("the client went away")
        if self.base64:
            self.proto.send_text((chr(ord("0") + n) + base64.b64encode(data).decode()).encode())
        else:
            self.proto.send_binary(bytes([n]) + data)
        self.flush()
        await self._drain()

    async def run(self) -> None:
        """Read messages until the peer closed, went away, or broke the protocol: a bad
        frame (the websockets library fails the connection: 1002, 1007, 1009 for a message
        over the size limit) or a bad v5 close signal (failed here with 1002); the failure
        ends the session like a client that went away."""
        from websockets.frames import Opcode
        from websockets.protocol import State

        try:
            while True:
                data = await self._read()
                if not data:
                    self.proto.receive_eof()
                    break
                self.proto.receive_data(data)
                closed = False
                for fr in self.proto.events_received():
                    if fr.opcode in (Opcode.TEXT, Opcode.BINARY):
                        self._partial = [fr.data]
                        self._partial_text = fr.opcode == Opcode.TEXT
                    elif fr.opcode == Opcode.CONT and self._partial is not None:
                        self._partial.append(fr.data)
                    elif fr.opcode == Opcode.CLOSE:
                        closed = True
                        continue
                    else:
                        continue  # ping/pong: the protocol answers pings itself
                    if fr.fin and self._partial is not None:
                        msg = b"".join(self._partial)
                        self._partial = None
                        err = self._message(msg, self._partial_text)
                        if err:
                            log.debug("WebSocket protocol error from the client: %s", err)
                            self.failure = err
                            self.proto.fail(1002, err[:120])
                            closed = True
                            break
                if self.proto.state is not State.OPEN and not self._closing and not closed:
                    sent = self.proto.close_sent
                    self.failure = self.failure or (
                        f"connection failed: {sent.code} {sent.reason}" if sent is not None
                        else "connection failed")
                    log.debug("WebSocket session: %s", self.failure)
                    closed = True
                self.flush()
                if closed:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._lost()

    def _message(self, msg: bytes, text: bool) -> str:
        """Route one message (wsstream's rules); a protocol error's text, else ""."""
        if not msg:
            return ""
        if self.stream_close and msg[0] == STREAM_CLOSE:
            if len(msg) != 2:
                return (f"a stream close signal carries one channel byte, got "
                        f"{len(msg) - 1}")
            if msg[1] >= self.channels:
                return f"a stream close signal for channel {msg[1]}, which does not exist"
            if msg[1] in self.inputs:
                self.inputs[msg[1]].feed_eof()
            return ""
        n = msg[0]
        data = msg[1:]
        if self.base64:
            n -= ord("0")
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError:
                log.debug("dropped a message on channel %d: bad base64", n)
                return ""  # wsstream logs it and goes on
        ch = self.inputs.get(n)
        if ch is not None:
            ch.feed(data)
        return ""  # channels that do not exist or are not inputs: dropped, as wsstream does

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self._closing:
            return
        self._closing = True
        if not self.gone.is_set():
            try:
                self.proto.send_close(code, reason)
            except Exception:  # noqa: BLE001 - already closing
                pass
            self.flush()
        await self._finish()
