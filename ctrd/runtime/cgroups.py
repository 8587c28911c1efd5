"""A task's cgroup: where it is, its metrics in containerd's types, and OOM notification.

Import-light by contract: the shim imports this module, and the shim must not import grpc or
asyncio. Only the standard library's os/errno are imported at module level; the generated
protobuf modules are imported inside the functions that build messages, ctypes only by the
cgroup v2 OOM watcher.

Finding a cgroup (:func:`load`): ``/proc/<pid>/cgroup`` names the process's cgroup in each
hierarchy (``4:memory:/a/b``, ``2:cpu,cpuacct:/a/b``, ``0::/a/b`` for the unified one), and
``/proc/self/mountinfo`` says where each hierarchy is mounted and which of its directories is
the mount's root (a nested runtime sees ``/docker/<id>`` there; that prefix is stripped, as
containerd's cgroups library does). Which version to read follows containerd's ``Mode()``:
v2 only when ``/sys/fs/cgroup`` itself is a cgroup2 mount (unified); a hybrid host (v1
controllers plus an empty-ish ``/sys/fs/cgroup/unified``) is read as v1, like containerd's runc
shim does. :func:`load_path` finds a cgroup by its path instead (a pod's cgroup parent), with
systemd slice names expanded.

Metrics (:meth:`Cgroup.metrics`) are ``io.containerd.cgroups.v1.Metrics`` or
``io.containerd.cgroups.v2.Metrics`` filled the way github.com/containerd/cgroups fills them
(same files, same conversions: ``pids.max`` of ``max`` is 0 in v1 and 2^64-1 in v2, cpuacct
ticks at 100 Hz, blkio falls back to the throttle files, v2 reads cpu.stat/memory.stat only
for controllers listed in ``cgroup.controllers``...). A file that does not exist leaves its
figures at zero (containerd's runc shim passes ``IgnoreNotExist``); a file that cannot be
parsed is an error. :meth:`Cgroup.metrics_any` wraps the message in an ``Any`` with the bare
type URL ``ctr tasks metrics`` decodes.

OOM (:meth:`Cgroup.oom_watcher`): v1 registers an eventfd on ``memory.oom_control`` through
``cgroup.event_control``; v2 watches ``memory.events`` with inotify and compares its
``oom_kill`` counter. Both expose ``fileno()`` for an epoll loop; no threads.
"""

from __future__ import annotations

import errno
import os

from ctrd import errdefs

CGROUP_ROOT = "/sys/fs/cgroup"
MOUNTINFO = "/proc/self/mountinfo"

#: Type URLs (containerd registers the messages under their proto full names).
V1_METRICS_TYPE = "io.containerd.cgroups.v1.Metrics"
V2_METRICS_TYPE = "io.containerd.cgroups.v2.Metrics"

_CLOCK_TICKS = 100          # USER_HZ; containerd hard-codes it too (it is 100 on Linux)
_MAX_U64 = (1 << 64) - 1
_MAX_U32 = (1 << 32) - 1
_MISSING = (errno.ENOENT, errno.ENODEV)  # ENODEV: a file of a cgroup being removed


# --- where cgroups are ---------------------------------------------------------------------

class CgroupMount:
    """One cgroup hierarchy mounted on this host (as this process sees it): ``point`` where
    it is mounted (/sys/fs/cgroup/memory), ``root`` the hierarchy's directory mounted there
    ("/" normally), ``version`` 1 or 2, ``controllers`` (v1) from the super options, incl.
    ``name=...``. (A plain class: the shim imports no dataclasses.)"""

    __slots__ = ("point", "root", "version", "controllers")

    def __init__(self, point: str, root: str, version: int,
                 controllers: frozenset[str] = frozenset()) -> None:
        self.point, self.root, self.version = point, root, version
        self.controllers = frozenset(controllers)

    def __repr__(self) -> str:
        return (f"CgroupMount({self.point!r}, {self.root!r}, {self.version}, "
                f"{sorted(self.controllers)})")


def cgroup_mounts(mountinfo: str = MOUNTINFO) -> list[CgroupMount]:
    """Every cgroup and cgroup2 mount in ``mountinfo``, in order."""
    out = []
    with open(mountinfo) as f:
        for line in f:
            left, sep, right = line.rstrip("\n").partition(" - ")
            if not sep:
                continue
            lf, rf = left.split(" "), right.split(" ")
            if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
                continue
            root, point = _unescape(lf[3]), _unescape(lf[4])
            if rf[0] == "cgroup2":
                out.append(CgroupMount(point, root, 2))
            else:
                opts = frozenset(rf[2].split(","))
                known = {o for o in opts
                         if o.startswith("name=") or o in _V1_CONTROLLER_NAMES}
                out.append(CgroupMount(point, root, 1, frozenset(known)))
    return out


