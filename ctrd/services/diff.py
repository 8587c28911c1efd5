"""containerd.services.diff.v1.Diff: Apply (a layer onto mounts) and Diff (the changes between
two mount sets, written as a layer into content)."""

from __future__ import annotations

import asyncio

from ctrd.api.containerd.services.diff.v1 import diff_pb2 as pb
from ctrd.api.containerd.services.diff.v1 import diff_pb2_grpc as pb_grpc
from ctrd.api.containerd.types import descriptor_pb2
from ctrd.diff import differ
from ctrd.metadata.content import ContentStore
from ctrd.services.grpcutil import lease, namespace
from ctrd.snapshots.snapshotter import Mount


class DiffService(pb_grpc.DiffServicer):
    def __init__(self, content: ContentStore) -> None:
        self.content = content

    def register_grpc(self, server) -> None:
        pb_grpc.add_DiffServicer_to_server(self, server)

    async def Apply(self, request, context):
        ns = namespace(context)
        desc = differ.Descriptor(request.diff.media_type, request.diff.digest, request.diff.size)
        mounts = [Mount(m.type, m.source, list(m.options), m.target) for m in request.mounts]
        applied = await asyncio.to_thread(differ.apply, self.content, ns, desc, mounts,
                                          request.sync_fs)
        return pb.ApplyResponse(applied=descriptor_pb2.Descriptor(
            media_type=applied.media_type, digest=applied.digest, size=applied.size))

    async def Diff(self, request, context):
        ns = namespace(context)

        def mounts(ms):
            return [Mount(m.type, m.source, list(m.options), m.target) for m in ms]

        created = await asyncio.to_thread(
            differ.diff, self.content, ns, mounts(request.left), mounts(request.right),
            request.media_type, request.ref, dict(request.labels), lease(context),
            request.source_date_epoch.ToNanoseconds() / 1e9
            if request.HasField("source_date_epoch") else None)
        return pb.DiffResponse(diff=descriptor_pb2.Descriptor(
            media_type=created.media_type, digest=created.digest, size=created.size))
