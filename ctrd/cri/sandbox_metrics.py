"""CRI ListMetricDescriptors and ListPodSandboxMetrics, as containerd 2.3.4 serves them
(internal/cri/server/list_metric_descriptors*.go, list_pod_sandbox_metrics_linux.go).

The descriptors are a fixed table (names, help texts and label keys are containerd's,
verbatim). Each metric's label values are fixed in number by its descriptor: the base labels
are ``pod`` (the pod's metadata name), ``namespace`` (its metadata namespace), ``container``
(the container's metadata name, "" for pod-level metrics), ``id`` (container or sandbox id)
and ``image`` (the container's ``image.user_specified_image``, "" for pod metrics), plus
``interface`` (network), ``device`` (disk), ``failure_type``/``scope``, ``major``/``minor``/
``operation`` or ``ulimit`` where the descriptor says so. Pod labels and annotations never
become metric labels, so a pod with huge or many labels yields metrics of the same shape as
any other; per-device and per-rlimit series are bounded by the host's devices and the spec's
rlimits.

Pure builders (:func:`cpu_metrics`, :func:`memory_metrics`, :func:`disk_io_metrics`,
:func:`process_metrics`, :func:`spec_metrics`, :func:`filesystem_metrics`,
:func:`pod_network_metrics`) turn cgroup v1 / v2 Metrics messages (see
:mod:`ctrd.runtime.cgroups`), an OCI spec and counters into ``runtime.v1.Metric`` lists;
:func:`list_pod_sandbox_metrics` gathers the inputs for every ready pod (blocking: run it in
a thread). Value conversions follow containerd exactly, integer seconds included
(``usage // 1e9``), and so does one oddity: ``container_start_time_seconds`` carries the
start time in nanoseconds, as containerd 2.3.4 sends it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ctrd import errdefs
from ctrd.cri.helpers import cri_pb
from ctrd.cri.stats import metrics_version

log = logging.getLogger("ctrd.cri.metrics")

DEFAULT_INTERFACE = "eth0"  # containerd's defaultIfName
_SECOND = 1_000_000_000

BASE_LABEL_KEYS = ("pod", "namespace", "container", "id", "image")
NETWORK_LABEL_KEYS = BASE_LABEL_KEYS + ("interface",)
DISK_LABEL_KEYS = BASE_LABEL_KEYS + ("device",)

# (name, help, label keys) by containerd's groups, in containerd's order.
_B, _N, _D = BASE_LABEL_KEYS, NETWORK_LABEL_KEYS, DISK_LABEL_KEYS
DESCRIPTORS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "cpu": (
        ("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", _B),
        ("container_cpu_system_seconds_total",
         "Cumulative system CPU time consumed in seconds.", _B),
        ("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", _B),
        ("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.",
         _B),
        ("container_cpu_cfs_throttled_periods_total",
         "Number of CPU throttled period intervals.", _B),
        ("container_cpu_cfs_throttled_seconds_total",
         "Total time duration the container has been throttled.", _B),
    ),
    "memory": (
        ("container_memory_cache",
         "Number of bytes of memory used by the container for caching purposes.", _B),
        ("container_memory_rss",
         "Size of RSS in bytes, total anonymous memory and [swap cache memory used by the "
         "container.", _B),
        ("container_memory_kernel_usage",
         "Size of kernel memory allocated to the container in bytes, includes page tables, "
         "socket buffers...", _B),
        ("container_memory_mapped_file", "Size of container's memory mapped files in bytes.",
         _B),
        ("container_memory_swap", "Container swap usage in bytes.", _B),
        ("container_memory_failcnt",
         "Number of times container memory usage has hit its cgroup v1 upper memory limit, "
         "for cg2 this value is not currently supported", _B),
        ("container_memory_usage_bytes",
         "Current memory usage in bytes, including all memory regardless of when it was "
         "accessed", _B),
        ("container_memory_max_usage_bytes", "Maximum container memory usage recorded in bytes",
         _B),
        ("container_memory_working_set_bytes",
         "Amount of memory that is actively used by the container, excluding cached memory.",
         _B),
        ("container_memory_total_active_file_bytes",
         "Amount of cache memory bytes, in use by the container, in file on disk.", _B),
        ("container_memory_total_inactive_file_bytes",
         "Amount of inactive cache memory bytes, for the container, in file on disk.", _B),
        ("container_memory_failures_total",
         "Cumulative count of container memory allocation failures.",
         _B + ("failure_type", "scope")),
        ("container_oom_events_total", "Count of out of memory events observed for the container",
         _B),
    ),
    "network": (
        ("container_network_receive_bytes_total", "Cumulative count of bytes received", _N),
        ("container_network_receive_packets_total", "Cumulative count of packets received", _N),
        ("container_network_receive_packets_dropped_total",
         "Cumulative count of packets dropped while receiving", _N),
        ("container_network_receive_errors_total",
         "Cumulative count of errors encountered while receiving", _N),
        ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", _N),
        ("container_network_transmit_packets_total", "Cumulative count of packets transmitted",
         _N),
        ("container_network_transmit_packets_dropped_total",
         "Cumulative count of packets dropped while transmitting", _N),
        ("container_network_transmit_errors_total",
         "Cumulative count of errors encountered while transmitting", _N),
    ),
    "disk": (
        ("container_fs_inodes_free", "Number of available Inodes", _D),
        ("container_fs_inodes_total", "Number of Inodes", _D),
        ("container_fs_limit_bytes",
         "Number of bytes that can be consumed by the container on this filesystem.", _D),
        ("container_fs_usage_bytes",
         "Number of bytes that are consumed by the container on this filesystem.", _D),
    ),
    "diskIO": (
        ("container_fs_reads_bytes_total", "Cumulative count of bytes read", _D),
        ("container_fs_reads_total", "Cumulative count of reads completed", _D),
        ("container_fs_writes_bytes_total", "Cumulative count of bytes written", _D),
        ("container_fs_writes_total", "Cumulative count of writes completed", _D),
        ("container_blkio_device_usage_total", "Blkio device bytes usage",
         _D + ("major", "minor", "operation")),
    ),
    "process": (
        ("container_processes", "Number of processes running inside the container.", _B),
        ("container_file_descriptors", "Number of open file descriptors for the container.", _B),
        ("container_sockets", "Number of open sockets for the container.", _B),
        ("container_threads_max",
         "Maximum number of threads allowed inside the container, infinity if value is zero",
         _B),
        ("container_threads", "Number of threads running inside the container", _B),
        ("container_ulimits_soft",
         "Soft ulimit values for the container root process. Unlimited if -1, except priority "
         "and nice", _B + ("ulimit",)),
    ),
    "misc": (
        ("container_last_seen", "Last time a container was seen by the exporter", _B),
        ("container_start_time_seconds", "Start time of the container since unix epoch in seconds",
         _B),
    ),
    "container_spec": (
        ("container_spec_cpu_period", "CPU period of the container", _B),
        ("container_spec_cpu_shares", "CPU share of the container", _B),
        ("container_spec_memory_limit_bytes", "Memory limit for the container", _B),
        ("container_spec_memory_reservation_limit_bytes",
         "Memory reservation limit for the container", _B),
        ("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container", _B),
    ),
}
del _B, _N, _D

#: name -> label keys, for checking a metric against its descriptor.
LABEL_KEYS: dict[str, tuple[str, ...]] = {
    name: keys for group in DESCRIPTORS.values() for name, _, keys in group}

COUNTER, GAUGE = 0, 1  # runtime.v1 MetricType


def list_metric_descriptors() -> list:
    """Every ``runtime.v1.MetricDescriptor`` containerd 2.3.4 lists on Linux."""
    pb = cri_pb()
    return [pb.MetricDescriptor(name=n, help=h, label_keys=list(k))
            for group in DESCRIPTORS.values() for n, h, k in group]


def _u64(v: int) -> int:
    """Wrap into uint64 as Go's conversions do (a negative spec value, an overflow)."""
    return v & ((1 << 64) - 1)


