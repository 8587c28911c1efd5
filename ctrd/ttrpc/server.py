"""An asyncio ttrpc server on a unix socket.

Lifecycle: construct, :meth:`Server.register_service` for each service, :meth:`Server.start`
(binds the socket, mode 0600 unless told otherwise; the path must be free: clearing a
stale socket is the caller's decision), then :meth:`Server.stop` (stops accepting,
waits for in-flight calls up to a grace period, closes connections, removes the socket).

Each request runs as its own task, so a slow call does not block others on the same
connection. Only peers with the server's own uid are served (ttrpc's default handshake, via
SO_PEERCRED). Handler errors map to status codes through :mod:`ctrd.errdefs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ctrd import errdefs
from ctrd.ttrpc import calls, framing


def _pb():
    """The ttrpc framing messages, imported on the first call: a daemon that no shim talks
    to yet does not pay for the protobuf runtime at start-up."""
    from ctrd.api.ttrpc import ttrpc_pb2

    return ttrpc_pb2

log = logging.getLogger("ctrd.ttrpc")

NAMESPACE_KEY = "containerd-namespace-ttrpc"


@dataclass
class CallContext:
    """What a handler learns about its call besides the request."""

    service: str
    method: str
    metadata: dict[str, list[str]] = field(default_factory=dict)
    timeout: float | None = None  # seconds, as the client asked

    @property
    def namespace(self) -> str:
        values = self.metadata.get(NAMESPACE_KEY) or [""]
        return values[0]


Handler = Callable[[Any, CallContext], Awaitable[Any]]


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class Server:
    def __init__(self) -> None:
        self._methods: dict[tuple[str, str], tuple[type, Handler]] = {}
        self._lazy: dict[str, Callable[["Server"], None]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._calls: set[asyncio.Task] = set()

    def register(self, service: str, method: str, request_type: type, handler: Handler) -> None:
        self._methods[(service, method)] = (request_type, handler)

    def register_lazy(self, service: str, register: Callable[["Server"], None]) -> None:
        """Call ``register(self)`` (which registers ``service``'s methods) when a request for
        ``service`` first arrives."""
        self._lazy[service] = register

    def register_service(self, descriptor, impl: object) -> None:
        """Serve every method of a protobuf service ``descriptor`` that ``impl`` has as an
        ``async def Method(request, ctx)``; the others answer UNIMPLEMENTED."""
        from google.protobuf.message_factory import GetMessageClass

        for m in descriptor.methods:
            handler = getattr(impl, m.name, None)
            if handler is not None:
                self.register(descriptor.full_name, m.name, GetMessageClass(m.input_type),
                              handler)

    async def start(self, path: str, mode: int = 0o600) -> None:
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve_conn, path=path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        self._path = path

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            self._server.close()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=grace)
        for t in list(self._calls):
            t.cancel()
        for w in list(self._conns):
            w.close()
        if self._path and os.path.exists(self._path):
            os.unlink(self._path)
        self._path = None

    async def _serve_conn(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        if uid != os.getuid():
            log.warning("ttrpc: refused a peer with another uid", extra={"uid": uid})
            writer.close()
            return
        self._conns.add(writer)
        decoder = framing.Decoder()
        try:
            while data := await reader.read(1 << 16):
                for frame in decoder.feed(data):
                    if isinstance(frame, framing.OversizedFrame):
                        self._respond(writer, frame.stream_id, framing.RESOURCE_EXHAUSTED,
                                      frame.message)
                    elif frame.type != framing.TYPE_REQUEST:
                        self._respond(writer, frame.stream_id, errdefs.UNIMPLEMENTED,
                                      f"ttrpc message type {frame.type} is not supported")
                    else:
                        task = asyncio.create_task(self._call(writer, frame))
                        self._calls.add(task)
                        task.add_done_callback(self._calls.discard)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    def _lookup(self, service: str, method: str):
        entry = self._methods.get((service, method))
        if entry is None and service in self._lazy:
            self._lazy.pop(service)(self)
            entry = self._methods.get((service, method))
        return entry

    async def _call(self, writer: asyncio.StreamWriter, frame: framing.Frame) -> None:
        try:
            call = calls.decode(frame.payload, self._lookup)
        except calls.BadCall as e:
            self._respond(writer, frame.stream_id, e.code, e.message)
            return
        ctx = CallContext(call.service, call.method, call.metadata, call.timeout)
        try:
            coro = call.handler(call.request, ctx)
            result = await (asyncio.wait_for(coro, ctx.timeout) if ctx.timeout else coro)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes a status
            code, message = errdefs.to_status(e)
            if code == errdefs.UNKNOWN:
                log.exception("ttrpc handler failed", extra={"method": call.method})
            self._respond(writer, frame.stream_id, code, message)
            return
        self._respond(writer, frame.stream_id, errdefs.OK, "", result.SerializeToString())

    def _respond(self, writer: asyncio.StreamWriter, stream_id: int, code: int, message: str,
                 payload: bytes = b"") -> None:
        if not writer.is_closing():
            writer.write(calls.response(stream_id, code, message, payload))
