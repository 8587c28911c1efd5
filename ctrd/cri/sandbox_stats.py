"""PodSandboxStats, ListPodSandboxStats (and StreamPodSandboxStats): the pod's cgroup (from its
``cgroup_parent``), its network namespace's counters, and its containers' stats
(:mod:`container_stats`), as containerd 2.3.4 fills them; a pod that is not READY is
Unavailable (and skipped by the list)."""

from __future__ import annotations

import asyncio
import os

from ctrd import errdefs
from ctrd.cri import stats as cs
from ctrd.cri import store as st
from ctrd.cri.container_stats import cpu_pb, memory_pb, u64_pb
from ctrd.cri.sandbox_list import SandboxFilter


def _iface(pb, i):
    if i is None:
        return None
    return pb.NetworkInterfaceUsage(name=i.name, rx_bytes=u64_pb(pb, i.rx_bytes),
                                    rx_errors=u64_pb(pb, i.rx_errors),
                                    tx_bytes=u64_pb(pb, i.tx_bytes),
                                    tx_errors=u64_pb(pb, i.tx_errors))


def _pod_network(netns: str, pid: int, ts: int):
    """The pod's network counters: read through its pause / init process when it is there
    and in that namespace (a file read), else from a thread joined to the namespace."""
    if pid:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino:
                return cs.network_usage_of_pid(pid, timestamp=ts)
        except (OSError, errdefs.NotFound):
            pass  # gone, or its pid now another's: ask the namespace itself
    return cs.network_usage(netns, timestamp=ts)


class SandboxStatsRPC:
    """Mixed into RuntimeService."""

    def _sandbox_stats(self, meta: st.SandboxMeta, status: st.SandboxStatus):
        """containerd 2.3.4's podSandboxStats: Unavailable unless the pod is ready; cpu and
        memory of its cgroup parent (left out when it has none yet: in ctrd's no-pause mode
        runc makes the directory with the first container), every interface of its netns
        but ``lo``, its containers' stats, and their pids as the pod's process count."""
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        rt = self.rt
        if status.state != st.SANDBOX_READY:
            raise errdefs.Unavailable(f"failed to get pod sandbox stats since sandbox "
                                      f"container {meta.id!r} is not in ready state")
        config = rt.sandbox_config(meta)
        ts = cs.now_ns()
        metrics = self.stats_cache.pod_metrics(meta.id, config.linux.cgroup_parent)
        network = None
        if meta.netns and os.path.exists(meta.netns):
            try:
                network = _pod_network(meta.netns, status.pid, ts)
            except (errdefs.CtrdError, OSError):
                network = None
        pairs = [self._container_stats_and_pids(m, s)
                 for m, s in sorted(rt.records.containers_of(meta.id),
                                    key=lambda c: c[0].created_at)]
        ps = cs.sandbox_stats(metrics, ts, self.tracker, meta.id, None, [])
        linux = pb.LinuxPodSandboxStats(cpu=cpu_pb(pb, ps.cpu), memory=memory_pb(pb, ps.memory),
                                        containers=[m for m, _ in pairs])
        if network is not None:
            linux.network.CopyFrom(pb.NetworkUsage(
                timestamp=network.timestamp,
                default_interface=_iface(pb, network.default_interface),
                interfaces=[_iface(pb, i) for i in network.interfaces]))
        linux.process.CopyFrom(pb.ProcessUsage(
            timestamp=ts, process_count=pb.UInt64Value(value=sum(p for _, p in pairs))))
        return pb.PodSandboxStats(
            attributes=pb.PodSandboxAttributes(id=meta.id, metadata=config.metadata,
                                               labels=config.labels,
                                               annotations=config.annotations),
            linux=linux)

    async def PodSandboxStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        meta, status = self.rt.records.sandbox(request.pod_sandbox_id)
        if status.state != st.SANDBOX_READY:  # containerd 2.3.4's words and code
            q = errdefs.quote(meta.id)
            raise errdefs.Unavailable(
                f"failed to decode pod sandbox metrics {meta.id}: failed to get pod sandbox "
                f"stats since sandbox container {q} is not in ready state")
        return pb.PodSandboxStatsResponse(
            stats=await asyncio.to_thread(self._sandbox_stats, meta, status))

    async def ListPodSandboxStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        rf = request.filter
        # containerd skips the pods that are not READY (their PodSandboxStats: Unavailable)
        chosen = self.rt.list_sandboxes(SandboxFilter(
            id=rf.id, labels=dict(rf.label_selector), state=st.SANDBOX_READY))
        out = await asyncio.to_thread(lambda: [self._stats_of_ready(m, s) for m, s in chosen])
        self._forget_gone()
        return pb.ListPodSandboxStatsResponse(stats=[x for x in out if x is not None])

    def _stats_of_ready(self, meta: st.SandboxMeta, status: st.SandboxStatus):
        """A listed pod's stats; None when it stopped being ready meanwhile (the list
        skips it, as it skips pods that were not ready when asked)."""
        try:
            return self._sandbox_stats(meta, status)
        except errdefs.Unavailable:
            return None

    async def StreamPodSandboxStats(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.cri.helpers import batches

        req = pb.ListPodSandboxStatsRequest()
        if request.HasField("filter"):
            req.filter.CopyFrom(request.filter)
        stats = list((await self.ListPodSandboxStats(req, context)).stats)
        for part in batches(stats):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=part)