class _Builder:
    """Appends metrics sharing one timestamp and base label values."""

    def __init__(self, labels: list[str], timestamp: int) -> None:
        self.labels, self.ts, self.out = list(labels), timestamp, []

    def add(self, name: str, kind: int, value: int, *extra: str) -> None:
        pb = cri_pb()
        self.out.append(pb.Metric(name=name, timestamp=self.ts, metric_type=kind,
                                  label_values=self.labels + list(extra),
                                  value=pb.UInt64Value(value=_u64(int(value)))))


# --- builders ------------------------------------------------------------------------------

def cpu_metrics(metrics, labels: list[str], timestamp: int) -> list:
    """containerd's extractCPUMetrics: seconds are integer (truncated) seconds."""
    b = _Builder(labels, timestamp)
    if metrics_version(metrics) == 1:
        if not metrics.HasField("cpu") or not metrics.cpu.HasField("usage"):
            return b.out
        u = metrics.cpu.usage
        b.add("container_cpu_usage_seconds_total", COUNTER, u.total // _SECOND)
        b.add("container_cpu_user_seconds_total", COUNTER, u.user // _SECOND)
        b.add("container_cpu_system_seconds_total", COUNTER, u.kernel // _SECOND)
        if metrics.cpu.HasField("throttling"):
            t = metrics.cpu.throttling
            b.add("container_cpu_cfs_periods_total", COUNTER, t.periods)
            b.add("container_cpu_cfs_throttled_periods_total", COUNTER, t.throttled_periods)
            b.add("container_cpu_cfs_throttled_seconds_total", COUNTER,
                  t.throttled_time // _SECOND)
        return b.out
    if not metrics.HasField("cpu"):
        return b.out
    c = metrics.cpu
    b.add("container_cpu_usage_seconds_total", COUNTER, c.usage_usec * 1000 // _SECOND)
    b.add("container_cpu_user_seconds_total", COUNTER, c.user_usec * 1000 // _SECOND)
    b.add("container_cpu_system_seconds_total", COUNTER, c.system_usec * 1000 // _SECOND)
    # containerd always sends the CFS figures on v2, zeros included
    b.add("container_cpu_cfs_periods_total", COUNTER, c.nr_periods)
    b.add("container_cpu_cfs_throttled_periods_total", COUNTER, c.nr_throttled)
    b.add("container_cpu_cfs_throttled_seconds_total", COUNTER,
          c.throttled_usec * 1000 // _SECOND)
    return b.out


def memory_metrics(metrics, labels: list[str], timestamp: int) -> list:
    """containerd's extractMemoryMetrics (v1 ``total_*`` figures, v2 memory.stat)."""
    b = _Builder(labels, timestamp)
    if metrics_version(metrics) == 1:
        if metrics.HasField("memory"):
            m = metrics.memory
            if m.HasField("usage"):
                ws = m.usage.usage - m.total_inactive_file \
                    if m.total_inactive_file < m.usage.usage else 0
                b.add("container_memory_usage_bytes", GAUGE, m.usage.usage)
                b.add("container_memory_working_set_bytes", GAUGE, ws)
                b.add("container_memory_max_usage_bytes", GAUGE, m.usage.max)
            b.add("container_memory_rss", GAUGE, m.total_rss)
            b.add("container_memory_cache", GAUGE, m.total_cache)
            b.add("container_memory_mapped_file", GAUGE, m.total_mapped_file)
            b.add("container_memory_total_active_file_bytes", GAUGE, m.total_active_file)
            b.add("container_memory_total_inactive_file_bytes", GAUGE, m.total_inactive_file)
            b.add("container_memory_failures_total", COUNTER, m.pg_fault, "pgfault", "container")
            b.add("container_memory_failures_total", COUNTER, m.pg_maj_fault, "pgmajfault",
                  "container")
            if m.HasField("kernel"):
                b.add("container_memory_kernel_usage", GAUGE, m.kernel.usage)
            if m.HasField("swap"):
                b.add("container_memory_swap", GAUGE, m.swap.usage)
            if m.HasField("usage"):
                b.add("container_memory_failcnt", COUNTER, m.usage.failcnt)
        if metrics.HasField("memory_oom_control"):
            b.add("container_oom_events_total", COUNTER, metrics.memory_oom_control.oom_kill)
        return b.out
    if metrics.HasField("memory"):
        m = metrics.memory
        ws = m.usage - m.inactive_file if m.inactive_file < m.usage else 0
        b.add("container_memory_usage_bytes", GAUGE, m.usage)
        b.add("container_memory_max_usage_bytes", GAUGE, m.usage_limit)  # containerd's choice
        b.add("container_memory_working_set_bytes", GAUGE, ws)
        b.add("container_memory_rss", GAUGE, m.anon)
        b.add("container_memory_cache", GAUGE, m.file)
        b.add("container_memory_kernel_usage", GAUGE, m.kernel_stack)
        b.add("container_memory_mapped_file", GAUGE, m.file_mapped)
        b.add("container_memory_swap", GAUGE, m.swap_usage)
        b.add("container_memory_failcnt", COUNTER, 0)  # v2 has no failcnt
        b.add("container_memory_total_active_file_bytes", GAUGE, m.active_file)
        b.add("container_memory_total_inactive_file_bytes", GAUGE, m.inactive_file)
        b.add("container_memory_failures_total", COUNTER, m.pgfault, "pgfault", "container")
        b.add("container_memory_failures_total", COUNTER, m.pgmajfault, "pgmajfault",
              "container")
    if metrics.HasField("memory_events"):
        b.add("container_oom_events_total", COUNTER, metrics.memory_events.oom_kill)
    return b.out


def disk_io_metrics(metrics, labels: list[str], timestamp: int) -> list:
    """containerd's extractDiskIOMetrics: v1 blkio recursive entries, v2 io.stat per
    ``major:minor``."""
    b = _Builder(labels, timestamp)
    if metrics_version(metrics) == 1:
        if not metrics.HasField("blkio"):
            return b.out
        bl = metrics.blkio
        for e in bl.io_service_bytes_recursive:
            b.add("container_blkio_device_usage_total", COUNTER, e.value, e.device,
                  str(e.major), str(e.minor), e.op)
        for e in bl.io_serviced_recursive:
            op = e.op.lower()
            if op == "read":
                b.add("container_fs_reads_total", COUNTER, e.value, e.device)
            elif op == "write":
                b.add("container_fs_writes_total", COUNTER, e.value, e.device)
        for e in bl.io_service_bytes_recursive:
            op = e.op.lower()
            if op == "read":
                b.add("container_fs_reads_bytes_total", COUNTER, e.value, e.device)
            elif op == "write":
                b.add("container_fs_writes_bytes_total", COUNTER, e.value, e.device)
        return b.out
    if not metrics.HasField("io"):
        return b.out
    for e in metrics.io.usage:
        dev = f"{e.major}:{e.minor}"
        b.add("container_fs_reads_bytes_total", COUNTER, e.rbytes, dev)
        b.add("container_fs_writes_bytes_total", COUNTER, e.wbytes, dev)
        b.add("container_fs_reads_total", COUNTER, e.rios, dev)
        b.add("container_fs_writes_total", COUNTER, e.wios, dev)
    return b.out


def process_metrics(metrics, spec: dict | None, fds: int | None, sockets: int | None,
                    labels: list[str], timestamp: int) -> list:
    """containerd's extractProcessMetrics: pids (v2 adds ``container_threads``), the soft
    rlimits of the spec's process, then fd and socket counts (None: not counted)."""
    b = _Builder(labels, timestamp)
    if metrics is not None and metrics.HasField("pids"):
        b.add("container_processes", GAUGE, metrics.pids.current)
        b.add("container_threads_max", GAUGE, metrics.pids.limit)
        if metrics_version(metrics) == 2:
            b.add("container_threads", GAUGE, metrics.pids.current)
    for rl in ((spec or {}).get("process") or {}).get("rlimits") or []:
        b.add("container_ulimits_soft", GAUGE, int(rl.get("soft", 0)), str(rl.get("type", "")))
    if fds is not None:
        b.add("container_file_descriptors", GAUGE, fds)
        b.add("container_sockets", GAUGE, sockets or 0)
    return b.out


def spec_metrics(spec: dict | None, labels: list[str], timestamp: int) -> list:
    """containerd's extractContainerSpecMetrics: the spec's CPU period/shares and memory
    limit/reservation/swap, each when set."""
    b = _Builder(labels, timestamp)
    res = ((spec or {}).get("linux") or {}).get("resources") or {}
    cpu, mem = res.get("cpu") or {}, res.get("memory") or {}
    for key, name in (("period", "container_spec_cpu_period"),
                      ("shares", "container_spec_cpu_shares")):
        if cpu.get(key) is not None:
            b.add(name, GAUGE, int(cpu[key]))
    for key, name in (("limit", "container_spec_memory_limit_bytes"),
                      ("reservation", "container_spec_memory_reservation_limit_bytes"),
                      ("swap", "container_spec_memory_swap_limit_bytes")):
        if mem.get(key) is not None:
            b.add(name, GAUGE, int(mem[key]))
    return b.out


def filesystem_metrics(statvfs: os.statvfs_result, used: int | None, inodes: int | None,
                       labels: list[str], timestamp: int) -> list:
    """containerd's extractFilesystemMetrics: the rootfs filesystem's size and free inodes,
    with the snapshot's own usage (``used``/``inodes``, when known) replacing the
    filesystem's used bytes and inode total. The device label is "/", as containerd's."""
    total = statvfs.f_blocks * statvfs.f_bsize
    avail = statvfs.f_bavail * statvfs.f_bsize
    used_bytes = total - avail if used is None else used
    inodes_total = statvfs.f_files if inodes is None else inodes
    b = _Builder(labels, timestamp)
    b.add("container_fs_usage_bytes", GAUGE, used_bytes, "/")
    b.add("container_fs_limit_bytes", GAUGE, total, "/")
    b.add("container_fs_inodes_total", GAUGE, inodes_total, "/")
    b.add("container_fs_inodes_free", GAUGE, statvfs.f_ffree, "/")
    return b.out


def pod_network_metrics(iface, labels: list[str], timestamp: int) -> list:
    """The eight network counters of the pod's ``eth0`` (a
    :class:`ctrd.cri.stats.NetworkInterfaceUsage`); ``labels`` the pod's five base values."""
    b = _Builder(list(labels) + [DEFAULT_INTERFACE], timestamp)
    for name, v in (("container_network_receive_bytes_total", iface.rx_bytes),
                    ("container_network_receive_packets_total", iface.rx_packets),
                    ("container_network_receive_packets_dropped_total", iface.rx_dropped),
                    ("container_network_receive_errors_total", iface.rx_errors),
                    ("container_network_transmit_bytes_total", iface.tx_bytes),
                    ("container_network_transmit_packets_total", iface.tx_packets),
                    ("container_network_transmit_packets_dropped_total", iface.tx_dropped),
                    ("container_network_transmit_errors_total", iface.tx_errors)):
        b.add(name, COUNTER, v or 0)
    return b.out


def count_descriptors(pids: list[int], proc: str = "/proc") -> tuple[int, int]:
    """(open fds, of which sockets) over ``pids``; a process gone meanwhile counts 0."""
    fds = sockets = 0
    for pid in pids:
        d = os.path.join(proc, str(pid), "fd")
        try:
            names = os.listdir(d)
        except OSError:
            continue
        fds += len(names)
        for n in names:
            try:
                if os.readlink(os.path.join(d, n)).startswith("socket"):
                    sockets += 1
            except OSError:
                continue
    return fds, sockets


# --- gathering -----------------------------------------------------------------------------

def _container_metrics(rt, meta, status, base: list[str]):
    """One running container's ContainerMetrics; NotFound when it has no running task
    (containerd's Task() fails then)."""
    from ctrd.cri import stats as cs
    from ctrd.cri import stats_sources as src
    from ctrd.cri import store as st

    pb = cri_pb()
    if status.state != st.RUNNING:
        raise errdefs.NotFound(f"no running task for container {meta.id}")
    spec = src.container_spec(rt, meta.id)
    cg = src.container_cgroup(rt, meta.id, spec)
    metrics = src.cgroup_metrics(cg)
    if metrics is None:
        raise errdefs.NotFound(f"no metrics for container {meta.id}")
    config = st.config_of(meta)
    labels = base + [config.metadata.name, meta.id, config.image.user_specified_image]
    ts = time.time_ns()
    b = _Builder(labels, ts)
    b.add("container_last_seen", GAUGE, int(time.time()))
    b.add("container_start_time_seconds", GAUGE, status.started_at)  # ns, as containerd
    out = b.out
    out += cpu_metrics(metrics, labels, ts)
    out += memory_metrics(metrics, labels, ts)
    out += disk_io_metrics(metrics, labels, ts)
    layer = src.writable_layer_dir(rt, meta.id)
    if layer is not None:
        upper, _ = layer
        try:
            used, inodes = cs.disk_usage(upper)
            out += filesystem_metrics(os.statvfs(upper), used, inodes, labels, ts)
        except (errdefs.CtrdError, OSError):
            pass  # removed meanwhile: containerd logs and goes on
    fds, sockets = count_descriptors(cg.procs() if cg is not None else [])
    out += process_metrics(metrics, spec, fds, sockets, labels, ts)
    out += spec_metrics(spec, labels, ts)
    return pb.ContainerMetrics(container_id=meta.id, metrics=out)


def _pod_metrics(rt, meta, config):
    from ctrd.cri import stats as cs

    pb = cri_pb()
    md = config.metadata
    base = [md.name, md.namespace]
    pm = pb.PodSandboxMetrics(pod_sandbox_id=meta.id)
    if meta.netns:
        ts = time.time_ns()
        usage = cs.network_usage(meta.netns, DEFAULT_INTERFACE, ts)
        if usage.default_interface is None:
            # containerd's netlink LinkByName("eth0") fails: the pod is left out
            raise errdefs.NotFound(f"no {DEFAULT_INTERFACE} in the network namespace of "
                                   f"pod {meta.id}")
        pm.metrics.extend(pod_network_metrics(usage.default_interface,
                                              base + ["", meta.id, ""], ts))
    return pm, base


def list_pod_sandbox_metrics(rt) -> list:
    """``runtime.v1.PodSandboxMetrics`` of every ready pod, its running containers' metrics
    included. Blocking (cgroup and /proc reads, layer walks): run it in a thread.

    A pod whose figures cannot be read (its netns gone, no eth0) is left out; so is a
    container without a running task -- containerd 2.3.4 drops the whole pod then, ctrd only
    that container (a pod with one exited init container would otherwise never be seen).
    """
    from ctrd.cri import store as st

    out = []
    by_pod: dict[str, list] = {}
    for cmeta, cstatus in list(rt.records.containers.values()):
        by_pod.setdefault(cmeta.sandbox_id, []).append((cmeta, cstatus))
    for meta, status in list(rt.records.sandboxes.values()):
        if status.state != st.SANDBOX_READY:
            continue
        try:
            pm, base = _pod_metrics(rt, meta, rt.sandbox_config(meta))
        except (errdefs.CtrdError, OSError) as e:
            log.info("pod %s: no metrics: %s", meta.id, e)
            continue
        for cmeta, cstatus in sorted(by_pod.get(meta.id, []), key=lambda c: c[0].created_at):
            try:
                pm.container_metrics.append(_container_metrics(rt, cmeta, cstatus, base))
            except (errdefs.CtrdError, OSError) as e:
                log.debug("container %s: no metrics: %s", cmeta.id, e)
        out.append(pm)
    return out


class SandboxMetricsRPC:
    """Mixed into RuntimeService: ListMetricDescriptors, ListPodSandboxMetrics (and
    StreamPodSandboxMetrics)."""

    async def ListMetricDescriptors(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        return pb.ListMetricDescriptorsResponse(
            descriptors=list_metric_descriptors())

    async def ListPodSandboxMetrics(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        return pb.ListPodSandboxMetricsResponse(pod_metrics=await asyncio.to_thread(
            list_pod_sandbox_metrics, self.rt))

    async def StreamPodSandboxMetrics(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.cri.helpers import batches

        metrics = await asyncio.to_thread(list_pod_sandbox_metrics, self.rt)
        for part in batches(metrics):
            yield pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=part)
