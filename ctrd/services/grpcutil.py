"""The gRPC edge: error mapping (the one place CtrdError becomes a status) and call metadata.

Every handler of the daemon's server is wrapped (:func:`_wrap`): a :class:`CtrdError` becomes
its kind's code with containerd's message format; any other exception is logged with its
traceback and becomes UNKNOWN (the call fails, the daemon keeps serving). The daemon's server
has one generic handler, a :class:`Dispatcher`, that services register on and that wraps each
method's handler once; :class:`ErrorInterceptor` does the same wrapping per call for a plain
``aio.server`` (tests).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any

import grpc
from grpc import aio

from ctrd import errdefs, identifiers

log = logging.getLogger("ctrd.grpc")

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"


def _metadata(context: aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v
    return None


def namespace(context: aio.ServicerContext) -> str:
    """The call's namespace (``containerd-namespace`` metadata); required and validated."""
    ns = _metadata(context, NAMESPACE_HEADER)
    if not ns:
        raise errdefs.FailedPrecondition("namespace is required")
    try:
        return identifiers.validate(ns)
    except errdefs.InvalidArgument as e:
        raise errdefs.InvalidArgument(f"namespace validation: {e.detail}") from None


def lease(context: aio.ServicerContext) -> str | None:
    return _metadata(context, LEASE_HEADER)


# Status messages travel in HTTP/2 trailers, which clients cap at 8 KiB in all.
MAX_MESSAGE = 4096
_KEEP_TAIL = 256  # a cut message keeps its end: the ": <kind>" suffix clients parse


def bounded(message: str) -> str:
    """``message`` within :data:`MAX_MESSAGE` characters: over it, its middle is cut (an echo
    of a 5000-character id, say) and the end -- where containerd's errors say what kind
    they are, ``...: not found`` -- is kept."""
    if len(message) <= MAX_MESSAGE:
        return message
    mark = "... (truncated) ..."
    return message[:MAX_MESSAGE - _KEEP_TAIL - len(mark)] + mark + message[-_KEEP_TAIL:]


async def _abort(context: aio.ServicerContext, err: BaseException, method: str) -> None:
    code, message = errdefs.to_status(err)
    message = bounded(message)
    if code == errdefs.UNKNOWN and not isinstance(err, errdefs.CtrdError):
        log.error("unexpected error in %s", method, exc_info=err)
    await context.abort(grpc.StatusCode(_CODES[code]), message)


_CODES = {c.value[0]: c.value for c in grpc.StatusCode}


def _wrap(handler: grpc.RpcMethodHandler, method: str, metrics=None) -> grpc.RpcMethodHandler:
    wrapped = _wrap_errors(handler, method)
    return wrapped if metrics is None else _counted(wrapped, method, metrics)


def _status_of(context: aio.ServicerContext, err: BaseException | None) -> str:
    """The gRPC code name an RPC ended with (go-grpc-prometheus' ``grpc_code`` values)."""
    if err is None:
        code = context.code() if hasattr(context, "code") else None
        return code.name if isinstance(code, grpc.StatusCode) else "OK"
    if isinstance(err, aio.AbortError):
        code = context.code() if hasattr(context, "code") else None
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if isinstance(err, asyncio.CancelledError):
        return "CANCELLED"
    return grpc.StatusCode(_CODES[errdefs.to_status(err)[0]]).name


_GRPC_CODE_NAMES = {c.name: "".join(w.capitalize() for w in c.name.split("_"))
                    for c in grpc.StatusCode}
_GRPC_CODE_NAMES.update(OK="OK", CANCELLED="Canceled")  # Go's codes.Code.String()