_V1_CONTROLLER_NAMES = frozenset((
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
    "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"))


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in s:
        return s
    import re
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mode(mountinfo: str = MOUNTINFO) -> str:
    """``unified`` (cgroup2 on /sys/fs/cgroup), ``hybrid`` (v1 plus a cgroup2 elsewhere) or
    ``legacy`` (v1 only), as containerd's ``cgroups.Mode()`` tells them apart."""
    mounts = cgroup_mounts(mountinfo)
    if any(m.version == 2 and m.point == CGROUP_ROOT for m in mounts):
        return "unified"
    if any(m.version == 2 for m in mounts):
        return "hybrid"
    return "legacy"


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """``/proc/<pid>/cgroup`` -> ({v1 controller or name=...: path}, unified path or None)."""
    v1: dict[str, str] = {}
    unified = None
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise errdefs.InvalidArgument(f"invalid cgroup entry {line!r}")
        if parts[1] == "":
            unified = parts[2]
        else:
            for c in parts[1].split(","):
                v1[c] = parts[2]
    return v1, unified


def _under(mount: CgroupMount, path: str) -> str:
    """The directory of cgroup ``path`` (as /proc shows it) in ``mount``."""
    rel = path
    if mount.root not in ("", "/"):
        # /proc shows paths from the hierarchy's root; the mount shows mount.root's subtree
        if rel == mount.root:
            rel = "/"
        elif rel.startswith(mount.root.rstrip("/") + "/"):
            rel = rel[len(mount.root.rstrip("/")):]
    return os.path.normpath(os.path.join(mount.point, rel.lstrip("/")))


# --- the cgroup ----------------------------------------------------------------------------

class Cgroup:
    """One cgroup. v1: ``paths`` maps each controller (``memory``, ``cpu``, ``name=systemd``,
    ...) to its directory; v2: ``path`` is the cgroup's directory in the unified hierarchy.

    Built by :func:`load` / :func:`load_path` (or directly, e.g. over a copy of a cgroup's
    files). Holds no fds: each read opens and closes the files it needs, so the object can
    outlive the cgroup (reads then find nothing; :meth:`exists` says so).
    """

    __slots__ = ("version", "paths", "path")

    def __init__(self, version: int, paths: dict[str, str] | None = None,
                 path: str = "") -> None:
        self.version, self.paths, self.path = version, dict(paths or {}), path

    def __repr__(self) -> str:
        where = self.path if self.version == 2 else self.paths
        return f"Cgroup(v{self.version}, {where!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cgroup) and (self.version, self.paths, self.path) == \
            (other.version, other.paths, other.path)

    def exists(self) -> bool:
        if self.version == 2:
            return os.path.isdir(self.path)
        return any(os.path.isdir(p) for p in self.paths.values())

    def procs(self) -> list[int]:
        """Pids in the cgroup (v1: the memory hierarchy's view, or any one)."""
        d = self.path if self.version == 2 else (
            self.paths.get("memory") or self.paths.get("pids") or next(iter(self.paths.values()), ""))
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError as e:
            if e.errno in _MISSING:
                return []
            raise

    def metrics(self):
        """A fresh ``io.containerd.cgroups.v1.Metrics`` (v1) or ``...v2.Metrics`` (v2)."""
        return _v2_metrics(self.path) if self.version == 2 else _v1_metrics(self.paths)

    def stats_metrics(self):
        """The part of :meth:`metrics` the CRI stats read (CPU usage, memory usage, limit and
        stat, pids.current), in the same message: a handful of small files per call instead
        of every controller's (what a kubelet's stats poll of every container costs)."""
        return _stats_v2(self.path) if self.version == 2 else _stats_v1(self.paths)

    def metrics_any(self):
        """:meth:`metrics` in a ``google.protobuf.Any`` with containerd's bare type URL."""
        from ctrd import typeurl
        return typeurl.pack(self.metrics())

    def oom_watcher(self) -> "OomWatcher":
        """A watcher of this cgroup's OOM kills (see :class:`V1OomWatcher`,
        :class:`V2OomWatcher`). :class:`~ctrd.errdefs.NotFound` without a memory cgroup."""
        if self.version == 2:
            return V2OomWatcher(self.path)
        mem = self.paths.get("memory")
        if not mem:
            raise errdefs.NotFound("no memory cgroup to watch for OOM")
        return V1OomWatcher(mem)


