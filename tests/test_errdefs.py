"""ctrd.errdefs: every kind maps to its gRPC code and back, in process and over both wire edges
(the daemon's gRPC dispatcher and the ttrpc server/client), including RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc import aio

from ctrd import errdefs
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as pb
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from ctrd.api.containerd.services.ttrpc.events.v1 import events_pb2
from ctrd.services.grpcutil import Dispatcher
from ctrd.ttrpc import framing
from ctrd.ttrpc.client import Client
from ctrd.ttrpc.server import Server

NS = (("containerd-namespace", "default"),)
EVENTS = events_pb2.DESCRIPTOR.services_by_name["Events"]

# kind -> (gRPC code number, grpc.StatusCode): containerd's errdefs.ToGRPC, plus the one kind
# containerd 1.6 answers only with statuses made in place (RESOURCE_EXHAUSTED)
KINDS = [
    (errdefs.InvalidArgument, 3, grpc.StatusCode.INVALID_ARGUMENT),
    (errdefs.NotFound, 5, grpc.StatusCode.NOT_FOUND),
    (errdefs.AlreadyExists, 6, grpc.StatusCode.ALREADY_EXISTS),
    (errdefs.FailedPrecondition, 9, grpc.StatusCode.FAILED_PRECONDITION),
    (errdefs.Unavailable, 14, grpc.StatusCode.UNAVAILABLE),
    (errdefs.ResourceExhausted, 8, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errdefs.NotImplemented_, 12, grpc.StatusCode.UNIMPLEMENTED),
    (errdefs.Canceled, 1, grpc.StatusCode.CANCELLED),
    (errdefs.DeadlineExceeded, 4, grpc.StatusCode.DEADLINE_EXCEEDED),
]
BY_NAME = {cls.__name__: cls for cls, _, _ in KINDS}


class Verbatim(errdefs.ResourceExhausted):
    """A status made in place, as the kubelet's streaming cache makes its own: no kind suffix."""

    def __init__(self) -> None:
        super().__init__("maximum number of in-flight requests exceeded")
        self.args = (self.detail,)


@pytest.mark.parametrize("cls,code,status", KINDS, ids=[k[0].__name__ for k in KINDS])
def test_kind_maps_to_its_code_and_back(cls, code, status):
    assert cls.code == code == status.value[0]
    err = cls("thing x")
    assert errdefs.to_status(err) == (code, f"thing x: {cls.kind}")
    back = errdefs.from_status(code, f"thing x: {cls.kind}")
    assert type(back) is cls and back.detail == "thing x" and str(back) == str(err)
    assert type(errdefs.from_status(code, cls.kind)) is cls


def test_resource_exhausted_kind_and_verbatim_message():
    assert str(errdefs.ResourceExhausted("too many")) == "too many: resource exhausted"
    assert errdefs.RESOURCE_EXHAUSTED == 8 == framing.RESOURCE_EXHAUSTED
    v = Verbatim()
    assert errdefs.to_status(v) == (8, "maximum number of in-flight requests exceeded")
    # a peer's message without the kind keeps its text
    back = errdefs.from_status(8, "message length 5 exceed maximum message size of 4")
    assert isinstance(back, errdefs.ResourceExhausted)
    assert back.detail == "message length 5 exceed maximum message size of 4"


# --- over gRPC (the daemon's dispatcher) ------------------------------------------------------

class Namespaces(pb_grpc.NamespacesServicer):
    """Get raises the kind named by the request's name ("Verbatim": the made-in-place one)."""

    async def Get(self, request, context):
        if request.name == "Verbatim":
            raise Verbatim()
        if request.name in BY_NAME:
            raise BY_NAME[request.name](f"namespace {request.name}")
        return pb.GetNamespaceResponse(namespace=pb.Namespace(name=request.name))


def test_every_kind_over_grpc(tmp_path):
    async def body():
        server = aio.server()
        dispatcher = Dispatcher()
        server.add_generic_rpc_handlers((dispatcher,))
        pb_grpc.add_NamespacesServicer_to_server(Namespaces(), dispatcher)
        path = os.path.join(tmp_path, "s.sock")
        server.add_insecure_port("unix:" + path)
        await server.start()
        channel = aio.insecure_channel("unix:" + path)
        try:
            stub = pb_grpc.NamespacesStub(channel)
            for cls, _, status in KINDS:
                with pytest.raises(aio.AioRpcError) as e:
                    await stub.Get(pb.GetNamespaceRequest(name=cls.__name__), metadata=NS)
                assert e.value.code() == status, cls
                assert e.value.details() == f"namespace {cls.__name__}: {cls.kind}"
            with pytest.raises(aio.AioRpcError) as e:
                await stub.Get(pb.GetNamespaceRequest(name="Verbatim"), metadata=NS)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert e.value.details() == "maximum number of in-flight requests exceeded"
            # the server answers on
            r = await stub.Get(pb.GetNamespaceRequest(name="ok"), metadata=NS)
            assert r.namespace.name == "ok"
        finally:
            await channel.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(body(), 30))


# --- over ttrpc (our server and client) -------------------------------------------------------

class Events:
    """Forward raises the kind named by the envelope's topic ("/Verbatim": the made-in-place
    one)."""

    async def Forward(self, request, ctx):
        name = request.envelope.topic.lstrip("/")
        if name == "Verbatim":
            raise Verbatim()
        if name in BY_NAME:
            raise BY_NAME[name](f"topic {name}")
        return empty_pb2.Empty()


def forward(topic: str):
    req = events_pb2.ForwardRequest()
    req.envelope.topic = topic
    return req


def test_every_kind_over_ttrpc(tmp_path):
    async def body():
        server = Server()
        server.register_service(EVENTS, Events())
        path = str(tmp_path / "t.sock")
        await server.start(path)
        client = await Client.connect(path)
        svc = EVENTS.full_name
        try:
            for cls, _, _ in KINDS:
                with pytest.raises(errdefs.CtrdError) as e:
                    await client.call(svc, "Forward", forward(f"/{cls.__name__}"),
                                      empty_pb2.Empty, timeout=10)
                assert type(e.value) is cls
                assert str(e.value) == f"topic {cls.__name__}: {cls.kind}"
            with pytest.raises(errdefs.ResourceExhausted) as e:
                await client.call(svc, "Forward", forward("/Verbatim"), empty_pb2.Empty,
                                  timeout=10)
            assert e.value.detail == "maximum number of in-flight requests exceeded"
            await client.call(svc, "Forward", forward("/ok"), empty_pb2.Empty, timeout=10)
        finally:
            await client.close()
            await server.stop(grace=1)
        assert not os.path.exists(path)

    asyncio.run(asyncio.wait_for(body(), 30))
