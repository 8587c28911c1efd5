"""Sans-I/O ttrpc calls: a request frame's payload to a decoded call, a result to a response
frame. Shared by the daemon's asyncio server (:mod:`ctrd.ttrpc.server`) and the shim's epoll
server (:mod:`ctrd.runtime.shim.server`), so both answer bad input the same way:

- a payload that is not a ttrpc Request: INVALID_ARGUMENT ``ttrpc: malformed request``;
- an unknown service/method: UNIMPLEMENTED ``<service>/<method>: method not implemented``;
- a payload its request type cannot parse: INVALID_ARGUMENT ``... malformed <Type>``;
- a response larger than a frame may be: RESOURCE_EXHAUSTED instead.

Kept free of asyncio and dataclasses (the shim imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ctrd import errdefs
from ctrd.ttrpc import framing


def _pb():
    from ctrd.api.ttrpc import ttrpc_pb2

    return ttrpc_pb2


class BadCall(Exception):
    """A request that cannot be served: answer with ``code`` and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Call:
    """One decoded request: its method, metadata (key -> values), the client's timeout in
    seconds (None: none), the parsed request message and the handler that serves it."""

    __slots__ = ("service", "method", "metadata", "timeout", "request", "handler")

    def __init__(self, service: str, method: str, metadata: dict[str, list[str]],
                 timeout: float | None, request: Any, handler: Any) -> None:
        self.service, self.method, self.metadata = service, method, metadata
        self.timeout, self.request, self.handler = timeout, request, handler


Lookup = Callable[[str, str], "tuple[type, Any] | None"]


def decode(payload: bytes, lookup: Lookup) -> Call:
    """The call a request frame carries; ``lookup(service, method)`` gives (request type,
    handler) or None. Raises :class:`BadCall`."""
    req = _pb().Request()
    try:
        req.ParseFromString(payload)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise BadCall(errdefs.INVALID_ARGUMENT, "ttrpc: malformed request") from None
    entry = lookup(req.service, req.method)
    if entry is None:
        raise BadCall(errdefs.UNIMPLEMENTED,
                      f"{req.service}/{req.method}: method not implemented")
    request_type, handler = entry
    md: dict[str, list[str]] = {}
    for kv in req.metadata:
        md.setdefault(kv.key, []).append(kv.value)
    msg = request_type()
    try:
        msg.ParseFromString(req.payload)
    except Exception:  # noqa: BLE001
        raise BadCall(errdefs.INVALID_ARGUMENT,
                      f"{req.service}/{req.method}: malformed {request_type.__name__}") from None
    timeout = req.timeout_nano / 1e9 if req.timeout_nano > 0 else None
    return Call(req.service, req.method, md, timeout, msg, handler)


def response(stream_id: int, code: int, message: str, payload: bytes = b"") -> bytes:
    """A response frame (status ``code``/``message``, ``payload`` when OK)."""
    resp = _pb().Response(payload=payload)
    resp.status.code = code
    resp.status.message = message
    try:
        return framing.encode(stream_id, framing.TYPE_RESPONSE, resp.SerializeToString())
    except ValueError as e:  # the response itself is too large
        return response(stream_id, framing.RESOURCE_EXHAUSTED, str(e))