def load(pid: int, version: int | None = None, proc: str = "/proc",
         mountinfo: str = MOUNTINFO) -> Cgroup:
    """The cgroup of process ``pid``.

    ``version`` None picks by :func:`mode` (v2 only on a unified host); 1 or 2 forces one (a
    hybrid host has both). :class:`~ctrd.errdefs.NotFound` if the process is gone or is in no
    cgroup of that version that this host has mounted.
    """
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            text = f.read()
    except FileNotFoundError:
        raise errdefs.NotFound(f"process {pid}") from None
    except ProcessLookupError:
        raise errdefs.NotFound(f"process {pid}") from None
    v1, unified = parse_proc_cgroup(text)
    mounts = cgroup_mounts(mountinfo)
    if version is None:
        version = 2 if mode(mountinfo) == "unified" else 1
    if version == 2:
        m = _unified_mount(mounts)
        if unified is None or m is None:
            raise errdefs.NotFound(f"cgroup v2 of process {pid}")
        return Cgroup(2, path=_under(m, unified))
    paths = {}
    for m in mounts:
        if m.version != 1:
            continue
        for c in m.controllers:
            if c in v1 and c not in paths:
                paths[c] = _under(m, v1[c])
    if not paths:
        raise errdefs.NotFound(f"cgroup v1 of process {pid}")
    return Cgroup(1, paths=paths)


def load_path(path: str, version: int | None = None, mountinfo: str = MOUNTINFO) -> Cgroup:
    """The cgroup at ``path`` in every hierarchy (an OCI ``cgroupsPath`` or a pod's cgroup
    parent): ``/kubepods/pod1`` as is, systemd names expanded (``a-b.slice`` ->
    ``/a.slice/a-b.slice``, ``slice:prefix:name`` -> ``<slice path>/prefix-name.scope``).
    Whether it exists is not checked (see :meth:`Cgroup.exists`)."""
    path = expand_systemd(path)
    if not path.startswith("/"):
        raise errdefs.InvalidArgument(f"cgroup path {path!r} is not absolute")
    mounts = cgroup_mounts(mountinfo)
    if version is None:
        version = 2 if mode(mountinfo) == "unified" else 1
    if version == 2:
        m = _unified_mount(mounts)
        if m is None:
            raise errdefs.NotFound("cgroup v2 hierarchy")
        return Cgroup(2, path=_under(m, path))
    paths = {}
    for m in mounts:
        if m.version == 1:
            for c in m.controllers:
                paths.setdefault(c, _under(m, path))
    if not paths:
        raise errdefs.NotFound("cgroup v1 hierarchies")
    return Cgroup(1, paths=paths)


def expand_systemd(path: str) -> str:
    """runc's reading of systemd cgroup names; other paths are returned unchanged."""
    if path.startswith("/"):
        return path
    parts = path.split(":")
    if len(parts) == 3:                     # slice:prefix:name (runc's systemd cgroupsPath)
        sl, prefix, name = parts
        base = expand_slice(sl or "system.slice")
        unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
        return f"{base}/{unit}"
    if path.endswith(".slice"):
        return expand_slice(path)
    return path


def expand_slice(name: str) -> str:
    """``a-b-c.slice`` -> ``/a.slice/a-b.slice/a-b-c.slice`` (systemd's nesting by dashes)."""
    if not name.endswith(".slice") or "/" in name:
        raise errdefs.InvalidArgument(f"invalid systemd slice name {name!r}")
    stem = name[: -len(".slice")]
    if stem == "-":
        return "/"
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise errdefs.InvalidArgument(f"invalid systemd slice name {name!r}")
    out, acc = [], ""
    for comp in stem.split("-"):
        acc = f"{acc}-{comp}" if acc else comp
        out.append(f"{acc}.slice")
    return "/" + "/".join(out)


def _unified_mount(mounts: list[CgroupMount]) -> CgroupMount | None:
    v2 = [m for m in mounts if m.version == 2]
    for m in v2:
        if m.point == CGROUP_ROOT:
            return m
    return v2[0] if v2 else None


# --- file reading --------------------------------------------------------------------------

class _Missing(Exception):
    """A cgroup file that does not exist: its figures stay zero."""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        if e.errno in _MISSING:
            raise _Missing(path) from None
        raise


def _bad(path: str, what: str) -> errdefs.CtrdError:
    return errdefs.CtrdError(f"cgroup file {path}: {what}")


