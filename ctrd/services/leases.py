"""containerd.services.leases.v1.Leases over the metadata lease manager."""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from ctrd.api.containerd.services.leases.v1 import leases_pb2 as pb
from ctrd.api.containerd.services.leases.v1 import leases_pb2_grpc as pb_grpc
from ctrd.metadata.leases import Lease, LeaseManager, Resource
from ctrd.services.content import _ts
from ctrd.services.grpcutil import namespace


def lease_to_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(id=lease.id, created_at=_ts(lease.created_at), labels=lease.labels)


class LeasesService(pb_grpc.LeasesServicer):
    def __init__(self, leases: LeaseManager, gc) -> None:
        self.leases = leases
        self.gc = gc  # the GC scheduler, for Delete with sync (None: no GC plugin)

    def register_grpc(self, server) -> None:
        pb_grpc.add_LeasesServicer_to_server(self, server)

    async def Create(self, request, context):
        lease = await asyncio.to_thread(self.leases.create, namespace(context), request.id,
                                        dict(request.labels))
        return pb.CreateResponse(lease=lease_to_pb(lease))

    async def Delete(self, request, context):
        await asyncio.to_thread(self.leases.delete, namespace(context), request.id)
        if request.sync and self.gc is not None:
            await self.gc.schedule_and_wait()
        return empty_pb2.Empty()

    async def List(self, request, context):
        match = None
        if request.filters:
            from ctrd import filters

            f = filters.parse_all(*request.filters)
            match = lambda lease: f.match(filters.adaptor_from(  # noqa: E731
                {"id": lease.id}, lease.labels))
        found = await asyncio.to_thread(self.leases.list, namespace(context), match)
        return pb.ListResponse(leases=[lease_to_pb(x) for x in found])

    async def AddResource(self, request, context):
        await asyncio.to_thread(self.leases.add_resource, namespace(context), request.id,
                                Resource(request.resource.id, request.resource.type))
        return empty_pb2.Empty()

    async def DeleteResource(self, request, context):
        await asyncio.to_thread(self.leases.delete_resource, namespace(context), request.id,
                                Resource(request.resource.id, request.resource.type))
        return empty_pb2.Empty()

    async def ListResources(self, request, context):
        found = await asyncio.to_thread(self.leases.list_resources, namespace(context),
                                        request.id)
        return pb.ListResourcesResponse(resources=[pb.Resource(id=r.id, type=r.type)
                                                   for r in found])
