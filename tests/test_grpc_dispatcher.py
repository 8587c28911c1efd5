"""The daemon's gRPC dispatcher (ctrd.services.grpcutil.Dispatcher), in-process over a unix
socket: errors map to containerd's codes through it, unknown methods are UNIMPLEMENTED, a
generic handler is asked once per method, and a lazy service builds on its first call."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from grpc import aio

from ctrd import errdefs
from ctrd.api.containerd.services.containers.v1 import containers_pb2 as cpb
from ctrd.api.containerd.services.containers.v1 import containers_pb2_grpc as cpb_grpc
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as pb
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from ctrd.services.grpcutil import Dispatcher
from ctrd.services.lazy import LazyService

NS = (("containerd-namespace", "default"),)
SERVICE = "containerd.services.namespaces.v1.Namespaces"


class Namespaces(pb_grpc.NamespacesServicer):
    async def Get(self, request, context):
        if request.name == "missing":
            raise errdefs.NotFound(f"namespace {request.name}")
        if request.name == "boom":
            raise RuntimeError("not a CtrdError")
        return pb.GetNamespaceResponse(namespace=pb.Namespace(name=request.name))

    def register_grpc(self, server) -> None:
        pb_grpc.add_NamespacesServicer_to_server(self, server)


class Counting(grpc.GenericRpcHandler):
    """A generic handler (no registered methods) that counts how often it is asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._handlers: dict = {}
        Namespaces().register_grpc(self)  # collects the plain handlers (methods below)

    def add_registered_method_handlers(self, service, handlers) -> None:
        for name, h in handlers.items():
            self._handlers[f"/{service}/{name}"] = h

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        pass

    def service(self, details):
        self.asked.append(details.method)
        return self._handlers.get(details.method)


async def _serve(path: str, register) -> tuple[aio.Server, aio.Channel]:
    server = aio.server()
    dispatcher = Dispatcher()
    server.add_generic_rpc_handlers((dispatcher,))
    register(dispatcher)
    server.add_insecure_port("unix:" + path)
    await server.start()
    return server, aio.insecure_channel("unix:" + path)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("how", ["registered", "lazy"])
def test_errors_map_through_dispatcher(tmp_path, how):
    built = []

    def register(d):
        if how == "registered":
            Namespaces().register_grpc(d)
        else:
            LazyService(lambda: built.append(1) or Namespaces(), (SERVICE,)).register_grpc(d)

    async def body():
        server, channel = await _serve(os.path.join(tmp_path, "s.sock"), register)
        try:
            stub = pb_grpc.NamespacesStub(channel)
            cstub = cpb_grpc.ContainersStub(channel)
            assert not built
            r = await stub.Get(pb.GetNamespaceRequest(name="x"), metadata=NS)
            assert r.namespace.name == "x"
            with pytest.raises(aio.AioRpcError) as e:
                await stub.Get(pb.GetNamespaceRequest(name="missing"), metadata=NS)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert e.value.details() == "namespace missing: not found"
            with pytest.raises(aio.AioRpcError) as e:
                await stub.Get(pb.GetNamespaceRequest(name="boom"), metadata=NS)
            assert e.value.code() == grpc.StatusCode.UNKNOWN
            with pytest.raises(aio.AioRpcError) as e:  # a service nobody registered
                await cstub.Get(cpb.GetContainerRequest(id="x"), metadata=NS)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # the server still answers after all that
            r = await stub.Get(pb.GetNamespaceRequest(name="y"), metadata=NS)
            assert r.namespace.name == "y"
            if how == "lazy":
                assert built == [1]
        finally:
            await channel.close()
            await server.stop(0)

    run(body())


def test_generic_handler_asked_once_per_method(tmp_path):
    counting = Counting()

    async def body():
        server, channel = await _serve(os.path.join(tmp_path, "s.sock"),
                                       lambda d: d.add_generic_rpc_handlers((counting,)))
        try:
            stub = pb_grpc.NamespacesStub(channel)
            for name in ("a", "b", "c"):
                await stub.Get(pb.GetNamespaceRequest(name=name), metadata=NS)
            with pytest.raises(aio.AioRpcError) as e:
                await stub.Get(pb.GetNamespaceRequest(name="missing"), metadata=NS)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            cstub = cpb_grpc.ContainersStub(channel)
            for _ in range(2):  # a method nobody serves is asked about each time
                with pytest.raises(aio.AioRpcError) as e:
                    await cstub.Get(cpb.GetContainerRequest(id="x"), metadata=NS)
                assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await channel.close()
            await server.stop(0)

    run(body())
    unknown = "/containerd.services.containers.v1.Containers/Get"
    assert counting.asked == [f"/{SERVICE}/Get", unknown, unknown]
