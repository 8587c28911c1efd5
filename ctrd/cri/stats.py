"""Building blocks of CRI ContainerStats and PodSandboxStats, as containerd computes them.

Plain functions over cgroup metrics (the ``io.containerd.cgroups.v1/v2.Metrics`` messages a
shim's Stats returns, or :meth:`ctrd.runtime.cgroups.Cgroup.metrics` of a pod's cgroup), a
directory (a container's writable layer) and a network namespace, returning dataclasses shaped
like runtime.v1's messages (``CpuUsage``, ``MemoryUsage``, ``FilesystemUsage``,
``NetworkUsage``, ``ProcessUsage``). The CRI plugin converts them to the wire messages and
fills the attributes (id, metadata, labels, annotations) from its records. Fields the CRI
wraps in ``UInt64Value`` are ``int | None`` here: None means "not reported" (an unset
wrapper), 0 is a real zero.

Figures follow containerd 2.3.4's CRI plugin (internal/cri/server/container_stats_list.go,
sandbox_stats_linux.go; checked side by side in tests/test_cri_stats_compare.py) and so the
kubelet's expectations:

- CPU: ``usage_core_nano_seconds`` is cpuacct.usage (v1) or ``usage_usec * 1000`` (v2);
  ``usage_nano_cores`` is the rate between two samples of the same container:
  ``(usage2 - usage1) / (t2 - t1) * 1e9`` (:class:`CpuRateTracker` keeps the previous sample
  per id). :meth:`CpuRateTracker.rate` leaves it unset for the first sample, as containerd
  2.3.4 does; :func:`usage_nano_cores` answers 0 there.
- swap: containerd 2.3.4 fills no ``ContainerStats.swap`` (on cgroup v1 or v2), nor the PSI
  or ``io`` fields on cgroup v1; ctrd leaves them unset too.
- memory: working set = usage - total_inactive_file (v1) / usage - inactive_file (v2), never
  below 0; available = limit - working set unless the limit is "unlimited" (> 2^62), then 0;
  rss = total_rss (v1) / anon (v2); page faults = total_pgfault / pgfault, major likewise.
- writable layer: bytes (512-byte blocks of each distinct inode) and inodes of the snapshot's
  upper directory, as containerd's snapshotters measure active snapshots (continuity's
  ``fs.DiskUsage``).
- network: /proc/net/dev counters of the pod's network namespace, ``lo`` left out; the
  default interface is ``eth0`` (containerd's ``defaultIfName``), else the first one.
- processes: :func:`process_usage` is pids.current of a cgroup; a pod's count in the CRI is
  the sum over its containers (:func:`pids_current`), as containerd 2.3.4 reports it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from ctrd import errdefs

DEFAULT_INTERFACE = "eth0"              # containerd's defaultIfName for pod networks
UNLIMITED_MEMORY = 1 << 62              # above this a limit means "no limit" (kernel rounding)
_BLOCK = 512                            # st_blocks unit


def now_ns() -> int:
    return time.time_ns()


# --- results -------------------------------------------------------------------------------

@dataclass
class CpuUsage:
    """runtime.v1 CpuUsage."""

    timestamp: int                           # ns since the epoch
    usage_core_nano_seconds: int | None = None
    usage_nano_cores: int | None = None


@dataclass
class MemoryUsage:
    """runtime.v1 MemoryUsage."""

    timestamp: int
    working_set_bytes: int | None = None
    available_bytes: int | None = None
    usage_bytes: int | None = None
    rss_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None


@dataclass
class FilesystemUsage:
    """runtime.v1 FilesystemUsage (``mountpoint`` is its FilesystemIdentifier)."""

    timestamp: int
    mountpoint: str
    used_bytes: int | None = None
    inodes_used: int | None = None


@dataclass
class NetworkInterfaceUsage:
    """runtime.v1 NetworkInterfaceUsage, plus the other /proc/net/dev counters (the wire
    message has no place for them; they are here for callers that want them)."""

    name: str
    rx_bytes: int | None = None
    rx_errors: int | None = None
    tx_bytes: int | None = None
    tx_errors: int | None = None
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0


@dataclass
class NetworkUsage:
    """runtime.v1 NetworkUsage."""

    timestamp: int
    default_interface: NetworkInterfaceUsage | None = None
    interfaces: list[NetworkInterfaceUsage] = field(default_factory=list)


@dataclass
class ProcessUsage:
    """runtime.v1 ProcessUsage."""

    timestamp: int
    process_count: int | None = None


@dataclass
class ContainerStats:
    """runtime.v1 ContainerStats without its attributes (the plugin adds them)."""

    cpu: CpuUsage | None = None
    memory: MemoryUsage | None = None
    writable_layer: FilesystemUsage | None = None


@dataclass
class PodSandboxStats:
    """runtime.v1 LinuxPodSandboxStats (PodSandboxStats.linux) without attributes."""

    cpu: CpuUsage | None = None
    memory: MemoryUsage | None = None
    network: NetworkUsage | None = None
    process: ProcessUsage | None = None
    containers: list[ContainerStats] = field(default_factory=list)


# --- metrics messages ----------------------------------------------------------------------

def decode_metrics(any_):
    """The v1 or v2 Metrics message in a task metric's ``data`` Any (by its type URL).
    :class:`~ctrd.errdefs.InvalidArgument` for any other type."""
    from ctrd import typeurl
    from ctrd.api.cgroups.stats.v1 import metrics_pb2 as v1
    from ctrd.api.cgroups.v2.stats import metrics_pb2 as v2

    name = typeurl.name_of(any_)
    for cls in (v1.Metrics, v2.Metrics):
        if name == cls.DESCRIPTOR.full_name:
            return typeurl.unpack(any_, cls)
    raise errdefs.InvalidArgument(f"unexpected metrics type {any_.type_url!r}")


def metrics_version(metrics) -> int:
    """1 or 2: which cgroups Metrics message (v1 or v2 hierarchy) ``metrics`` is."""
    name = metrics.DESCRIPTOR.full_name
    if name == "io.containerd.cgroups.v1.Metrics":
        return 1
    if name == "io.containerd.cgroups.v2.Metrics":
        return 2
    raise errdefs.InvalidArgument(f"unexpected metrics type {name!r}")


# --- CPU -----------------------------------------------------------------------------------

def cpu_usage(metrics, timestamp: int) -> CpuUsage | None:
    """CPU time used so far (``usage_nano_cores`` left unset: see :func:`usage_nano_cores`);
    None when the metrics carry no CPU figures."""
    if metrics_version(metrics) == 1:
        if not metrics.HasField("cpu") or not metrics.cpu.HasField("usage"):
            return None
        return CpuUsage(timestamp, metrics.cpu.usage.total)
    if not metrics.HasField("cpu"):
        return None
    return CpuUsage(timestamp, metrics.cpu.usage_usec * 1000)


def usage_nano_cores(prev: CpuUsage | None, cur: CpuUsage) -> int:
    """Cores in use, in billionths, between two samples of one container: 0 for the first
    sample, a non-positive interval, or a counter that went backwards (a restarted cgroup)."""
    if prev is None or prev.usage_core_nano_seconds is None or \
            cur.usage_core_nano_seconds is None:
        return 0
    interval = cur.timestamp - prev.timestamp
    if interval <= 0:
        return 0
    used = cur.usage_core_nano_seconds - prev.usage_core_nano_seconds
    if used < 0:
        return 0  # containerd would wrap around (uint64); a reset reads as idle here
    return int(used / interval * 1_000_000_000)


class CpuRateTracker:
    """The previous CPU sample of each container/sandbox id, to fill ``usage_nano_cores``
    (containerd keeps it in its container and sandbox stores). Thread-safe. Lifecycle: one per
    CRI plugin; :meth:`forget` an id when its container or sandbox is removed."""

    def __init__(self) -> None:
        self._last: dict[str, CpuUsage] = {}
        self._lock = threading.Lock()

    def update(self, key: str, cpu: CpuUsage) -> CpuUsage:
        """Set ``cpu.usage_nano_cores`` from the last sample of ``key``; remember ``cpu``.
        A sample not newer than the last one is answered 0 and not remembered."""
        with self._lock:
            prev = self._last.get(key)
            cpu.usage_nano_cores = usage_nano_cores(prev, cpu)
            if prev is None or cpu.timestamp > prev.timestamp:
                self._last[key] = CpuUsage(cpu.timestamp, cpu.usage_core_nano_seconds)
        return cpu

    def rate(self, key: str, cpu: CpuUsage) -> CpuUsage:
        """containerd 2.3.4's getUsageNanoCores (its fallback without a background
        collector): set ``cpu.usage_nano_cores`` from the last sample of ``key``, or leave it
        None when there is not enough data -- the first sample (remembered), a sample not
        newer than the last, or a counter that went backwards (neither remembered)."""
        with self._lock:
            prev = self._last.get(key)
            cur = cpu.usage_core_nano_seconds
            cpu.usage_nano_cores = None
            if cur is None:
                return cpu
            if prev is None or prev.usage_core_nano_seconds is None:
                self._last[key] = CpuUsage(cpu.timestamp, cur)
                return cpu
            interval = cpu.timestamp - prev.timestamp
            if interval <= 0 or cur < prev.usage_core_nano_seconds:
                return cpu
            cpu.usage_nano_cores = int((cur - prev.usage_core_nano_seconds) / interval
                                       * 1_000_000_000)
            self._last[key] = CpuUsage(cpu.timestamp, cur)
        return cpu

    def retain(self, keys: set[str]) -> None:
        """Forget every id not in ``keys`` (the containers and sandboxes that still exist)."""
        with self._lock:
            for k in [k for k in self._last if k not in keys]:
                del self._last[k]

    def forget(self, key: str) -> None:
        with self._lock:
            self._last.pop(key, None)


# --- memory --------------------------------------------------------------------------------

def working_set_bytes(metrics) -> int:
    """usage minus inactive file pages (what the kubelet evicts on), at least 0."""
    if metrics_version(metrics) == 1:
        mem = metrics.memory
        if not mem.HasField("usage"):
            return 0
        usage, inactive = mem.usage.usage, mem.total_inactive_file
    else:
        usage, inactive = metrics.memory.usage, metrics.memory.inactive_file
    return usage - inactive if inactive < usage else 0


def available_bytes(metrics, working_set: int) -> int:
    """limit minus the working set; 0 without a limit (or a working set above it)."""
    if metrics_version(metrics) == 1:
        limit = metrics.memory.usage.limit
    else:
        limit = metrics.memory.usage_limit
    if limit > UNLIMITED_MEMORY:
        return 0
    return max(limit - working_set, 0)


def memory_usage(metrics, timestamp: int) -> MemoryUsage | None:
    """runtime.v1 MemoryUsage from cgroup metrics; None when they carry no memory figures."""
    if metrics_version(metrics) == 1:
        if not metrics.HasField("memory") or not metrics.memory.HasField("usage"):
            return None
        mem = metrics.memory
        ws = working_set_bytes(metrics)
        return MemoryUsage(timestamp, working_set_bytes=ws,
                           available_bytes=available_bytes(metrics, ws),
                           usage_bytes=mem.usage.usage, rss_bytes=mem.total_rss,
                           page_faults=mem.total_pg_fault,
                           major_page_faults=mem.total_pg_maj_fault)
    if not metrics.HasField("memory"):
        return None
    mem = metrics.memory
    ws = working_set_bytes(metrics)
    # v2 has no rss: anon is what cAdvisor (and so containerd) reports
    return MemoryUsage(timestamp, working_set_bytes=ws,
                       available_bytes=available_bytes(metrics, ws), usage_bytes=mem.usage,
                       rss_bytes=mem.anon, page_faults=mem.pgfault,
                       major_page_faults=mem.pgmajfault)


# --- processes -----------------------------------------------------------------------------

def process_usage(metrics, timestamp: int) -> ProcessUsage | None:
    """Processes (tasks) in the cgroup: pids.current; None without a pids figure."""
    if not metrics.HasField("pids"):
        return None
    return ProcessUsage(timestamp, metrics.pids.current)


# --- writable layer ------------------------------------------------------------------------

def disk_usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) under ``path``, itself included: each distinct inode counted once,
    bytes as allocated blocks * 512 (sparse files count what they use; hard links once).
    Does not follow symlinks or cross into nothing else: a mount point under ``path`` is
    walked like a directory, as continuity's DiskUsage does. NotFound if ``path`` is gone."""
    seen: set[tuple[int, int]] = set()
    size = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise errdefs.NotFound(f"directory {path}") from None
    stack = [(path, st)]
    while stack:
        p, st = stack.pop()
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            size += st.st_blocks * _BLOCK
        if not _isdir(st):
            continue
        try:
            with os.scandir(p) as it:
                for entry in it:
                    try:
                        stack.append((entry.path, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # removed while we walk: a running container writes
        except (FileNotFoundError, NotADirectoryError):
            continue
    return size, len(seen)


def _isdir(st: os.stat_result) -> bool:
    import stat
    return stat.S_ISDIR(st.st_mode)


def writable_layer_usage(upper_dir: str, mountpoint: str,
                         timestamp: int | None = None) -> FilesystemUsage:
    """runtime.v1 FilesystemUsage of a container's writable layer: ``upper_dir`` is the
    snapshot's upper directory, ``mountpoint`` the image filesystem it lives on (containerd
    reports its snapshotter root). The walk is blocking: run it in a thread."""
    used, inodes = disk_usage(upper_dir)
    return FilesystemUsage(now_ns() if timestamp is None else timestamp, mountpoint,
                           used_bytes=used, inodes_used=inodes)


# --- network -------------------------------------------------------------------------------

def parse_net_dev(text: str) -> list[NetworkInterfaceUsage]:
    """/proc/net/dev: two header lines, then ``name: rx(bytes packets errs drop fifo frame
    compressed multicast) tx(bytes packets errs drop fifo colls carrier compressed)``."""
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        f = rest.split()
        if len(f) < 16:
            raise errdefs.InvalidArgument(f"invalid /proc/net/dev line {line!r}")
        try:
            n = [int(x) for x in f[:16]]
        except ValueError:
            raise errdefs.InvalidArgument(f"invalid /proc/net/dev line {line!r}") from None
        out.append(NetworkInterfaceUsage(
            name.strip(), rx_bytes=n[0], rx_errors=n[2], tx_bytes=n[8], tx_errors=n[10],
            rx_packets=n[1], rx_dropped=n[3], tx_packets=n[9], tx_dropped=n[11]))
    return out


def _network_usage(ifaces: list[NetworkInterfaceUsage], default_interface: str,
                   timestamp: int | None) -> NetworkUsage:
    usage = NetworkUsage(now_ns() if timestamp is None else timestamp)
    for i in ifaces:
        if i.name == "lo":  # loopback traffic never leaves the pod
            continue
        if i.name == default_interface:
            usage.default_interface = i
        usage.interfaces.append(i)
    if usage.default_interface is None and usage.interfaces:
        # containerd 2.3.4: without eth0 the first interface is the default
        usage.default_interface = usage.interfaces[0]
    return usage


def network_usage_of_pid(pid: int, default_interface: str = DEFAULT_INTERFACE,
                         timestamp: int | None = None) -> NetworkUsage:
    """The counters of the network namespace process ``pid`` is in (/proc/<pid>/net/dev).
    NotFound if the process is gone."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise errdefs.NotFound(f"process {pid}") from None
    return _network_usage(parse_net_dev(text), default_interface, timestamp)


def network_usage(netns_path: str, default_interface: str = DEFAULT_INTERFACE,
                  timestamp: int | None = None) -> NetworkUsage:
    """The counters of the pinned network namespace ``netns_path`` (a pod's netns file),
    read from a thread joined to it (no process needed in it). NotFound if it is gone.
    ``default_interface`` is None-valued in the result when the pod has no such interface
    (host-network pods are not asked: their figures are the node's)."""
    from ctrd.cri import netns

    def read() -> str:
        # /proc/thread-self/net follows this thread's namespace; /proc/self/net would be
        # the main thread's
        with open("/proc/thread-self/net/dev") as f:
            return f.read()

    text = netns.run_in_ns(netns_path, read)
    return _network_usage(parse_net_dev(text), default_interface, timestamp)


# --- assembling ----------------------------------------------------------------------------

def container_stats(metrics, timestamp: int, tracker: CpuRateTracker | None = None,
                    key: str = "", writable_layer: FilesystemUsage | None = None
                    ) -> ContainerStats:
    """ContainerStats from a container's cgroup metrics (None: no task, e.g. a created or
    exited container: only the writable layer is reported, as containerd does). With a
    ``tracker``, ``usage_nano_cores`` is filled from the previous sample of ``key``."""
    cs = ContainerStats(writable_layer=writable_layer)
    if metrics is None:
        return cs
    cs.cpu = cpu_usage(metrics, timestamp)
    if cs.cpu is not None and tracker is not None:
        tracker.rate(key, cs.cpu)
    cs.memory = memory_usage(metrics, timestamp)
    return cs


def sandbox_stats(metrics, timestamp: int, tracker: CpuRateTracker | None = None,
                  key: str = "", network: NetworkUsage | None = None,
                  containers: list[ContainerStats] | None = None) -> PodSandboxStats:
    """LinuxPodSandboxStats from the pod cgroup's metrics (``metrics`` None: the pod has no
    readable cgroup) plus its network usage and its containers' stats."""
    ps = PodSandboxStats(network=network, containers=list(containers or []))
    if metrics is None:
        return ps
    ps.cpu = cpu_usage(metrics, timestamp)
    if ps.cpu is not None and tracker is not None:
        tracker.rate(key, ps.cpu)
    ps.memory = memory_usage(metrics, timestamp)
    ps.process = process_usage(metrics, timestamp)
    return ps


def pids_current(metrics) -> int:
    """pids.current of a container's cgroup metrics (0 without metrics: no task). containerd
    2.3.4's pod ``process_count`` is this, summed over the pod's containers."""
    if metrics is None or not metrics.HasField("pids"):
        return 0
    return metrics.pids.current
