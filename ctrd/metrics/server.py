"""The metrics listener: ``GET /v1/metrics`` in the text exposition format; any other path is
404 and any other method 405. A thread serves it (prometheus-client's threading WSGI server):
collection runs in that thread, never on the daemon's event loop.

Lifecycle: :meth:`MetricsServer.start` binds (an address already taken is a clear error
naming it), :meth:`MetricsServer.close` stops it and closes the socket."""

from __future__ import annotations

import threading
from typing import Any

from ctrd import errdefs

PATH = "/v1/metrics"


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``, ``:port`` for every address) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise errdefs.InvalidArgument(f"metrics address {address!r}: want host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    def __init__(self, address: str, registry: Any) -> None:
        self.host, self.port = parse_address(address)
        self.registry = registry
        self._server = None
        self._thread: threading.Thread | None = None

    def _app(self, environ, start_response):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"404 page not found\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
            return [b"method not allowed\n"]
        body = generate_latest(self.registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client.exposition import ThreadingWSGIServer

        class Quiet(WSGIRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - wsgiref's signature
                pass

        try:
            self._server = make_server(self.host, self.port, self._app, ThreadingWSGIServer,
                                       handler_class=Quiet)
        except OSError as e:
            raise errdefs.FailedPrecondition(
                f"metrics: cannot listen on {self.host}:{self.port}: {e.strerror}") from None
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="ctrd-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