def _uint(s: str, path: str) -> int:
    """containerd's parseUint: decimal; a negative number reads as 0; beyond 2^64-1 is an
    error (as a too-large positive number is in Go)."""
    try:
        v = int(s, 10)
    except ValueError:
        raise _bad(path, f"not a number: {s!r}") from None
    if v < 0:
        return 0
    if v > _MAX_U64:
        raise _bad(path, f"out of range: {s!r}")
    return v


def _read_uint(path: str) -> int:
    return _uint(_read(path).strip(), path)


def _read_kv(path: str) -> dict[str, int]:
    """A flat-keyed file (``key value`` per line) of numbers."""
    out = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise _bad(path, f"invalid line {line!r}")
        out[parts[0]] = _uint(parts[1], path)
    return out


def _read_kv_loose(path: str) -> dict[str, int | str]:
    """v2's parseKV: values that are not numbers are kept as strings."""
    out: dict[str, int | str] = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise _bad(path, f"invalid line {line!r}")
        try:
            out[parts[0]] = _uint(parts[1], path)
        except errdefs.CtrdError:
            out[parts[0]] = parts[1]
    return out


def _missing_ok(fn, *args) -> bool:
    """Run a reader; False if a file it needed does not exist."""
    try:
        fn(*args)
        return True
    except _Missing:
        return False


# --- v1 ------------------------------------------------------------------------------------

_V1_MEMORY_STAT_FIELDS = {
    # memory.stat key -> MemoryStat field
    "cache": "cache", "rss": "rss", "rss_huge": "rss_huge", "mapped_file": "mapped_file",
    "dirty": "dirty", "writeback": "writeback", "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out", "pgfault": "pg_fault", "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon", "active_anon": "active_anon",
    "inactive_file": "inactive_file", "active_file": "active_file",
    "unevictable": "unevictable",
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
    "total_cache": "total_cache", "total_rss": "total_rss",
    "total_rss_huge": "total_rss_huge", "total_mapped_file": "total_mapped_file",
    "total_dirty": "total_dirty", "total_writeback": "total_writeback",
    "total_pgpgin": "total_pg_pg_in", "total_pgpgout": "total_pg_pg_out",
    "total_pgfault": "total_pg_fault", "total_pgmajfault": "total_pg_maj_fault",
    "total_inactive_anon": "total_inactive_anon", "total_active_anon": "total_active_anon",
    "total_inactive_file": "total_inactive_file", "total_active_file": "total_active_file",
    "total_unevictable": "total_unevictable",
}

_V1_MEMORY_ENTRIES = (("", "usage"), ("memsw.", "swap"), ("kmem.", "kernel"),
                      ("kmem.tcp.", "kernel_tcp"))
_V1_ENTRY_FILES = (("usage_in_bytes", "usage"), ("max_usage_in_bytes", "max"),
                   ("failcnt", "failcnt"), ("limit_in_bytes", "limit"))

_V1_BLKIO_RECURSIVE = (
    ("sectors_recursive", "sectors_recursive"),
    ("io_service_bytes_recursive", "io_service_bytes_recursive"),
    ("io_serviced_recursive", "io_serviced_recursive"),
    ("io_queued_recursive", "io_queued_recursive"),
    ("io_service_time_recursive", "io_service_time_recursive"),
    ("io_wait_time_recursive", "io_wait_time_recursive"),
    ("io_merged_recursive", "io_merged_recursive"),
    ("time_recursive", "io_time_recursive"),
)
_V1_BLKIO_THROTTLE = (("throttle.io_serviced", "io_serviced_recursive"),
                      ("throttle.io_service_bytes", "io_service_bytes_recursive"))


def _v1_metrics(paths: dict[str, str]):
    from ctrd.api.cgroups.stats.v1 import metrics_pb2 as v1

    m = v1.Metrics()
    # containerd always sends cpu with both parts, whatever the controllers say
    m.cpu.usage.SetInParent()
    m.cpu.throttling.SetInParent()
    readers = (("hugetlb", _v1_hugetlb), ("pids", _v1_pids), ("cpu", _v1_cpu),
               ("cpuacct", _v1_cpuacct), ("memory", _v1_memory), ("blkio", _v1_blkio),
               ("rdma", _v1_rdma))
    for controller, reader in readers:
        d = paths.get(controller)
        if d and os.path.isdir(d):
            _missing_ok(reader, d, m)
    return m


