"""containerd.services.snapshots.v1.Snapshots over the namespaced snapshotters."""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from ctrd.api.containerd.events import snapshot_pb2 as events_pb
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from ctrd.api.containerd.types import mount_pb2
from ctrd.errdefs import InvalidArgument
from ctrd.metadata.snapshots import NamespacedSnapshotter
from ctrd.services.content import _ts
from ctrd.services.grpcutil import lease, namespace
from ctrd.snapshots.snapshotter import Info, Mount

LIST_BATCH = 100


def mounts_to_pb(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                            options=m.options) for m in mounts]


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(name=info.name, parent=info.parent, kind=int(info.kind),
                   created_at=_ts(info.created_at), updated_at=_ts(info.updated_at),
                   labels=info.labels)


async def _read(s: NamespacedSnapshotter, fn, *args):
    """A stat or mounts: on the loop when the snapshotter says they are quick (a worker-thread
    hop costs more CPU than those LMDB reads), else in a worker thread."""
    if s.quick_reads:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


class SnapshotsService(pb_grpc.SnapshotsServicer):
    def __init__(self, snapshotters: dict[str, NamespacedSnapshotter], events) -> None:
        self.snapshotters = snapshotters
        self.events = events

    def register_grpc(self, server) -> None:
        pb_grpc.add_SnapshotsServicer_to_server(self, server)

    def _get(self, name: str) -> NamespacedSnapshotter:
        if not name:
            raise InvalidArgument("snapshotter argument missing")
        s = self.snapshotters.get(name)
        if s is None:
            raise InvalidArgument(f"snapshotter not loaded: {name}")
        return s

    async def Prepare(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        mounts = await asyncio.to_thread(s.prepare, ns, request.key, request.parent,
                                         dict(request.labels), lease(context))
        self.events.publish(ns, "/snapshot/prepare", events_pb.SnapshotPrepare(
            key=request.key, parent=request.parent, snapshotter=request.snapshotter))
        return pb.PrepareSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def View(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        mounts = await asyncio.to_thread(s.view, ns, request.key, request.parent,
                                         dict(request.labels), lease(context))
        return pb.ViewSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def Mounts(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        mounts = await _read(s, s.mounts, ns, request.key)
        return pb.MountsResponse(mounts=mounts_to_pb(mounts))

    async def Commit(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        await asyncio.to_thread(s.commit, ns, request.name, request.key, dict(request.labels),
                                lease(context), request.parent)
        self.events.publish(ns, "/snapshot/commit", events_pb.SnapshotCommit(
            key=request.key, name=request.name, snapshotter=request.snapshotter))
        return empty_pb2.Empty()

    async def Remove(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        await asyncio.to_thread(s.remove, ns, request.key, lease(context))
        self.events.publish(ns, "/snapshot/remove", events_pb.SnapshotRemove(
            key=request.key, snapshotter=request.snapshotter))
        return empty_pb2.Empty()

    async def Stat(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        info = await _read(s, s.stat, ns, request.key)
        return pb.StatSnapshotResponse(info=info_to_pb(info))

    async def Update(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        info = await asyncio.to_thread(s.update, ns, request.info.name,
                                       dict(request.info.labels),
                                       list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_to_pb(info))

    async def List(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        match = None
        if request.filters:
            from ctrd import filters

            f = filters.parse_all(*request.filters)
            kinds = {1: "view", 2: "active", 3: "committed"}
            match = lambda i: f.match(filters.adaptor_from(  # noqa: E731
                {"name": i.name, "parent": i.parent, "kind": kinds.get(int(i.kind), "")},
                i.labels, empty_is_absent=False))
        infos = await asyncio.to_thread(s.walk, ns, match)
        for i in range(0, len(infos), LIST_BATCH):
            yield pb.ListSnapshotsResponse(info=[info_to_pb(x) for x in infos[i:i + LIST_BATCH]])

    async def Usage(self, request, context):
        s, ns = self._get(request.snapshotter), namespace(context)
        u = await asyncio.to_thread(s.usage, ns, request.key)
        return pb.UsageResponse(size=u.size, inodes=u.inodes)

    async def Cleanup(self, request, context):
        s = self._get(request.snapshotter)
        await asyncio.to_thread(s.backing.cleanup)
        return empty_pb2.Empty()
