"""ContainerStats, ListContainerStats (and StreamContainerStats): figures read by the daemon
straight from the cgroups (the container's cgroup from its spec's ``linux.cgroupsPath``) --
no call into the shims, so a busy node's stats do not wake every shim; the writable layer is
the snapshot's upper directory. Which fields are filled, and how, follows containerd 2.3.4
(see :mod:`ctrd.cri.stats`), with two differences: ContainerStats fills ``usage_nano_cores``
from the second sample on (containerd's single-container call never does; its list does), and
containerd 2.3.4's background CPU collector (a sample per container every second, so even a
first list call has a rate) is not there: ctrd's rate comes from the previous call's sample,
as containerd's fallback computes it."""

from __future__ import annotations

import asyncio

from ctrd import errdefs
from ctrd.cri import stats as cs
from ctrd.cri import store as st
from ctrd.cri.container_list import ContainerFilter

# ctrd.cri.stats records -> runtime.v1 messages (the pod stats of sandbox_stats use them too;
# None stays unset, as containerd leaves a figure it does not have)


def u64_pb(pb, v):
    return pb.UInt64Value(value=v) if v is not None else None


def cpu_pb(pb, c):
    if c is None:
        return None
    return pb.CpuUsage(timestamp=c.timestamp,
                       usage_core_nano_seconds=u64_pb(pb, c.usage_core_nano_seconds),
                       usage_nano_cores=u64_pb(pb, c.usage_nano_cores))


def memory_pb(pb, m):
    if m is None:
        return None
    return pb.MemoryUsage(timestamp=m.timestamp, working_set_bytes=u64_pb(pb, m.working_set_bytes),
                          available_bytes=u64_pb(pb, m.available_bytes),
                          usage_bytes=u64_pb(pb, m.usage_bytes), rss_bytes=u64_pb(pb, m.rss_bytes),
                          page_faults=u64_pb(pb, m.page_faults),
                          major_page_faults=u64_pb(pb, m.major_page_faults))


def filesystem_pb(pb, f):
    if f is None:
        return None
    return pb.FilesystemUsage(timestamp=f.timestamp,
                              fs_id=pb.FilesystemIdentifier(mountpoint=f.mountpoint),
                              used_bytes=u64_pb(pb, f.used_bytes),
                              inodes_used=u64_pb(pb, f.inodes_used))


class ContainerStatsRPC:
    """Mixed into RuntimeService (``self.rt``: the core). The CPU rate tracker is shared
    with the pod stats (:mod:`sandbox_stats`)."""

    _tracker: cs.CpuRateTracker | None = None
    _stats_cache = None  # stats_sources.StatsCache, made on first use

    @property
    def tracker(self) -> cs.CpuRateTracker:
        if self._tracker is None:
            self._tracker = cs.CpuRateTracker()
        return self._tracker

    @property
    def stats_cache(self):
        if self._stats_cache is None:
            from ctrd.cri.stats_sources import StatsCache

            period = getattr(getattr(self.rt, "config", None), "stats_collect_period", 10)
            self._stats_cache = StatsCache(float(period or 10))
        return self._stats_cache

    def _forget_gone(self) -> None:
        """Samples and cached handles of removed containers and pods go (bounded by the
        node)."""
        ids = set(self.rt.records.containers) | set(self.rt.records.sandboxes)
        self.tracker.retain(ids)
        self.stats_cache.retain(ids)

    def _container_stats_and_pids(self, meta: st.ContainerMeta, status: st.ContainerStatus):
        """One container's stats message and its pids.current (blocking: cgroup reads, the
        layer walk). A container without a running task reports its writable layer only."""
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.cri import stats_sources as src

        rt, cache = self.rt, self.stats_cache
        ts = cs.now_ns()
        metrics = None
        if status.state == st.RUNNING:
            metrics = src.cgroup_metrics(cache.container_cgroup(rt, meta.id), cri_only=True)
        layer = cache.layer_usage(rt, meta.id, ts / 1e9)
        if layer is None:
            # containerd reports zeros when its snapshot usage cache has no entry
            layer = cs.FilesystemUsage(ts, self._image_fs_root(), used_bytes=0, inodes_used=0)
        stats = cs.container_stats(metrics, ts, self.tracker, meta.id, layer)
        config = st.config_of(meta)
        msg = pb.ContainerStats(
            attributes=pb.ContainerAttributes(id=meta.id, metadata=config.metadata,
                                              labels=config.labels,
                                              annotations=config.annotations),
            cpu=cpu_pb(pb, stats.cpu), memory=memory_pb(pb, stats.memory),
            writable_layer=filesystem_pb(pb, stats.writable_layer))
        return msg, cs.pids_current(metrics)

    def _container_stats(self, meta: st.ContainerMeta, status: st.ContainerStatus):
        return self._container_stats_and_pids(meta, status)[0]

    def _image_fs_root(self) -> str:
        try:
            snap = self.rt.snapshotter()
        except errdefs.CtrdError:
            return ""
        return str(getattr(getattr(snap, "backing", None), "root", "") or "")

    async def ContainerStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        meta, status = self.rt.records.container(request.container_id)
        return pb.ContainerStatsResponse(
            stats=await asyncio.to_thread(self._container_stats, meta, status))

    async def ListContainerStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        rf = request.filter
        chosen = self.rt.list_containers(ContainerFilter(
            id=rf.id, sandbox_id=rf.pod_sandbox_id, labels=dict(rf.label_selector))
            if request.HasField("filter") else None)
        # one worker thread for the whole list: a hop per container costs more than its reads
        out = await asyncio.to_thread(lambda: [self._container_stats(m, s) for m, s in chosen])
        self._forget_gone()
        return pb.ListContainerStatsResponse(stats=out)

    async def StreamContainerStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.cri.helpers import batches

        req = pb.ListContainerStatsRequest()
        if request.HasField("filter"):
            req.filter.CopyFrom(request.filter)
        stats = list((await self.ListContainerStats(req, context)).stats)
        for part in batches(stats):
            yield pb.StreamContainerStatsResponse(container_stats=part)