def hugepage_sizes(sysfs: str = "/sys/kernel/mm/hugepages") -> list[str]:
    """The huge page sizes of this host as cgroup file names spell them (``2MB``, ``1GB``)."""
    try:
        names = sorted(os.listdir(sysfs))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if not n.startswith("hugepages-") or not n.endswith("kB"):
            continue
        try:
            size = int(n[len("hugepages-"):-2]) * 1024
        except ValueError:
            continue
        out.append(_size_name(size))
    return out


def _size_name(size: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:g}{units[i]}"


def _v1_hugetlb(d: str, m) -> None:
    for size in hugepage_sizes():
        vals = {}
        try:
            for fname, attr in (("usage_in_bytes", "usage"), ("max_usage_in_bytes", "max"),
                                ("failcnt", "failcnt")):
                vals[attr] = _read_uint(os.path.join(d, f"hugetlb.{size}.{fname}"))
        except _Missing:
            return  # containerd stops at the first missing file
        m.hugetlb.add(pagesize=size, **vals)


def _v1_pids(d: str, m) -> None:
    current = _read_uint(os.path.join(d, "pids.current"))
    raw = _read(os.path.join(d, "pids.max")).strip()
    limit = 0 if raw == "max" else _uint(raw, os.path.join(d, "pids.max"))
    m.pids.SetInParent()
    m.pids.current, m.pids.limit = current, limit


def _v1_cpu(d: str, m) -> None:
    kv = _read_kv(os.path.join(d, "cpu.stat"))
    t = m.cpu.throttling
    t.periods = kv.get("nr_periods", 0)
    t.throttled_periods = kv.get("nr_throttled", 0)
    t.throttled_time = kv.get("throttled_time", 0)


def _v1_cpuacct(d: str, m) -> None:
    stat_path = os.path.join(d, "cpuacct.stat")
    fields = _read(stat_path).split()
    if len(fields) != 4 or fields[0] != "user" or fields[2] != "system":
        raise _bad(stat_path, f"expected 'user N system M', got {' '.join(fields)!r}")
    user = _uint(fields[1], stat_path) * 1_000_000_000 // _CLOCK_TICKS
    kernel = _uint(fields[3], stat_path) * 1_000_000_000 // _CLOCK_TICKS
    total = _read_uint(os.path.join(d, "cpuacct.usage"))
    pc_path = os.path.join(d, "cpuacct.usage_percpu")
    percpu = [_uint(x, pc_path) for x in _read(pc_path).split()]
    u = m.cpu.usage
    u.total, u.user, u.kernel = total, user, kernel
    del u.per_cpu[:]
    u.per_cpu.extend(percpu)


def _v1_memory(d: str, m) -> None:
    raw = _read_kv(os.path.join(d, "memory.stat"))
    mem = m.memory
    mem.SetInParent()
    for key, attr in _V1_MEMORY_STAT_FIELDS.items():
        setattr(mem, attr, raw.get(key, 0))
    for _, attr in _V1_MEMORY_ENTRIES:
        getattr(mem, attr).SetInParent()
    oc = _read_kv(os.path.join(d, "memory.oom_control"))
    m.memory_oom_control.oom_kill_disable = oc.get("oom_kill_disable", 0)
    m.memory_oom_control.under_oom = oc.get("under_oom", 0)
    m.memory_oom_control.oom_kill = oc.get("oom_kill", 0)
    for prefix, attr in _V1_MEMORY_ENTRIES:
        entry = getattr(mem, attr)
        # without swap accounting (memsw) or kmem files, those entries stay zero
        for fname, field_name in _V1_ENTRY_FILES:
            try:
                setattr(entry, field_name,
                        _read_uint(os.path.join(d, f"memory.{prefix}{fname}")))
            except _Missing:
                break


def _partitions(path: str = "/proc/partitions") -> dict[tuple[int, int], str]:
    devices: dict[tuple[int, int], str] = {}
    for i, line in enumerate(_read(path).splitlines()):
        if i < 2:
            continue                  # header and blank line
        f = line.split()
        if len(f) < 4:
            continue
        try:
            key = (int(f[0]), int(f[1]))
        except ValueError:
            raise _bad(path, f"invalid line {line!r}") from None
        devices.setdefault(key, "/dev/" + f[3])
    return devices


def _v1_blkio_entries(path: str, devices: dict, out) -> None:
    for line in _read(path).splitlines():
        fields = line.replace(":", " ").split()
        if not fields:
            continue
        if len(fields) < 3:
            if len(fields) == 2 and fields[0] == "Total":
                continue
            raise _bad(path, f"invalid line {line!r}")
        try:
            major, minor = int(fields[0]), int(fields[1])
            op, value = (fields[2], int(fields[3])) if len(fields) == 4 else ("", int(fields[2]))
        except ValueError:
            raise _bad(path, f"invalid line {line!r}") from None
        out.add(op=op, device=devices.get((major, minor), ""), major=major, minor=minor,
                value=value)


