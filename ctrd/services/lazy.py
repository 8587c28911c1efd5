"""Services that import and build themselves on their first call.

Start-up cost in Python is import cost: the protobuf runtime alone takes tens of ms to
initialise, each service's generated modules and implementation more (bench/README.md,
"Figures the code cites"). A plugin whose
init returns a :class:`LazyService` costs nothing until a client calls one of its services;
the gRPC server asks it for handlers by method name (a generic handler), the ttrpc server
likewise. What the first call pays, later calls do not.

:class:`LazyObject` does the same for an in-process object (e.g. the event exchange that
services publish to): the object is built on first attribute access.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable


class LazyObject:
    """A stand-in that builds the real object on first attribute access (thread-safe)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        object.__setattr__(self, "_build", build)
        object.__setattr__(self, "_obj", None)
        object.__setattr__(self, "_lock", threading.Lock())

    def _get(self) -> Any:
        obj = object.__getattribute__(self, "_obj")
        if obj is None:
            with object.__getattribute__(self, "_lock"):
                obj = object.__getattribute__(self, "_obj")
                if obj is None:
                    obj = object.__getattribute__(self, "_build")()
                    object.__setattr__(self, "_obj", obj)
        return obj

    @property
    def built(self) -> bool:
        return object.__getattribute__(self, "_obj") is not None

    # The daemon probes plugin instances for these; probing must not build the object.
    _PROBED = frozenset({"register_grpc", "register_ttrpc", "set_serving", "close"})

    def __getattr__(self, name: str) -> Any:
        if name in LazyObject._PROBED and not self.built:
            raise AttributeError(name)
        return getattr(self._get(), name)


class _Capture:
    """Collects the method handlers a generated ``add_*Servicer_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}  # "/pkg.Service/Method" -> RpcMethodHandler

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        for method, h in handlers.items():
            self.handlers[f"/{service}/{method}"] = h

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        # Generated code calls both; handlers already came through the call above.
        pass


class LazyService(LazyObject):
    """A plugin instance serving ``grpc_services`` (and ``ttrpc_services``) by full name,
    built by ``build()`` on the first call to any of them.

    The built object is an ordinary service instance: it has ``register_grpc(server)`` (and
    ``register_ttrpc(server)``), and optionally ``set_serving`` and ``close``.
    """

    def __init__(self, build: Callable[[], Any], grpc_services: tuple[str, ...] = (),
                 ttrpc_services: tuple[str, ...] = (), warm: bool = True) -> None:
        """``warm=False``: not built by the daemon's idle warm-up, only by its first call
        (for big services whose clients are few and patient, e.g. the CRI's)."""
        super().__init__(build)
        object.__setattr__(self, "_warm", warm)
        object.__setattr__(self, "_grpc_services", grpc_services)
        object.__setattr__(self, "_ttrpc_services", ttrpc_services)
        object.__setattr__(self, "_handlers", None)
        object.__setattr__(self, "_serving", True)

    # gRPC: a generic handler answering for our services' methods.
    def register_grpc(self, server) -> None:
        if object.__getattribute__(self, "_grpc_services"):
            server.add_generic_rpc_handlers((_GenericHandler(self),))

    def _handler(self, method: str):
        handlers = object.__getattribute__(self, "_handlers")
        if handlers is None:
            capture = _Capture()
            obj = self._get()
            obj.register_grpc(capture)
            if not object.__getattribute__(self, "_serving") and hasattr(obj, "set_serving"):
                asyncio.ensure_future(obj.set_serving(False))
            handlers = capture.handlers
            object.__setattr__(self, "_handlers", handlers)
        return handlers.get(method)

    def warm(self) -> None:
        """Build now (the daemon does this for every lazy service once it is serving and
        idle, so only calls that arrive before then pay for the imports)."""
        if object.__getattribute__(self, "_warm"):
            self._handler("")

    def owns(self, method: str) -> bool:
        service = method[1:].rpartition("/")[0]
        return service in object.__getattribute__(self, "_grpc_services")

    # ttrpc: the server builds us when one of our services is first called.
    def register_ttrpc(self, server) -> None:
        for name in object.__getattribute__(self, "_ttrpc_services"):
            server.register_lazy(name, lambda srv: self._get().register_ttrpc(srv))

    async def set_serving(self, serving: bool) -> None:
        object.__setattr__(self, "_serving", serving)
        if self.built and hasattr(self._get(), "set_serving"):
            await self._get().set_serving(serving)

    async def close(self) -> None:
        if self.built and hasattr(self._get(), "close"):
            result = self._get().close()
            if asyncio.iscoroutine(result):
                await result


class _GenericHandler:
    """grpc.GenericRpcHandler for one LazyService."""

    def __init__(self, lazy: LazyService) -> None:
        self._lazy = lazy

    def service(self, handler_call_details):
        method = handler_call_details.method
        if not self._lazy.owns(method):
            return None
        return self._lazy._handler(method)
