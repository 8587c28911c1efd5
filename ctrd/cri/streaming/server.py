"""The streaming server: single-use URLs for exec, attach and port-forward, and the HTTP/1.1
endpoint that upgrades them to SPDY/3.1 or WebSocket sessions.

Contract (the kubelet's streaming server, which containerd embeds):

- :meth:`StreamingServer.get_exec` / ``get_attach`` / ``get_port_forward`` validate the
  request, keep it under a random token (:class:`RequestCache`: 1 minute TTL, at most 1000
  outstanding: one more is RESOURCE_EXHAUSTED until a token is used or expires) and return
  ``http://<address>:<port>/{exec,attach,portforward}/<token>``.
- ``GET``/``POST`` on that path consumes the token (an unknown, used or expired one: 404),
  then: ``Upgrade: websocket`` -> a WebSocket with a channel subprotocol; otherwise the SPDY
  handshake (``X-Stream-Protocol-Version`` negotiated in the client's order: 403 when none
  fits; no ``Upgrade: SPDY/3.1``: 400).
- Sessions end when the work is done or the client goes; :meth:`stop` ends them all.

The work itself is the backend's (:class:`Backend`): the CRI one is in :mod:`.backend`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from ctrd import errdefs
from ctrd.cri.streaming import portforward, remotecommand

log = logging.getLogger("ctrd.cri.streaming")

TOKEN_TTL = 60.0                # kubelet's requestCache TTL (1 minute)
MAX_IN_FLIGHT = 1000            # kubelet's requestCache maxInFlight
TOKEN_BYTES = 8                 # kubelet's tokenLen
STREAM_CREATION_TIMEOUT = 30.0  # kubelet's DefaultStreamCreationTimeout
IDLE_TIMEOUT = 4 * 3600.0       # containerd's stream_idle_timeout default
HEADER_LIMIT = 64 * 1024
HEADER_TIMEOUT = 30.0
# The largest WebSocket message taken (bigger: the connection is failed with 1009). The
# kubelet's x/net/websocket takes 32 MiB; 4 MiB keeps one client's buffered message small,
# and client-go writes stdin in 32 KiB messages.
WS_MAX_MESSAGE = 4 << 20


class Backend(Protocol):
    async def exec(self, req: Any, streams: remotecommand.Streams) -> int | None: ...
    async def attach(self, req: Any, streams: remotecommand.Streams) -> int | None: ...
    async def port_forward(self, sandbox_id: str, port: int, stream: Any,
                           gone: asyncio.Event) -> None: ...


class TooManyInFlight(errdefs.ResourceExhausted):
    """The request cache is full (RESOURCE_EXHAUSTED). The kubelet's streaming package, which
    containerd embeds, makes this status itself (``NewErrorTooManyInFlight``) and containerd
    passes it through, so the message is exactly this text, with no kind after it."""

    MESSAGE = "maximum number of in-flight requests exceeded"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)
        self.args = (self.MESSAGE,)


@dataclass
class _Entry:
    kind: str
    request: Any
    expires: float


class RequestCache:
    """Pending requests by token: single use, expiring, bounded."""

    def __init__(self, ttl: float = TOKEN_TTL, max_in_flight: int = MAX_IN_FLIGHT,
                 clock=time.monotonic) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._entries: dict[str, _Entry] = {}  # insertion order == expiry order

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        now = self.clock()
        for tok in list(self._entries):
            if self._entries[tok].expires > now:
                break
            del self._entries[tok]

    def insert(self, kind: str, request: Any) -> str:
        self._evict()
        if len(self._entries) >= self.max_in_flight:
            raise TooManyInFlight()
        while True:
            tok = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode().rstrip("=")
            if tok not in self._entries:
                break
        self._entries[tok] = _Entry(kind, request, self.clock() + self.ttl)
        return tok

    def consume(self, token: str) -> tuple[str, Any] | None:
        e = self._entries.pop(token, None)
        if e is None or e.expires <= self.clock():
            return None
        return e.kind, e.request


@dataclass
class HTTPRequest:
    method: str
    path: str
    version: str
    headers: dict[str, list[str]]   # lowercase names
    raw: bytes                      # the request head, as received
    rest: bytes                     # bytes after the head (the upgraded protocol's)

    def header(self, name: str) -> str:
        v = self.headers.get(name.lower())
        return v[0] if v else ""

    def header_list(self, name: str) -> list[str]:
        """Every comma-separated value of every ``name`` header."""
        return [p.strip() for v in self.headers.get(name.lower(), []) for p in v.split(",")
                if p.strip()]


class BadRequest(Exception):
    pass


async def read_request(reader: asyncio.StreamReader) -> HTTPRequest | None:
    """One HTTP/1.1 request head (None when the client closed before sending one)."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > HEADER_LIMIT:
            raise BadRequest("request header too large")
        data = await reader.read(8192)
        if not data:
            if buf:
                raise BadRequest("incomplete request")
            return None
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head, rest = bytes(buf[:end]), bytes(buf[end:])
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {lines[0][:100]!r}")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:100]!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    return HTTPRequest(parts[0], parts[1], parts[2], headers, head, rest)