def _v1_blkio(d: str, m) -> None:
    b = m.blkio
    b.SetInParent()
    devices = _partitions()
    size = 0
    if os.path.lexists(os.path.join(d, "blkio.io_serviced_recursive")):
        for fname, attr in _V1_BLKIO_RECURSIVE:
            _v1_blkio_entries(os.path.join(d, "blkio." + fname), devices, getattr(b, attr))
            size += len(getattr(b, attr))
    if size:
        return
    # no CFQ figures (another I/O scheduler): the throttle files count every device
    for fname, attr in _V1_BLKIO_THROTTLE:
        _v1_blkio_entries(os.path.join(d, "blkio." + fname), devices, getattr(b, attr))


def _rdma_entries(text: str, out) -> None:
    for line in text.split("\n"):
        parts = line.split()
        if len(parts) != 3:
            continue
        e = out.add(device=parts[0])
        for kv in parts[1:]:
            k, sep, v = kv.partition("=")
            if not sep:
                continue
            if v == "max":
                n = _MAX_U32
            else:
                try:
                    n = int(v)
                except ValueError:
                    continue
                if n < 0:
                    n = 0
                elif n > _MAX_U32:
                    continue
            if k == "hca_handle":
                e.hca_handles = n
            elif k == "hca_object":
                e.hca_objects = n


def _v1_rdma(d: str, m) -> None:
    current = _read(os.path.join(d, "rdma.current"))
    limit = _read(os.path.join(d, "rdma.max"))
    if len(current.split("\n")) != len(limit.split("\n")):
        return  # a device went away between the reads: containerd reports nothing
    m.rdma.SetInParent()
    _rdma_entries(current, m.rdma.current)
    _rdma_entries(limit, m.rdma.limit)


# --- v2 ------------------------------------------------------------------------------------

_V2_CPU_FIELDS = ("usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled",
                  "throttled_usec")
_V2_MEMORY_FIELDS = (
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty",
    "file_writeback", "anon_thp", "inactive_anon", "active_anon", "inactive_file",
    "active_file", "unevictable", "slab_reclaimable", "slab_unreclaimable", "pgfault",
    "pgmajfault", "workingset_refault", "workingset_activate", "workingset_nodereclaim",
    "pgrefill", "pgscan", "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree",
    "pglazyfreed", "thp_fault_alloc", "thp_collapse_alloc")


def _v2_single(path: str) -> int:
    """getStatFileContentUint64: missing or unparsable is 0, ``max`` is 2^64-1."""
    try:
        s = _read(path).strip()
    except (_Missing, OSError):
        return 0
    if s == "max":
        return _MAX_U64
    try:
        return _uint(s, path)
    except errdefs.CtrdError:
        return 0


def _v2_stat_values(d: str) -> dict[str, int | str]:
    """cpu.stat and memory.stat of the controllers ``d`` has; NotFound if ``d`` is no
    cgroup (any more)."""
    try:
        controllers = _read(os.path.join(d, "cgroup.controllers")).split()
    except _Missing:
        raise errdefs.NotFound(f"cgroup {d}") from None
    out: dict[str, int | str] = {}
    for c in ("cpu", "memory"):
        if c in controllers:
            try:
                out.update(_read_kv_loose(os.path.join(d, f"{c}.stat")))
            except _Missing:
                pass
    return out


