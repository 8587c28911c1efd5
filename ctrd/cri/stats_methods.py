"""RuntimeService stats methods (mixed into :class:`ctrd.cri.service.RuntimeService`, whose
``self.rt`` is the CRI core): ContainerStats, ListContainerStats, PodSandboxStats,
ListPodSandboxStats.

Figures are read by the daemon straight from the cgroups (the container's cgroup from its
spec's ``linux.cgroupsPath``, the pod's from its ``cgroup_parent``) and the pod's network
namespace -- no call into the shims, so a busy node's stats do not wake every shim. The
writable layer is the snapshot's upper directory (walked in a thread).
"""

from __future__ import annotations

import asyncio
import json
import os

from ctrd import errdefs
from ctrd.cri import stats as cs
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE


def _u64(pb, v):
    return pb.UInt64Value(value=v) if v is not None else None


def _cpu(pb, c):
    if c is None:
        return None
    return pb.CpuUsage(timestamp=c.timestamp,
                       usage_core_nano_seconds=_u64(pb, c.usage_core_nano_seconds),
                       usage_nano_cores=_u64(pb, c.usage_nano_cores))


def _mem(pb, m):
    if m is None:
        return None
    return pb.MemoryUsage(timestamp=m.timestamp, working_set_bytes=_u64(pb, m.working_set_bytes),
                          available_bytes=_u64(pb, m.available_bytes),
                          usage_bytes=_u64(pb, m.usage_bytes), rss_bytes=_u64(pb, m.rss_bytes),
                          page_faults=_u64(pb, m.page_faults),
                          major_page_faults=_u64(pb, m.major_page_faults))


def _fs(pb, f):
    if f is None:
        return None
    return pb.FilesystemUsage(timestamp=f.timestamp,
                              fs_id=pb.FilesystemIdentifier(mountpoint=f.mountpoint),
                              used_bytes=_u64(pb, f.used_bytes),
                              inodes_used=_u64(pb, f.inodes_used))


def _iface(pb, i):
    if i is None:
        return None
    return pb.NetworkInterfaceUsage(name=i.name, rx_bytes=_u64(pb, i.rx_bytes),
                                    rx_errors=_u64(pb, i.rx_errors),
                                    tx_bytes=_u64(pb, i.tx_bytes),
                                    tx_errors=_u64(pb, i.tx_errors))


