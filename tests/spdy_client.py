"""A small asyncio SPDY/3.1 client for the streaming tests, on ctrd's sans-I/O module (the
client side of :class:`ctrd.cri.streaming.spdy.Connection`).

``c = await SpdyClient.connect(url, protocols)`` sends the upgrade request (``c.status``,
``c.headers``, ``c.body`` hold the response); ``sid = c.open({"streamtype": "stdout"})``;
``await c.read_all(sid)``; ``await c.write(sid, data, fin=True)``; ``await c.close()``.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from ctrd.cri.streaming import spdy


class SpdyClient:
    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.conn = spdy.Connection(client=True)
        self.data: dict[int, bytearray] = {}
        self.fin: dict[int, asyncio.Event] = {}
        self.replied: dict[int, asyncio.Event] = {}
        self.resets: dict[int, int] = {}
        self.closed = asyncio.Event()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self._task = None

    @classmethod
    async def connect(cls, url: str, protocols: list[str] | None = None,
                      upgrade: str = "SPDY/3.1", extra: bytes = b"") -> "SpdyClient":
        u = urlsplit(url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        c = cls(reader, writer)
        lines = [f"POST {u.path} HTTP/1.1", f"Host: {u.hostname}:{u.port}"]
        if upgrade:
            lines += ["Connection: Upgrade", f"Upgrade: {upgrade}"]
        lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols or []]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + extra)
        head = await reader.readuntil(b"\r\n\r\n")
        first, *rest = head.decode().split("\r\n")
        c.status = int(first.split()[1])
        for ln in rest:
            if ":" in ln:
                k, v = ln.split(":", 1)
                c.headers[k.strip().lower()] = v.strip()
        if c.status != 101:
            n = int(c.headers.get("content-length", "0"))
            c.body = await reader.readexactly(n) if n else b""
            writer.close()
            return c
        c._task = asyncio.ensure_future(c._run())
        return c

    @property
    def protocol(self) -> str:
        return self.headers.get("x-stream-protocol-version", "")

    async def _run(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for ev in self.conn.receive_data(data):
                    if isinstance(ev, spdy.DataReceived):
                        self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                        self.conn.consumed(ev.stream_id, len(ev.data))
                        if ev.fin:
                            self._ev(self.fin, ev.stream_id).set()
                    elif isinstance(ev, spdy.StreamReplied):
                        self._ev(self.replied, ev.stream_id).set()
                        if ev.fin:
                            self._ev(self.fin, ev.stream_id).set()
                    elif isinstance(ev, spdy.StreamReset):
                        self.resets[ev.stream_id] = ev.status
                        self._ev(self.fin, ev.stream_id).set()
                        self._ev(self.replied, ev.stream_id).set()
                self._flush()
        except (ConnectionError, OSError, spdy.ProtocolError):
            pass
        finally:
            self.closed.set()
            for e in list(self.fin.values()) + list(self.replied.values()):
                e.set()

    @staticmethod
    def _ev(d: dict, sid: int) -> asyncio.Event:
        return d.setdefault(sid, asyncio.Event())

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def open(self, headers: dict[str, str], fin: bool = False) -> int:
        sid = self.conn.open_stream({k: [v] for k, v in headers.items()}, fin=fin)
        self._flush()
        return sid

    async def write(self, sid: int, data: bytes, fin: bool = False) -> None:
        view = memoryview(data)
        while True:
            n = self.conn.send_data(sid, bytes(view), fin=fin)
            self._flush()
            await self.writer.drain()
            view = view[n:]
            if not view:
                return
            await asyncio.sleep(0.01)  # window exhausted: wait for an update

    async def read_all(self, sid: int, timeout: float = 30) -> bytes:
        await asyncio.wait_for(self._ev(self.fin, sid).wait(), timeout)
        return bytes(self.data.get(sid, b""))

    async def wait_replied(self, sid: int, timeout: float = 30) -> None:
        await asyncio.wait_for(self._ev(self.replied, sid).wait(), timeout)

    def abort(self) -> None:
        """Vanish: close the socket with no GOAWAY."""
        self.writer.transport.abort()

    async def close(self) -> None:
        if not self.writer.is_closing():
            try:
                self.conn.goaway()
                self._flush()
            except Exception:  # noqa: BLE001
                pass
            self.writer.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