def _v2_metrics(d: str):
    from ctrd.api.cgroups.v2.stats import metrics_pb2 as v2

    out = _v2_stat_values(d)
    for name in ("pids.current", "pids.max"):
        try:
            s = _read(os.path.join(d, name)).strip()
        except _Missing:
            continue
        try:
            out[name] = _uint(s, name)
        except errdefs.CtrdError:
            out[name] = s
    try:
        events = _read_kv_loose(os.path.join(d, "memory.events"))
    except _Missing:
        events = {}

    def num(key: str, src=out) -> int:
        v = src.get(key, 0)
        return v if isinstance(v, int) else 0

    def pid_value(key: str) -> int:
        v = out.get(key, 0)
        return v if isinstance(v, int) else (_MAX_U64 if v == "max" else 0)

    m = v2.Metrics()
    for part in (m.pids, m.cpu, m.memory):
        part.SetInParent()
    m.pids.current, m.pids.limit = pid_value("pids.current"), pid_value("pids.max")
    for f in _V2_CPU_FIELDS:
        setattr(m.cpu, f, num(f))
    for f in _V2_MEMORY_FIELDS:
        setattr(m.memory, f, num(f))
    m.memory.usage = _v2_single(os.path.join(d, "memory.current"))
    m.memory.usage_limit = _v2_single(os.path.join(d, "memory.max"))
    m.memory.swap_usage = _v2_single(os.path.join(d, "memory.swap.current"))
    m.memory.swap_limit = _v2_single(os.path.join(d, "memory.swap.max"))
    if events:
        for f in ("low", "high", "max", "oom", "oom_kill"):
            setattr(m.memory_events, f, num(f, events))
    m.io.SetInParent()
    _v2_io(d, m.io.usage)
    m.rdma.SetInParent()
    for fname, target in (("rdma.current", m.rdma.current), ("rdma.max", m.rdma.limit)):
        try:
            _rdma_entries(_read(os.path.join(d, fname)), target)
        except _Missing:
            pass
    _v2_hugetlb(d, m)
    return m


# --- the CRI's figures only ----------------------------------------------------------------

def _stats_v1(paths: dict[str, str]):
    """What :func:`_v1_metrics` reads that the CRI stats use, and nothing else: cpuacct.usage,
    memory usage and limit, memory.stat, pids.current (5 small files instead of ~40 and
    /proc/partitions)."""
    from ctrd.api.cgroups.stats.v1 import metrics_pb2 as v1

    m = v1.Metrics()
    m.cpu.usage.SetInParent()
    m.cpu.throttling.SetInParent()
    d = paths.get("cpuacct")
    if d:
        try:
            m.cpu.usage.total = _read_uint(os.path.join(d, "cpuacct.usage"))
        except _Missing:
            pass
    d = paths.get("memory")
    if d:
        try:
            raw = _read_kv(os.path.join(d, "memory.stat"))
            usage = _read_uint(os.path.join(d, "memory.usage_in_bytes"))
            limit = _read_uint(os.path.join(d, "memory.limit_in_bytes"))
        except _Missing:
            pass
        else:
            mem = m.memory
            for key, attr in _V1_MEMORY_STAT_FIELDS.items():
                setattr(mem, attr, raw.get(key, 0))
            mem.usage.usage, mem.usage.limit = usage, limit
    d = paths.get("pids")
    if d:
        try:
            current = _read_uint(os.path.join(d, "pids.current"))
        except _Missing:
            pass
        else:
            m.pids.SetInParent()
            m.pids.current = current
    return m


def _stats_v2(d: str):
    """What :func:`_v2_metrics` reads that the CRI stats use: cpu.stat, memory.stat,
    memory.current and memory.max, pids.current (no io, rdma, hugetlb, events, swap)."""
    from ctrd.api.cgroups.v2.stats import metrics_pb2 as v2

    out = _v2_stat_values(d)

    def num(key: str) -> int:
        v = out.get(key, 0)
        return v if isinstance(v, int) else 0

    m = v2.Metrics()
    for part in (m.pids, m.cpu, m.memory):
        part.SetInParent()
    try:
        m.pids.current = _read_uint(os.path.join(d, "pids.current"))
    except (_Missing, errdefs.CtrdError):
        pass
    for f in _V2_CPU_FIELDS:
        setattr(m.cpu, f, num(f))
    for f in _V2_MEMORY_FIELDS:
        setattr(m.memory, f, num(f))
    m.memory.usage = _v2_single(os.path.join(d, "memory.current"))
    m.memory.usage_limit = _v2_single(os.path.join(d, "memory.max"))
    return m


def _v2_io(d: str, out) -> None:
    try:
        text = _read(os.path.join(d, "io.stat"))
    except _Missing:
        return
    for line in text.split("\n"):
        parts = line.split(" ")
        if len(parts) < 2:
            continue
        majmin = parts[0].split(":")
        if len(majmin) != 2:
            continue
        try:
            major, minor = int(majmin[0]), int(majmin[1])
        except ValueError:
            return  # containerd stops at a malformed device
        e = out.add(major=major, minor=minor)
        for kv in parts[1:]:
            k, sep, v = kv.partition("=")
            if not sep or k not in ("rbytes", "wbytes", "rios", "wios"):
                continue
            try:
                setattr(e, k, int(v))
            except ValueError:
                continue