_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 101: "Switching Protocols"}


def _response(code: int, body: str = "", headers: list[tuple[str, str]] | None = None) -> bytes:
    data = body.encode()
    lines = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}"]
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if code != 101:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}",
                  "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _negotiate(client: list[str], server: list[str]) -> str | None:
    """The client's first protocol the server knows; "" when the client offered none."""
    if not client:
        return ""
    for p in client:
        if p in server:
            return p
    return None


class StreamingServer:
    """The HTTP endpoint and the token cache. Lifecycle: ``await start()``, hand out URLs,
    ``await stop()`` (closes the listener and every session)."""

    def __init__(self, backend: Backend, address: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float = IDLE_TIMEOUT,
                 creation_timeout: float = STREAM_CREATION_TIMEOUT,
                 cache: RequestCache | None = None) -> None:
        self.backend = backend
        self.address = address
        self.port = port
        self.idle_timeout = idle_timeout
        self.creation_timeout = creation_timeout
        self.cache = cache or RequestCache()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.address, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        host = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def sessions(self) -> int:
        return len(self._conns)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    # --- the CRI side: validate, store, hand out a URL ----------------------------------

    def get_exec(self, req) -> str:
        if not req.container_id:
            raise errdefs.InvalidArgument("missing required container_id")
        if req.tty and req.stderr:
            raise errdefs.InvalidArgument("tty and stderr cannot both be true")
        if not (req.stdin or req.stdout or req.stderr):
            raise errdefs.InvalidArgument("one of stdin, stdout, or stderr must be set")
        if not req.cmd:
            raise errdefs.InvalidArgument("exec command must not be empty")
        return f"{self.base_url}/exec/{self.cache.insert('exec', req)}"

    def get_attach(self, req) -> str:
        if not req.container_id:
            raise errdefs.InvalidArgument("missing required container_id")
        if req.tty and req.stderr:
            raise errdefs.InvalidArgument("tty and stderr cannot both be true")
        if not (req.stdin or req.stdout or req.stderr):
            raise errdefs.InvalidArgument("one of stdin, stdout, and stderr must be set")
        return f"{self.base_url}/attach/{self.cache.insert('attach', req)}"

    def get_port_forward(self, req) -> str:
        if not req.pod_sandbox_id:
            raise errdefs.InvalidArgument("missing required pod_sandbox_id")
        for p in req.port:
            if not 0 < p < 65536:
                raise errdefs.InvalidArgument(f"invalid port {p}")
        return f"{self.base_url}/portforward/{self.cache.insert('portforward', req)}"

    # --- the HTTP side -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one bad session must not take the server down
            log.exception("streaming session failed")
        finally:
            self._conns.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass

    async def _reply(self, writer, code: int, body: str,
                     headers: list[tuple[str, str]] | None = None) -> None:
        writer.write(_response(code, body, headers))
        await writer.drain()

    async def _serve(self, reader, writer) -> None:
        try:
            req = await asyncio.wait_for(read_request(reader), HEADER_TIMEOUT)
        except BadRequest as e:
            await self._reply(writer, 400, str(e))
            return
        except TimeoutError:
            return
        if req is None:
            return
        path = req.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            await self._reply(writer, 404, "404 page not found\n")
            return
        if req.method not in ("GET", "POST"):
            await self._reply(writer, 405, "405 method not allowed\n")
            return
        entry = self.cache.consume(unquote(parts[1]))
        if entry is None or entry[0] != parts[0]:
            await self._reply(writer, 404, "404 page not found\n")
            return
        kind, creq = entry
        websocket = (req.header("upgrade").lower() == "websocket"
                     and "upgrade" in req.header("connection").lower())
        if kind == "portforward":
            await self._port_forward(reader, writer, req, creq, websocket)
        else:
            await self._remote_command(reader, writer, req, kind, creq, websocket)

    async def _spdy_upgrade(self, writer, req: HTTPRequest, protocols: list[str]) -> str | None:
        chosen = _negotiate(req.header_list("X-Stream-Protocol-Version"), protocols)
        if chosen is None:
            offered = req.header_list("X-Stream-Protocol-Version")
            await self._reply(writer, 403, "unable to upgrade: unable to negotiate protocol: "
                              f"client supports {offered}, server accepts {protocols}",
                              [("X-Accepted-Stream-Protocol-Versions", p) for p in protocols])
            return None
        if ("upgrade" not in req.header("connection").lower()
                or "spdy/3.1" not in req.header("upgrade").lower()):
            await self._reply(writer, 400, "unable to upgrade: missing upgrade headers in "
                                           "request")
            return None
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if chosen:
            headers.append(("X-Stream-Protocol-Version", chosen))
        writer.write(_response(101, headers=headers))
        await writer.drain()
        return chosen

    async def _ws_upgrade(self, writer, req: HTTPRequest, protocols: list[str]):
        """(sans-I/O protocol, subprotocol) after a 101, or None after an error reply."""
        from websockets.server import ServerProtocol

        offered = req.header_list("Sec-WebSocket-Protocol")
        chosen = _negotiate(offered, protocols)
        proto = ServerProtocol(select_subprotocol=lambda _p, _offered: chosen or None,
                               max_size=WS_MAX_MESSAGE)
        proto.receive_data(req.raw)
        events = proto.events_received()
        if not events:
            await self._reply(writer, 400, "invalid WebSocket handshake")
            return None
        if chosen is None:
            resp = proto.reject(403, f"requested protocol(s) are not supported: {offered}; "
                                     f"supports {protocols}\n")
        else:
            resp = proto.accept(events[0])
        proto.send_response(resp)
        for chunk in proto.data_to_send():
            writer.write(chunk)
        await writer.drain()
        if resp.status_code != 101:
            return None
        if req.rest:
            proto.receive_data(req.rest)
        return proto, chosen or ""

    async def _remote_command(self, reader, writer, req: HTTPRequest, kind: str, creq,
                              websocket: bool) -> None:
        opts = remotecommand.Options(stdin=creq.stdin, stdout=creq.stdout,
                                     stderr=creq.stderr and not creq.tty, tty=creq.tty)
        fn = self.backend.exec if kind == "exec" else self.backend.attach
        what = ("error executing command in container" if kind == "exec"
                else "error attaching to container")

        async def backend(streams):
            return await fn(creq, streams)

        if websocket:
            up = await self._ws_upgrade(writer, req, remotecommand.WS_PROTOCOLS)
            if up is None:
                return
            proto, sub = up
            await remotecommand.serve_ws(reader, writer, proto, sub, opts, backend, what,
                                         self.idle_timeout)
            return
        protocol = await self._spdy_upgrade(writer, req, remotecommand.SPDY_PROTOCOLS)
        if protocol is None:
            return
        await remotecommand.serve_spdy(reader, writer, req.rest, protocol, opts, backend,
                                       what, self.creation_timeout, self.idle_timeout)

    async def _port_forward(self, reader, writer, req: HTTPRequest, creq,
                            websocket: bool) -> None:
        sid = creq.pod_sandbox_id

        async def forward(port, stream, gone):
            await self.backend.port_forward(sid, port, stream, gone)

        if websocket:
            ports = list(creq.port)
            if not ports:
                await self._reply(writer, 400, "at least one port must be specified for a "
                                               "WebSocket port-forward")
                return
            up = await self._ws_upgrade(writer, req, portforward.WS_PROTOCOLS)
            if up is None:
                return
            proto, sub = up
            await portforward.serve_ws(reader, writer, proto, sub, sid, ports, forward,
                                       self.idle_timeout)
            return
        if await self._spdy_upgrade(writer, req, portforward.SPDY_PROTOCOLS) is None:
            return
        await portforward.serve_spdy(reader, writer, req.rest, sid, forward,
                                     self.creation_timeout, self.idle_timeout)
