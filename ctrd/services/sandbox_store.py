"""containerd.services.sandbox.v1.Store over the metadata sandbox store
(:mod:`ctrd.metadata.sandboxes`; containerd's ``plugins/services/sandbox/store_service.go``).

The wire form of a sandbox is ``containerd.types.Sandbox``; :func:`sandbox_to_pb` and
:func:`sandbox_from_pb` are shared with the Controller service. List takes containerd's
sandbox filters (``id``, ``labels.<key>``).
"""

from __future__ import annotations

import asyncio

from google.protobuf import timestamp_pb2

from ctrd.api.containerd.services.sandbox.v1 import sandbox_pb2 as pb
from ctrd.api.containerd.services.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from ctrd.api.containerd.types import sandbox_pb2 as types_pb
from ctrd.metadata.containers import AnyValue, Runtime
from ctrd.metadata.sandboxes import Sandbox, SandboxStore
from ctrd.services.containers import fill_record_pb
from ctrd.services.grpcutil import namespace


def ts_ns(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def sandbox_to_pb(s: Sandbox) -> types_pb.Sandbox:
    p = types_pb.Sandbox(sandbox_id=s.id, labels=s.labels, sandboxer=s.sandboxer,
                         created_at=ts_ns(s.created_at), updated_at=ts_ns(s.updated_at))
    fill_record_pb(p, s.runtime, s.spec, s.extensions)
    return p


def sandbox_from_pb(p: types_pb.Sandbox) -> Sandbox:
    options = None
    if p.runtime.HasField("options"):
        options = AnyValue(p.runtime.options.type_url, p.runtime.options.value)
    spec = AnyValue(p.spec.type_url, p.spec.value) if p.HasField("spec") else None
    return Sandbox(id=p.sandbox_id, runtime=Runtime(p.runtime.name, options), spec=spec,
                   labels=dict(p.labels),
                   extensions={k: AnyValue(v.type_url, v.value)
                               for k, v in p.extensions.items()},
                   sandboxer=p.sandboxer,
                   created_at=p.created_at.ToNanoseconds(),
                   updated_at=p.updated_at.ToNanoseconds())


def matcher(exprs: list[str]):
    """containerd's sandbox filter adaptor: ``id`` and ``labels.<key>``; None for none."""
    if not exprs:
        return None
    from ctrd import filters

    f = filters.parse_store_filters(exprs)
    return lambda s: f.match(filters.adaptor_from({"id": s.id}, s.labels))


class SandboxStoreService(pb_grpc.StoreServicer):
    def __init__(self, sandboxes: SandboxStore) -> None:
        self.sandboxes = sandboxes

    def register_grpc(self, server) -> None:
        pb_grpc.add_StoreServicer_to_server(self, server)

    async def Create(self, request, context):
        s = await asyncio.to_thread(self.sandboxes.create, namespace(context),
                                    sandbox_from_pb(request.sandbox))
        return pb.StoreCreateResponse(sandbox=sandbox_to_pb(s))

    async def Update(self, request, context):
        s = await asyncio.to_thread(self.sandboxes.update, namespace(context),
                                    sandbox_from_pb(request.sandbox), list(request.fields))
        return pb.StoreUpdateResponse(sandbox=sandbox_to_pb(s))

    async def List(self, request, context):
        match = matcher(list(request.filters))
        found = await asyncio.to_thread(self.sandboxes.list, namespace(context), match)
        return pb.StoreListResponse(list=[sandbox_to_pb(s) for s in found])

    async def Get(self, request, context):
        s = self.sandboxes.get(namespace(context), request.sandbox_id)  # one read: on the loop
        return pb.StoreGetResponse(sandbox=sandbox_to_pb(s))

    async def Delete(self, request, context):
        await asyncio.to_thread(self.sandboxes.delete, namespace(context), request.sandbox_id)
        return pb.StoreDeleteResponse()
