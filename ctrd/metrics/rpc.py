"""gRPC server metrics under go-grpc-prometheus' names (what containerd registers):
``grpc_server_started_total`` and ``grpc_server_handled_total`` (with ``grpc_code``) per
``grpc_type``/``grpc_service``/``grpc_method``, and with ``grpc_histogram`` the
``grpc_server_handling_seconds`` histogram. :meth:`RpcMetrics.call` is what the dispatcher's
wrappers call per RPC: label lookups are done once per method."""

from __future__ import annotations

from typing import Any

LABELS = ("grpc_type", "grpc_service", "grpc_method")


class RpcMetrics:
    def __init__(self, registry: Any, histogram: bool = False) -> None:
        from prometheus_client import Counter, Histogram

        self.started = Counter("grpc_server_started", "Total number of RPCs started on the "
                               "server.", LABELS, registry=registry)
        self.handled = Counter("grpc_server_handled", "Total number of RPCs completed on "
                               "the server, regardless of success or failure.",
                               LABELS + ("grpc_code",), registry=registry)
        self.seconds = Histogram(
            "grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
            "that had been application-level handled by the server.", LABELS,
            registry=registry) if histogram else None

    def method(self, method: str, kind: str) -> "MethodMetrics":
        service, _, name = method.lstrip("/").rpartition("/")
        labels = (kind, service, name)
        return MethodMetrics(self, labels)


class MethodMetrics:
    """One method's children of the families (made once, at registration)."""

    def __init__(self, m: RpcMetrics, labels: tuple[str, str, str]) -> None:
        self._m, self._labels = m, labels
        self._started = m.started.labels(*labels)
        self._handled: dict[str, Any] = {}
        self._seconds = m.seconds.labels(*labels) if m.seconds is not None else None

    def start(self) -> None:
        self._started.inc()

    def done(self, code: str, seconds: float) -> None:
        h = self._handled.get(code)
        if h is None:
            h = self._handled[code] = self._m.handled.labels(*self._labels, code)
        h.inc()
        if self._seconds is not None:
            self._seconds.observe(seconds)
