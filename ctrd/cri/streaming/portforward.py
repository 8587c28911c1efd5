"""port-forward sessions: the kubelet's portforward protocols, on SPDY and WebSocket.

SPDY (``portforward.k8s.io``): for every forwarded connection the client opens two streams,
``streamtype: error`` and ``streamtype: data``, both with a ``port`` header and the same
``requestID`` (old clients without it: the error stream's id, the data stream's id - 2). A
complete pair runs the forwarder; a failure is written to the pair's error stream as text;
both streams are then half-closed. A pair still incomplete after the stream creation timeout
gets "timed out waiting for streams". The session lives until the client closes it.

WebSocket (``v4.channel.k8s.io``, ``v4.base64.channel.k8s.io`` or none): the ports come from
the PortForward request; port ``i`` has data channel ``2i`` and error channel ``2i+1``; the
server first writes the port (2 bytes, little endian) on both; one connection per port for
the life of the socket, which closes once every port's connection ended.

The forwarder is ``async fn(port, stream, gone) -> None``: it copies between ``stream``
(``read()``/``write()``/``close()``) and the pod's port until both directions ended or
``gone`` is set, and raises :class:`ForwardError` (its text goes to the error stream).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ctrd.cri.streaming.channels import SpdySession, SpdyStream, WsSession

log = logging.getLogger("ctrd.cri.streaming")

PROTOCOL_V1 = "portforward.k8s.io"
SPDY_PROTOCOLS = [PROTOCOL_V1]
WS_PROTOCOLS = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"]


class ForwardError(Exception):
    pass


Forwarder = Callable[[int, object, asyncio.Event], Awaitable[None]]


@dataclass
class _Pair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


def _validate(st: SpdyStream) -> str | None:
    port = st.header("port")
    if not port:
        return '"port" header is required'
    try:
        n = int(port, 10)
    except ValueError:
        return f"unable to parse {port!r} as a port"
    if not 0 < n < 65536:
        return f"port {port!r} must be > 0 and < 65536"
    kind = st.header("streamtype")
    if not kind:
        return '"streamType" header is required'
    if kind not in ("error", "data"):
        return f"invalid stream type {kind!r}"
    return None


async def _print_error(p: _Pair, msg: str) -> None:
    if p.error is not None:
        try:
            await p.error.write(msg.encode())
        except ConnectionError:
            pass


async def serve_spdy(reader, writer, initial: bytes, sandbox_id: str, forward: Forwarder,
                     creation_timeout: float, idle_timeout: float) -> None:
    pairs: dict[str, _Pair] = {}
    tasks: set[asyncio.Task] = set()

    def spawn(coro) -> None:
        t = asyncio.ensure_future(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    async def run_pair(p: _Pair) -> None:
        port = int(p.data.header("port"))
        try:
            await forward(port, p.data, sess.gone)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the client
            msg = f"error forwarding port {port} to pod {sandbox_id}, uid : {e}"
            log.debug("%s", msg)
            await _print_error(p, msg)
        finally:
            for st in (p.data, p.error):
                sess.forget(st)
                try:
                    await st.close()
                except ConnectionError:
                    pass
            pairs.pop(p.request_id, None)

    async def monitor(p: _Pair) -> None:
        try:
            await asyncio.wait_for(p.complete.wait(), creation_timeout)
            return
        except TimeoutError:
            pass
        await _print_error(p, f"(conn=spdy, request={p.request_id}) timed out waiting for "
                              "streams")
        for st in (p.data, p.error):
            if st is not None:
                sess.forget(st)
                st.reset()
        pairs.pop(p.request_id, None)

    def on_stream(st: SpdyStream) -> str | None:
        err = _validate(st)
        if err is not None:
            return err
        kind = st.header("streamtype")
        rid = st.header("requestid")
        if not rid:
            rid = str(st.id if kind == "error" else st.id - 2)
        p = pairs.get(rid)
        if p is None:
            p = pairs[rid] = _Pair(rid)
            spawn(monitor(p))
        if getattr(p, kind) is not None:
            spawn(_print_error(p, f"error processing stream for request {rid}: {kind} stream "
                                  "already assigned"))
            return None
        setattr(p, kind, st)
        if p.data is not None and p.error is not None:
            p.complete.set()
            spawn(run_pair(p))
        return None

    sess = SpdySession(reader, writer, on_stream, idle_timeout)
    try:
        await sess.run(initial)
    finally:
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await sess.aclose()


class _WsPortStream:
    def __init__(self, sess: WsSession, n: int) -> None:
        self.sess = sess
        self.n = n
        self.input = sess.inputs[n]

    async def read(self) -> bytes:
        return await self.input.read()

    async def write(self, data: bytes) -> None:
        await self.sess.send(self.n, data)

    async def close(self) -> None:
        pass


async def serve_ws(reader, writer, proto, subprotocol: str, sandbox_id: str,
                   ports: list[int], forward: Forwarder, idle_timeout: float) -> None:
    sess = WsSession(reader, writer, proto, subprotocol, [2 * i for i in range(len(ports))],
                     idle_timeout, channels=2 * len(ports))
    runner = asyncio.ensure_future(sess.run())

    async def one(i: int, port: int) -> None:
        try:
            await forward(port, _WsPortStream(sess, 2 * i), sess.gone)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the client
            msg = f"error forwarding port {port} to pod {sandbox_id}, uid : {e}"
            try:
                await sess.send(2 * i + 1, msg.encode())
            except ConnectionError:
                pass

    tasks: list[asyncio.Task] = []
    try:
        try:
            for i, port in enumerate(ports):
                prefix = struct.pack("<H", port)
                await sess.send(2 * i, prefix)
                await sess.send(2 * i + 1, prefix)
        except ConnectionError:
            return
        tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(ports)]
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await sess.aclose()
        runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            pass