class StatsMethods:
    _tracker: cs.CpuRateTracker | None = None

    @property
    def tracker(self) -> cs.CpuRateTracker:
        if self._tracker is None:
            self._tracker = cs.CpuRateTracker()
        return self._tracker

    def _container_stats(self, meta: st.ContainerMeta, status: st.ContainerStatus):
        """One container's stats message (blocking: cgroup reads, the layer walk)."""
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.runtime import cgroups

        rt = self.rt
        ts = cs.now_ns()
        metrics = None
        try:
            c = rt.containers.get(NAMESPACE, meta.id)
        except errdefs.NotFound:
            c = None
        if c is not None and status.state == st.RUNNING:
            try:
                path = json.loads(c.spec.value).get("linux", {}).get("cgroupsPath", "")
                if path:
                    metrics = cgroups.load_path(path).metrics()
            except (errdefs.CtrdError, OSError, ValueError):
                metrics = None  # exited meanwhile
        layer = None
        try:
            snap = rt.snapshotter()
            upper = next((o.split("=", 1)[1] for m in snap.mounts(NAMESPACE, meta.id)
                          for o in m.options if o.startswith("upperdir=")), None)
            if upper is None:  # native snapshotter: the bind source is the layer
                upper = next((m.source for m in snap.mounts(NAMESPACE, meta.id)
                              if m.type == "bind"), None)
            if upper and os.path.isdir(upper):
                root = str(getattr(getattr(snap, "backing", None), "root", "")
                           or os.path.dirname(os.path.dirname(upper)))
                layer = cs.writable_layer_usage(upper, root)
        except (errdefs.CtrdError, OSError):
            layer = None
        stats = cs.container_stats(metrics, ts, self.tracker, meta.id, layer)
        config = st.config_of(meta)
        return pb.ContainerStats(
            attributes=pb.ContainerAttributes(id=meta.id, metadata=config.metadata,
                                              labels=config.labels,
                                              annotations=config.annotations),
            cpu=_cpu(pb, stats.cpu), memory=_mem(pb, stats.memory),
            writable_layer=_fs(pb, stats.writable_layer))

    async def ContainerStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        meta, status = self.rt.records.container(request.container_id)
        return pb.ContainerStatsResponse(
            stats=await asyncio.to_thread(self._container_stats, meta, status))

    async def ListContainerStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        f = request.filter if request.HasField("filter") else None
        chosen = []
        for meta, status in list(self.rt.records.containers.values()):
            if f is not None:
                if f.id and not meta.id.startswith(f.id):
                    continue
                if f.pod_sandbox_id and not meta.sandbox_id.startswith(f.pod_sandbox_id):
                    continue
                if f.label_selector and not st.labels_match(
                        f.label_selector, st.config_of(meta).labels):
                    continue
            chosen.append((meta, status))
        out = await asyncio.gather(*(asyncio.to_thread(self._container_stats, m, s)
                                     for m, s in chosen))
        return pb.ListContainerStatsResponse(stats=list(out))

    def _sandbox_stats(self, meta: st.SandboxMeta, status: st.SandboxStatus):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.runtime import cgroups

        rt = self.rt
        config = rt.sandbox_config(meta)
        ts = cs.now_ns()
        metrics = None
        parent = config.linux.cgroup_parent
        if parent and status.state == st.SANDBOX_READY:
            try:
                metrics = cgroups.load_path(parent).metrics()
            except (errdefs.CtrdError, OSError):
                metrics = None
        network = None
        if meta.netns and status.state == st.SANDBOX_READY and os.path.exists(meta.netns):
            try:
                network = cs.network_usage(meta.netns)
            except (errdefs.CtrdError, OSError):
                network = None
        containers = [self._container_stats(m, s) for m, s in rt.records.containers_of(meta.id)]
        ps = cs.sandbox_stats(metrics, ts, self.tracker, meta.id, None, [])
        linux = pb.LinuxPodSandboxStats(cpu=_cpu(pb, ps.cpu), memory=_mem(pb, ps.memory),
                                        containers=containers)
        if network is not None:
            linux.network.CopyFrom(pb.NetworkUsage(
                timestamp=network.timestamp,
                default_interface=_iface(pb, network.default_interface),
                interfaces=[_iface(pb, i) for i in network.interfaces]))
        if ps.process is not None:
            linux.process.CopyFrom(pb.ProcessUsage(
                timestamp=ps.process.timestamp,
                process_count=_u64(pb, ps.process.process_count)))
        return pb.PodSandboxStats(
            attributes=pb.PodSandboxAttributes(id=meta.id, metadata=config.metadata,
                                               labels=config.labels,
                                               annotations=config.annotations),
            linux=linux)

    async def PodSandboxStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        meta, status = self.rt.records.sandbox(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(
            stats=await asyncio.to_thread(self._sandbox_stats, meta, status))

    async def ListPodSandboxStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        f = request.filter if request.HasField("filter") else None
        chosen = []
        for meta, status in list(self.rt.records.sandboxes.values()):
            if f is not None:
                if f.id and not meta.id.startswith(f.id):
                    continue
                if f.label_selector and not st.labels_match(
                        f.label_selector, self.rt.sandbox_config(meta).labels):
                    continue
            chosen.append((meta, status))
        out = await asyncio.gather(*(asyncio.to_thread(self._sandbox_stats, m, s)
                                     for m, s in chosen))
        return pb.ListPodSandboxStatsResponse(stats=list(out))