def _counted(handler: grpc.RpcMethodHandler, method: str, metrics) -> grpc.RpcMethodHandler:
    """``handler`` (already error-mapped) with its starts, ends and time counted."""
    kind = ("unary" if handler.unary_unary else "server_stream" if handler.unary_stream
            else "bidi_stream" if handler.stream_stream else "client_stream")
    m = metrics.method(method, kind)
    inner = (handler.unary_unary or handler.unary_stream or handler.stream_stream
             or handler.stream_unary)

    def finish(context, err, t0) -> None:
        m.done(_GRPC_CODE_NAMES.get(_status_of(context, err), "Unknown"),
               time.monotonic() - t0)

    if inspect.isasyncgenfunction(inner):
        async def gen(request: Any, context: aio.ServicerContext):
            m.start()
            t0, err = time.monotonic(), None
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as e:
                err = e
                raise
            finally:
                finish(context, err, t0)

        fn = gen
    else:
        async def call(request: Any, context: aio.ServicerContext) -> Any:
            m.start()
            t0, err = time.monotonic(), None
            try:
                return await inner(request, context)
            except BaseException as e:
                err = e
                raise
            finally:
                finish(context, err, t0)

        fn = call
    make = (grpc.unary_unary_rpc_method_handler if handler.unary_unary
            else grpc.unary_stream_rpc_method_handler if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler if handler.stream_stream
            else grpc.stream_unary_rpc_method_handler)
    return make(fn, handler.request_deserializer, handler.response_serializer)


def _wrap_errors(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: aio.ServicerContext) -> Any:
            t0 = time.monotonic()
            try:
                return await inner(request, context)
            except (aio.AbortError, aio.UsageError):
                raise
            except Exception as e:  # noqa: BLE001 - mapped to a status in one place
                await _abort(context, e, method)
            finally:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s took %.1f ms", method, (time.monotonic() - t0) * 1000)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream or handler.stream_stream:
        inner_s = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: aio.ServicerContext):
            try:
                async for item in inner_s(request, context):
                    yield item
            except (aio.AbortError, aio.UsageError):
                raise
            except Exception as e:  # noqa: BLE001
                await _abort(context, e, method)

        async def reader_writer(request: Any, context: aio.ServicerContext) -> None:
            # A handler that talks through context.read()/write() (both directions at once,
            # e.g. the Streaming service) must not be wrapped in a generator: grpc refuses
            # the two response styles mixed.
            try:
                await inner_s(request, context)
            except (aio.AbortError, aio.UsageError):
                raise
            except Exception as e:  # noqa: BLE001
                await _abort(context, e, method)

        make = (grpc.unary_stream_rpc_method_handler if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler)
        wrapper = streaming if inspect.isasyncgenfunction(inner_s) else reader_writer
        return make(wrapper, handler.request_deserializer, handler.response_serializer)
    inner_su = handler.stream_unary

    async def stream_unary(request_iterator: Any, context: aio.ServicerContext) -> Any:
        try:
            return await inner_su(request_iterator, context)
        except (aio.AbortError, aio.UsageError):
            raise
        except Exception as e:  # noqa: BLE001
            await _abort(context, e, method)

    return grpc.stream_unary_rpc_method_handler(
        stream_unary, handler.request_deserializer, handler.response_serializer)


class Dispatcher(grpc.GenericRpcHandler):
    """The daemon server's one generic handler. Services register on it as on a server
    (``add_generic_rpc_handlers``, ``add_registered_method_handlers``: what generated
    ``add_*Servicer_to_server`` functions call); a method's handler is wrapped with the error
    mapping once, at registration or on its first call, and then found by one dict lookup.

    Why not an ``aio.ServerInterceptor``: grpc runs interceptors as a coroutine chain on every
    call and the wrapper was rebuilt per call, and each lazy service's generic handler was
    asked in turn; over the ~30 calls of one ``ctr run`` that was a measurable part of the
    daemon's CPU. A generic handler's answer for a method is taken as fixed once given (as a
    registered handler is); methods no handler knows are asked again on every call."""

    def __init__(self, metrics=None) -> None:
        self._generic: list[grpc.GenericRpcHandler] = []
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.metrics = metrics  # ctrd.metrics.rpc.RpcMetrics when metrics are served

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        self._generic.extend(generic_handlers)

    def add_registered_method_handlers(self, service: str, method_handlers: dict) -> None:
        for name, h in method_handlers.items():
            method = f"/{service}/{name}"
            if method not in self._handlers:
                self._handlers[method] = _wrap(h, method, self.metrics)

    def service(self, handler_call_details):
        method = handler_call_details.method
        h = self._handlers.get(method)
        if h is None:
            for g in self._generic:
                found = g.service(handler_call_details)
                if found is not None:
                    h = self._handlers[method] = _wrap(found, method, self.metrics)
                    break
        return h


class ErrorInterceptor(aio.ServerInterceptor):
    """The same error mapping for a plain ``aio.server`` (wraps per call)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(handler, handler_call_details.method)