def _v2_hugetlb(d: str, m) -> None:
    try:
        names = os.listdir(d)
    except OSError:
        return
    sizes: dict[str, dict[str, int]] = {}
    for n in sorted(names):
        if "hugetlb" not in n or not (n.endswith("max") or n.endswith("current")):
            continue
        parts = n.split(".")
        if len(parts) < 3:
            continue
        entry = sizes.setdefault(parts[1], {})
        try:
            s = _read(os.path.join(d, n)).strip()
        except (_Missing, OSError):
            continue
        if s == "max":
            v = _MAX_U64
        else:
            try:
                v = int(s)
            except ValueError:
                continue
        if parts[2] in ("max", "current"):
            entry[parts[2]] = v
    for size in sorted(sizes):
        m.hugetlb.add(pagesize=size, current=sizes[size].get("current", 0),
                      max=sizes[size].get("max", 0))


# --- OOM -----------------------------------------------------------------------------------

class OomWatcher:
    """Lifecycle: made by :meth:`Cgroup.oom_watcher`; register :meth:`fileno` for reading
    in an epoll loop; when it is readable call :meth:`oom_happened` (True: at least one OOM
    since the last call; publish /tasks/oom). Once :attr:`gone` is True the cgroup was
    removed: stop watching and :meth:`close`. :meth:`close` is idempotent."""

    gone: bool = False

    def fileno(self) -> int:
        raise NotImplementedError

    def oom_happened(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class V1OomWatcher(OomWatcher):
    """cgroup v1: an eventfd registered with ``cgroup.event_control`` for
    ``memory.oom_control``. The kernel counts on the eventfd each time the cgroup (or an
    ancestor's OOM reaching it) is out of memory, and once more when the cgroup is removed;
    the two are told apart by whether the directory still exists, as containerd does."""

    def __init__(self, memory_dir: str) -> None:
        self.dir = memory_dir
        self.gone = False
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(os.path.join(memory_dir, "memory.oom_control"),
                          os.O_RDONLY | os.O_CLOEXEC)
            try:
                with open(os.path.join(memory_dir, "cgroup.event_control"), "w") as f:
                    f.write(f"{self._efd} {ofd}")
            finally:
                os.close(ofd)  # the kernel holds its own reference from here on
        except FileNotFoundError:
            os.close(self._efd)
            raise errdefs.NotFound(f"memory cgroup {memory_dir}") from None
        except BaseException:
            os.close(self._efd)
            raise

    def fileno(self) -> int:
        return self._efd

    def oom_happened(self) -> bool:
        if self._efd < 0:
            return False
        try:
            count = os.eventfd_read(self._efd)
        except BlockingIOError:
            return False
        if not count:
            return False
        if not os.path.isdir(self.dir):
            self.gone = True
            return False
        return True

    def close(self) -> None:
        if self._efd >= 0:
            os.close(self._efd)  # the kernel drops the registration with the last ref
            self._efd = -1


_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class V2OomWatcher(OomWatcher):
    """cgroup v2: inotify on ``memory.events`` (the kernel signals a modification whenever a
    counter moves); an OOM is an increase of its ``oom_kill`` counter since the last look
    (the counter at construction is the baseline). Also watches ``cgroup.events`` as
    containerd does, so a cgroup that empties wakes the loop; :attr:`gone` turns True once
    ``memory.events`` can no longer be read (the cgroup was removed)."""

    def __init__(self, cgroup_dir: str) -> None:
        import ctypes

        self.dir = cgroup_dir
        self.gone = False
        self._events = os.path.join(cgroup_dir, "memory.events")
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self._fd = fd
        try:
            for path, required in ((self._events, True),
                                   (os.path.join(cgroup_dir, "cgroup.events"), False)):
                if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
                    e = ctypes.get_errno()
                    if e == errno.ENOENT and required:
                        raise errdefs.NotFound(f"{path} (no memory controller in {cgroup_dir}?)")
                    if required or e != errno.ENOENT:
                        raise OSError(e, f"inotify_add_watch {path}: {os.strerror(e)}")
            self._last = self._oom_kills() or 0
        except BaseException:
            os.close(fd)
            raise

    def _oom_kills(self) -> int | None:
        try:
            kv = _read_kv_loose(self._events)
        except (_Missing, OSError):
            return None
        v = kv.get("oom_kill", 0)
        return v if isinstance(v, int) else 0

    def fileno(self) -> int:
        return self._fd

    def oom_happened(self) -> bool:
        if self._fd < 0:
            return False
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass
        n = self._oom_kills()
        if n is None:
            self.gone = True
            return False
        if n > self._last:
            self._last = n
            return True
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
