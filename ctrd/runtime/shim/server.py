"""A ttrpc server on the shim's :class:`~ctrd.runtime.shim.loop.Loop` (no asyncio).

Handlers are plain methods ``Method(request, ctx) -> response`` run on the loop thread; one
that cannot answer yet (Wait) returns a :class:`Deferred` and resolves it later. Errors map to
status codes through :mod:`ctrd.errdefs`. Only peers with the shim's uid are served
(SO_PEERCRED, as ttrpc's default handshake). Requests on one connection are answered in the
order their handlers finish.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable

from ctrd import errdefs
from ctrd.api.ttrpc import ttrpc_pb2  # noqa: F401 - loaded here: forked shims share it
from ctrd.runtime.shim import log
from ctrd.runtime.shim.loop import Loop
from ctrd.ttrpc import calls, framing

NAMESPACE_KEY = "containerd-namespace-ttrpc"


_METHOD_CLASSES: dict[str, tuple[tuple[str, type], ...]] = {}


def method_classes(descriptor) -> tuple[tuple[str, type], ...]:
    """(method name, request class) of a service, computed once per process: the shim template
    calls it before forking, so shims share the table instead of walking the descriptors
    (which wrote ~0.25 MiB of the template's pages per shim)."""
    table = _METHOD_CLASSES.get(descriptor.full_name)
    if table is None:
        from google.protobuf.message_factory import GetMessageClass

        table = _METHOD_CLASSES[descriptor.full_name] = tuple(
            (m.name, GetMessageClass(m.input_type)) for m in descriptor.methods)
    return table


class Deferred:
    """A response that comes later: :meth:`resolve` with a message or :meth:`fail`."""

    __slots__ = ("_callbacks", "result", "error", "done")

    def __init__(self) -> None:
        self._callbacks: list[Callable[["Deferred"], None]] = []
        self.result = None
        self.error: BaseException | None = None
        self.done = False

    def add_callback(self, cb: Callable[["Deferred"], None]) -> None:
        if self.done:
            cb(self)
        else:
            self._callbacks.append(cb)

    def resolve(self, result) -> None:
        if not self.done:
            self.result, self.done = result, True
            self._fire()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error, self.done = error, True
            self._fire()

    def _fire(self) -> None:
        cbs, self._callbacks = self._callbacks, []
        for cb in cbs:
            cb(self)


class CallContext:
    __slots__ = ("service", "method", "metadata")

    def __init__(self, service: str, method: str, metadata: dict[str, list[str]]) -> None:
        self.service, self.method, self.metadata = service, method, metadata

    @property
    def namespace(self) -> str:
        return (self.metadata.get(NAMESPACE_KEY) or [""])[0]


class _Conn:
    __slots__ = ("sock", "fd", "decoder", "out", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.fd = sock, sock.fileno()
        self.decoder = framing.Decoder()
        self.out = bytearray()
        self.closed = False


class Server:
    """Lifecycle: ``Server(loop)``, :meth:`register_service`, :meth:`serve` on a listening
    socket, :meth:`close` (stops accepting, closes connections; the socket file is the
    caller's)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._methods: dict[tuple[str, str], tuple[type, Callable]] = {}
        self._listener: socket.socket | None = None
        self._conns: dict[int, _Conn] = {}

    def register_service(self, descriptor, impl: object) -> None:
        for name, request_class in method_classes(descriptor):
            handler = getattr(impl, name, None)
            if handler is not None:
                self._methods[(descriptor.full_name, name)] = (request_class, handler)

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self.loop.add_reader(listener.fileno(), self._accept)

    def close(self) -> None:
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for c in list(self._conns.values()):
            self._drop(c)

    def flush(self) -> bool:
        """True when every response has been written."""
        return all(not c.out for c in self._conns.values())

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("ttrpc accept failed", error=e.strerror)
                    return
                raise
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
                uid = struct.unpack("3i", creds)[1]
            except OSError:
                uid = -1
            if uid != os.getuid():
                log.warning("ttrpc: refused a peer with another uid", uid=uid)
                sock.close()
                continue
            sock.setblocking(False)
            c = _Conn(sock)
            self._conns[c.fd] = c
            self.loop.add_reader(c.fd, lambda c=c: self._read(c))

    def _drop(self, c: _Conn) -> None:
        if c.closed:
            return
        c.closed = True
        self._conns.pop(c.fd, None)
        self.loop.remove_reader(c.fd)
        self.loop.remove_writer(c.fd)
        c.sock.close()

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        for frame in c.decoder.feed(data):
            if isinstance(frame, framing.OversizedFrame):
                self._respond(c, frame.stream_id, framing.RESOURCE_EXHAUSTED, frame.message)
            elif frame.type != framing.TYPE_REQUEST:
                self._respond(c, frame.stream_id, errdefs.UNIMPLEMENTED,
                              f"ttrpc message type {frame.type} is not supported")
            else:
                self._call(c, frame)

    def _call(self, c: _Conn, frame: framing.Frame) -> None:
        sid = frame.stream_id
        try:
            call = calls.decode(frame.payload,
                                lambda service, method: self._methods.get((service, method)))
        except calls.BadCall as e:
            self._respond(c, sid, e.code, e.message)
            return
        method = call.method
        try:
            result = call.handler(call.request, CallContext(call.service, method, call.metadata))
        except Exception as e:  # noqa: BLE001 - every failure becomes a status
            self._fail(c, sid, method, e)
            return
        if isinstance(result, Deferred):
            result.add_callback(lambda d: self._fail(c, sid, method, d.error)
                                if d.error is not None
                                else self._respond(c, sid, errdefs.OK, "",
                                                   d.result.SerializeToString()))
        else:
            self._respond(c, sid, errdefs.OK, "", result.SerializeToString())

    def _fail(self, c: _Conn, sid: int, method: str, e: BaseException) -> None:
        code, message = errdefs.to_status(e)
        if code == errdefs.UNKNOWN:
            log.error("ttrpc handler failed", method=method, error=message)
        else:
            log.debug("ttrpc call failed", method=method, error=message)
        self._respond(c, sid, code, message)

    def _respond(self, c: _Conn, sid: int, code: int, message: str,
                 payload: bytes = b"") -> None:
        if c.closed:
            return
        c.out += calls.response(sid, code, message, payload)
        self._write(c)

    def _write(self, c: _Conn) -> None:
        while c.out and not c.closed:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(c.fd, lambda: self._write(c))
                return
            except OSError:
                self._drop(c)
                return
            del c.out[:n]
        if not c.closed:
            self.loop.remove_writer(c.fd)
