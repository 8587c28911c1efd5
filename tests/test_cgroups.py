"""Cgroup metrics (ctrd.runtime.cgroups) and the CRI stats built on them (ctrd.cri.stats).

Real cgroups: each test makes its own cgroups under this process's own cgroup in each v1
hierarchy (memory, cpu, cpuacct, pids), puts a Python child in them and watches the figures
move; a tiny memory limit makes a real OOM kill for the OOM watcher. The fixtures kill every
process in those cgroups and remove them, pass or fail. Network figures come from a real veth
pair into a namespace made with ctrd.cri.netns. What this host cannot do (cgroup v2 memory: the
memory controller is bound to v1 here) is read from a directory holding the kernel's file
formats instead, and says so.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ctrd import errdefs
from ctrd.cri import netns
from ctrd.cri import stats
from ctrd.runtime import cgroups

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="cgroups and namespaces need root")

MiB = 1 << 20

# A child driven line by line: "alloc N" holds N written bytes, "spin S" burns S seconds of
# its own CPU time, "fork N" starts N sleeps; each answers "ok".
CHILD = r"""
import subprocess, sys, time
hold = []
for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "alloc":
        hold.append(b"x" * int(arg))
    elif cmd == "spin":
        end = time.process_time() + float(arg)
        while time.process_time() < end:
            pass
    elif cmd == "fork":
        hold.extend(subprocess.Popen(["sleep", "1000"]) for _ in range(int(arg)))
    print("ok", flush=True)
"""


class Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def do(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line == "ok\n", f"child answered {line!r} to {cmd!r} (exit {self.proc.poll()})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# --- fixtures ------------------------------------------------------------------------------

def _kill_all_in(d: str) -> None:
    for _ in range(100):
        try:
            pids = [int(x) for x in Path(d, "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _rmdir(d: str) -> None:
    _kill_all_in(d)
    for _ in range(100):
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while the last task exits
            time.sleep(0.05)
    os.rmdir(d)


class CgroupMaker:
    """Makes cgroups under this process's own cgroups; removes them all in :meth:`cleanup`."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def v1(self, controllers=("memory", "cpu", "cpuacct", "pids")) -> cgroups.Cgroup:
        if cgroups.mode() == "unified":
            pytest.skip("this host has no cgroup v1 hierarchies (unified mode)")
        own = cgroups.load(os.getpid(), version=1)
        name = f"ctrd-test-{uuid.uuid4().hex[:12]}"
        paths = {}
        for c in controllers:
            if c not in own.paths:
                pytest.skip(f"no v1 {c} hierarchy here")
            d = os.path.join(own.paths[c], name)
            os.mkdir(d)
            self.made.append(d)
            paths[c] = d
        return cgroups.Cgroup(1, paths=paths)

    def v2(self) -> cgroups.Cgroup:
        try:
            own = cgroups.load(os.getpid(), version=2)
        except errdefs.NotFound:
            pytest.skip("no cgroup v2 hierarchy mounted")
        d = os.path.join(own.path, f"ctrd-test-{uuid.uuid4().hex[:12]}")
        os.mkdir(d)
        self.made.append(d)
        return cgroups.Cgroup(2, path=d)

    def cleanup(self) -> None:
        errors = []
        for d in reversed(self.made):
            try:
                _rmdir(d)
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def cgmaker():
    if not ROOT:
        pytest.skip("cgroups need root")
    m = CgroupMaker()
    try:
        yield m
    finally:
        m.cleanup()
        assert not [d for d in m.made if os.path.exists(d)], "cgroups left behind"


@pytest.fixture
def child():
    c = Child()
    try:
        yield c
    finally:
        c.stop()


def _enter(cg: cgroups.Cgroup, pid: int) -> None:
    dirs = [cg.path] if cg.version == 2 else list(cg.paths.values())
    for d in dirs:
        Path(d, "cgroup.procs").write_text(str(pid))


# --- the protos ----------------------------------------------------------------------------

REF = Path("/usr/share/gocode/src")
REF_PROTOS = ("github.com/containerd/cgroups/stats/v1/metrics.proto",
              "github.com/containerd/cgroups/v2/stats/metrics.proto")
COMPARE = Path(__file__).resolve().parents[2] / "shared" / "tools" / "compare-protos.py"


def test_protos_match_containerd_cgroups(tmp_path):
    """Our api/cgroups protos against containerd/cgroups' own, message by message and field
    by field (check-api-compat skips them: its reference set has no cgroups package)."""
    if not all((REF / p).exists() for p in REF_PROTOS) or \
            not (REF / "github.com/gogo/protobuf/gogoproto/gogo.proto").exists():
        pytest.skip("reference protos not installed (golang-github-containerd-cgroups-dev, "
                    "golang-github-gogo-protobuf-dev)")
    if not COMPARE.exists():
        pytest.skip(f"{COMPARE} not found")
    import grpc_tools

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    api = Path(__file__).resolve().parents[1] / "api"
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{wkt}", "--include_imports"]
    subprocess.run(protoc + [f"-I{REF}", f"-I{REF}/github.com/gogo/protobuf",
                             f"--descriptor_set_out={tmp_path}/ref.pb", *REF_PROTOS],
                   check=True)
    subprocess.run(protoc + [f"-I{api}", f"--descriptor_set_out={tmp_path}/cand.pb",
                             "cgroups/stats/v1/metrics.proto",
                             "cgroups/v2/stats/metrics.proto"], check=True)
    r = subprocess.run([sys.executable, str(COMPARE), f"{tmp_path}/ref.pb",
                        f"{tmp_path}/cand.pb", "--require-all"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "messages=25" in r.stdout and " 0 errors" in r.stdout, r.stdout


def test_metrics_any_round_trip():
    from ctrd.api.cgroups.stats.v1 import metrics_pb2 as v1
    from ctrd.api.cgroups.v2.stats import metrics_pb2 as v2

    cg = cgroups.load(os.getpid())
    a = cg.metrics_any()
    want = cgroups.V2_METRICS_TYPE if cg.version == 2 else cgroups.V1_METRICS_TYPE
    assert a.type_url == want  # bare: ctr's typeurl registry knows no type.googleapis.com/
    m = stats.decode_metrics(a)
    assert m.DESCRIPTOR.full_name == want
    assert m.SerializeToString() == a.value
    for cls, name in ((v1.Metrics, cgroups.V1_METRICS_TYPE),
                      (v2.Metrics, cgroups.V2_METRICS_TYPE)):
        assert cls.DESCRIPTOR.full_name == name
    from google.protobuf import any_pb2
    with pytest.raises(errdefs.InvalidArgument, match="unexpected metrics type"):
        stats.decode_metrics(any_pb2.Any(type_url="containerd.events.TaskExit"))


def test_shim_import_stays_light():
    """The shim imports ctrd.runtime.cgroups: it must not pull in grpc, asyncio, protobuf or
    dataclasses by being imported."""
    code = ("import sys, ctrd.runtime.cgroups; "
            "print(sorted(m for m in ('grpc', 'asyncio', 'google.protobuf', 'dataclasses', "
            "'ctypes', 'ctrd.cri') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "[]"


# --- finding cgroups -----------------------------------------------------------------------

def test_parse_proc_cgroup_and_hostile_input():
    v1, unified = cgroups.parse_proc_cgroup(
        "12:cpu,cpuacct:/a/b\n4:memory:/a/b\n1:name=systemd:/s\n0::/u\n")
    assert v1 == {"cpu": "/a/b", "cpuacct": "/a/b", "memory": "/a/b", "name=systemd": "/s"}
    assert unified == "/u"
    with pytest.raises(errdefs.InvalidArgument, match="invalid cgroup entry 'garbage'"):
        cgroups.parse_proc_cgroup("garbage\n")
    with pytest.raises(errdefs.NotFound, match="process 999999999"):
        cgroups.load(999999999)


def test_nested_mount_root_is_stripped(tmp_path):
    """A runtime inside a container sees /proc paths from the hierarchy's root but the mount
    shows only its own subtree (mountinfo's root field): the prefix goes, as upstream."""
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "30 20 0:26 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
        "31 20 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "32 20 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    procdir = tmp_path / "proc" / "7"
    procdir.mkdir(parents=True)
    (procdir / "cgroup").write_text(
        "4:memory:/docker/abc/task\n3:cpu,cpuacct:/task\n0::/task\n")
    cg = cgroups.load(7, proc=str(tmp_path / "proc"), mountinfo=str(mi))
    assert cgroups.mode(str(mi)) == "hybrid"
    assert cg.version == 1
    assert cg.paths == {"memory": "/sys/fs/cgroup/memory/task",
                        "cpu": "/sys/fs/cgroup/cpu,cpuacct/task",
                        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct/task"}
    v2 = cgroups.load(7, version=2, proc=str(tmp_path / "proc"), mountinfo=str(mi))
    assert v2.path == "/sys/fs/cgroup/unified/task"


def test_systemd_names():
    assert cgroups.expand_slice("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert cgroups.expand_slice("-.slice") == "/"
    assert cgroups.expand_systemd("kubepods-pod1.slice:cri-containerd:abc") == \
        "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"
    assert cgroups.expand_systemd("/kubepods/pod1") == "/kubepods/pod1"
    for bad in ("a--b.slice", "-a.slice", "a/b.slice", "x.service"):
        with pytest.raises(errdefs.InvalidArgument, match="invalid systemd slice name"):
            cgroups.expand_slice(bad)
    with pytest.raises(errdefs.InvalidArgument, match="not absolute"):
        cgroups.load_path("relative/path")


# --- v1: real cgroups, real figures --------------------------------------------------------

@needs_root
def test_v1_figures_move(cgmaker, child):
    cg = cgmaker.v1()
    Path(cg.paths["memory"], "memory.limit_in_bytes").write_text(str(512 * MiB))
    Path(cg.paths["pids"], "pids.max").write_text("50")
    _enter(cg, child.pid)

    loaded = cgroups.load(child.pid)
    for c, d in cg.paths.items():
        assert loaded.paths[c] == d
    assert sorted(loaded.procs()) == [child.pid]

    before = loaded.metrics()
    assert before.HasField("cpu") and before.cpu.HasField("usage")
    assert before.memory.usage.limit == 512 * MiB
    assert before.memory.hierarchical_memory_limit <= 512 * MiB
    assert (before.pids.current, before.pids.limit) == (1, 50)
    assert before.HasField("memory_oom_control")
    assert len(before.cpu.usage.per_cpu) >= 1

    child.do(f"alloc {64 * MiB}")
    after_alloc = loaded.metrics()
    assert after_alloc.memory.usage.usage >= before.memory.usage.usage + 60 * MiB
    assert after_alloc.memory.total_rss >= 60 * MiB
    assert after_alloc.memory.usage.max >= after_alloc.memory.usage.usage
    assert after_alloc.memory.total_pg_fault > before.memory.total_pg_fault

    t0 = stats.now_ns()
    cpu0 = stats.cpu_usage(after_alloc, t0)
    child.do("spin 0.3")
    after_spin = loaded.metrics()
    t1 = stats.now_ns()
    used = after_spin.cpu.usage.total - after_alloc.cpu.usage.total
    assert used >= 250_000_000, used   # 0.3 s of the child's CPU time, counted in ns
    assert after_spin.cpu.usage.user + after_spin.cpu.usage.kernel > \
        after_alloc.cpu.usage.user + after_alloc.cpu.usage.kernel
    assert sum(after_spin.cpu.usage.per_cpu) >= after_alloc.cpu.usage.total

    # CRI figures from the same samples
    tracker = stats.CpuRateTracker()
    first = tracker.update("c1", cpu0)
    assert first.usage_nano_cores == 0          # no earlier sample
    second = tracker.update("c1", stats.cpu_usage(after_spin, t1))
    assert second.usage_core_nano_seconds == after_spin.cpu.usage.total
    assert second.usage_nano_cores == stats.usage_nano_cores(cpu0, second) > 0
    mem = stats.memory_usage(after_spin, t1)
    assert mem.usage_bytes == after_spin.memory.usage.usage
    assert mem.working_set_bytes == after_spin.memory.usage.usage - \
        after_spin.memory.total_inactive_file
    assert mem.available_bytes == 512 * MiB - mem.working_set_bytes
    assert mem.rss_bytes == after_spin.memory.total_rss >= 60 * MiB
    assert mem.page_faults == after_spin.memory.total_pg_fault
    assert mem.major_page_faults == after_spin.memory.total_pg_maj_fault

    child.do("fork 3")
    after_fork = loaded.metrics()
    assert after_fork.pids.current == 4
    assert stats.process_usage(after_fork, t1).process_count == 4
    pod = stats.sandbox_stats(after_fork, t1, containers=[stats.container_stats(None, t1)])
    assert pod.process.process_count == 4 and pod.memory.usage_bytes > 60 * MiB
    assert len(pod.containers) == 1 and pod.containers[0].cpu is None

    # a static path finds the same cgroup (how a pod's cgroup parent is read)
    own = cgroups.load(os.getpid(), version=1)
    rel = "/" + os.path.relpath(cg.paths["memory"], _mount_point_of(cg.paths["memory"]))
    by_path = cgroups.load_path(rel, version=1)
    assert by_path.paths["memory"] == cg.paths["memory"]
    assert own.paths["memory"] == os.path.dirname(cg.paths["memory"])


def _mount_point_of(path: str) -> str:
    best = ""
    for m in cgroups.cgroup_mounts():
        if (path + "/").startswith(m.point.rstrip("/") + "/") and len(m.point) > len(best):
            best = m.point
    return best


@needs_root
def test_v1_metrics_after_the_cgroup_is_gone(cgmaker, child):
    """Stats of a removed cgroup: zeros and absent parts (containerd ignores missing files),
    not an exception; exists() says it is gone."""
    cg = cgmaker.v1(("memory", "pids"))
    Path(cg.paths["pids"], "pids.max").write_text("7")
    m = cg.metrics()
    assert m.pids.limit == 7
    child.stop()
    cgmaker.cleanup()
    assert not cg.exists()
    m = cg.metrics()
    assert not m.HasField("memory") and not m.HasField("pids")
    assert m.HasField("cpu")  # always present, as upstream's


@needs_root
def test_v1_oom_watcher_reports_oom_and_removal(cgmaker, child):
    cg = cgmaker.v1(("memory",))
    d = cg.paths["memory"]
    Path(d, "memory.limit_in_bytes").write_text(str(16 * MiB))
    if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
        Path(d, "memory.memsw.limit_in_bytes").write_text(str(16 * MiB))  # no swap escape
    watcher = cg.oom_watcher()
    try:
        poller = select.poll()
        poller.register(watcher.fileno(), select.POLLIN)
        assert not watcher.oom_happened()          # nothing yet: non-blocking read
        _enter(cg, child.pid)
        child.proc.stdin.write(f"alloc {256 * MiB}\n")
        child.proc.stdin.flush()
        assert child.proc.wait(60) == -signal.SIGKILL   # the kernel's OOM killer
        assert poller.poll(30_000), "no OOM notification"
        assert watcher.oom_happened()
        assert not watcher.gone
        m = cg.metrics()
        assert m.memory_oom_control.oom_kill >= 1
        assert m.memory.usage.max > 0
        assert m.memory.usage.limit == 16 * MiB

        cgmaker.cleanup()                         # rmdir: the kernel signals the eventfd
        assert poller.poll(30_000), "no notification on cgroup removal"
        assert not watcher.oom_happened()
        assert watcher.gone
    finally:
        watcher.close()
        watcher.close()  # idempotent
    assert not watcher.oom_happened()


@needs_root
def test_oom_watcher_needs_a_memory_cgroup(cgmaker):
    cg = cgmaker.v1(("pids",))
    with pytest.raises(errdefs.NotFound, match="no memory cgroup"):
        cg.oom_watcher()
    with pytest.raises(errdefs.NotFound, match="memory cgroup"):
        cgroups.V1OomWatcher(cg.paths["pids"] + "-nonexistent")


def test_v1_files_as_the_kernel_writes_them(tmp_path):
    """Every conversion on fixed input: blkio lines, cpuacct ticks, pids "max", hugetlb
    sizes, memory entries; and a malformed file is an error naming it."""
    def put(ctrl: str, name: str, text: str) -> None:
        (tmp_path / ctrl).mkdir(exist_ok=True)
        (tmp_path / ctrl / name).write_text(text)

    put("cpuacct", "cpuacct.stat", "user 150\nsystem 50\n")
    put("cpuacct", "cpuacct.usage", "2000000000\n")
    put("cpuacct", "cpuacct.usage_percpu", "1500000000 500000000 \n")
    put("cpu", "cpu.stat", "nr_periods 10\nnr_throttled 2\nthrottled_time 3000\n")
    put("pids", "pids.current", "3\n")
    put("pids", "pids.max", "max\n")
    put("memory", "memory.stat", "cache 10\nrss 20\ntotal_rss 21\ntotal_inactive_file 5\n"
                                 "hierarchical_memsw_limit 99\npgpgin 7\n")
    put("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 1\noom_kill 4\n")
    for f, v in (("usage_in_bytes", 100), ("max_usage_in_bytes", 150), ("failcnt", 2),
                 ("limit_in_bytes", 1000)):
        put("memory", f"memory.{f}", f"{v}\n")
        put("memory", f"memory.kmem.{f}", f"{v + 1}\n")
    put("blkio", "blkio.io_serviced_recursive", "Total 0\n")
    for f in ("sectors_recursive", "io_service_bytes_recursive", "io_queued_recursive",
              "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
              "time_recursive"):
        put("blkio", f"blkio.{f}", "Total 0\n")
    put("blkio", "blkio.throttle.io_serviced", "254:0 Read 5\n254:0 Write 6\nTotal 11\n")
    put("blkio", "blkio.throttle.io_service_bytes", "254:0 Read 4096\n1:2 Write 8\n")
    cg = cgroups.Cgroup(1, paths={c: str(tmp_path / c)
                                  for c in ("cpu", "cpuacct", "pids", "memory", "blkio")})
    m = cg.metrics()
    assert (m.cpu.usage.total, m.cpu.usage.user, m.cpu.usage.kernel) == \
        (2000000000, 1_500_000_000, 500_000_000)          # ticks at 100 Hz
    assert list(m.cpu.usage.per_cpu) == [1500000000, 500000000]
    assert (m.cpu.throttling.periods, m.cpu.throttling.throttled_periods,
            m.cpu.throttling.throttled_time) == (10, 2, 3000)
    assert (m.pids.current, m.pids.limit) == (3, 0)       # v1: "max" is 0
    assert (m.memory.cache, m.memory.rss, m.memory.total_rss, m.memory.pg_pg_in,
            m.memory.hierarchical_swap_limit) == (10, 20, 21, 7, 99)
    assert (m.memory.usage.usage, m.memory.usage.max, m.memory.usage.failcnt,
            m.memory.usage.limit) == (100, 150, 2, 1000)
    assert m.memory.kernel.limit == 1001
    assert m.memory.HasField("swap") and m.memory.swap.limit == 0   # no memsw files
    assert m.memory.HasField("kernel_tcp")
    assert (m.memory_oom_control.under_oom, m.memory_oom_control.oom_kill) == (1, 4)
    # no CFQ figures: the throttle files, devices named from /proc/partitions
    ops = [(e.op, e.major, e.minor, e.value) for e in m.blkio.io_serviced_recursive]
    assert ops == [("Read", 254, 0, 5), ("Write", 254, 0, 6)]
    assert [e.value for e in m.blkio.io_service_bytes_recursive] == [4096, 8]
    parts = Path("/proc/partitions").read_text().split("\n")[2:]
    names = {(int(f[0]), int(f[1])): "/dev/" + f[3] for f in map(str.split, parts) if len(f) == 4}
    assert m.blkio.io_service_bytes_recursive[0].device == names.get((254, 0), "")
    mu = stats.memory_usage(m, 1)
    assert (mu.working_set_bytes, mu.available_bytes, mu.rss_bytes) == (95, 905, 21)

    put("pids", "pids.current", "three\n")
    with pytest.raises(errdefs.CtrdError, match=r"pids\.current: not a number: 'three'"):
        cg.metrics()
    put("pids", "pids.current", "3\n")
    put("cpuacct", "cpuacct.stat", "user 1\n")
    with pytest.raises(errdefs.CtrdError, match=r"cpuacct\.stat: expected 'user N system M'"):
        cg.metrics()
    put("cpuacct", "cpuacct.stat", "user 150\nsystem 50\n")
    put("blkio", "blkio.throttle.io_serviced", "junk\n")
    with pytest.raises(errdefs.CtrdError, match=r"io_serviced: invalid line 'junk'"):
        cg.metrics()


def test_hugepage_size_names(tmp_path):
    for n in ("hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB", "other"):
        (tmp_path / n).mkdir()
    assert cgroups.hugepage_sizes(str(tmp_path)) == ["1GB", "2MB", "64KB"]


# --- v2 ------------------------------------------------------------------------------------

def _v2_dir(tmp_path: Path, controllers: str = "cpu memory pids io hugetlb") -> Path:
    d = tmp_path / "cg"
    d.mkdir()
    files = {
        "cgroup.controllers": controllers + "\n",
        "cpu.stat": "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 4\n"
                    "nr_throttled 1\nthrottled_usec 77\n",
        "memory.stat": "anon 4096\nfile 8192\ninactive_file 1000\npgfault 12\npgmajfault 1\n"
                       "workingset_refault 3\nthp_collapse_alloc 9\n",
        "memory.current": "20000\n", "memory.max": "max\n",
        "memory.swap.current": "0\n", "memory.swap.max": "1000\n",
        "memory.events": "low 0\nhigh 1\nmax 2\noom 3\noom_kill 0\n",
        "pids.current": "2\n", "pids.max": "max\n",
        "io.stat": "254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n",
        "hugetlb.2MB.current": "0\n", "hugetlb.2MB.max": "max\n",
        "hugetlb.2MB.events": "max 0\n",
        "rdma.current": "mlx4_0 hca_handle=1 hca_object=20\n",
        "rdma.max": "mlx4_0 hca_handle=max hca_object=30\n",
    }
    for k, v in files.items():
        (d / k).write_text(v)
    return d


def test_v2_files_as_the_kernel_writes_them(tmp_path):
    """This host's memory controller is bound to v1, so v2 files are read from a directory
    holding the kernel's formats."""
    d = _v2_dir(tmp_path)
    m = cgroups.Cgroup(2, path=str(d)).metrics()
    assert (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec, m.cpu.nr_periods,
            m.cpu.nr_throttled, m.cpu.throttled_usec) == (5000, 3000, 2000, 4, 1, 77)
    assert (m.memory.anon, m.memory.file, m.memory.inactive_file, m.memory.pgfault,
            m.memory.workingset_refault, m.memory.thp_collapse_alloc) == \
        (4096, 8192, 1000, 12, 3, 9)
    assert m.memory.usage == 20000 and m.memory.usage_limit == 2**64 - 1
    assert (m.memory.swap_usage, m.memory.swap_limit) == (0, 1000)
    assert (m.memory_events.high, m.memory_events.max, m.memory_events.oom) == (1, 2, 3)
    assert (m.pids.current, m.pids.limit) == (2, 2**64 - 1)   # v2: "max" is 2^64-1
    assert [(e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios) for e in m.io.usage] == \
        [(254, 0, 100, 200, 1, 2)]
    assert [(h.pagesize, h.current, h.max) for h in m.hugetlb] == [("2MB", 0, 2**64 - 1)]
    assert [(r.device, r.hca_handles, r.hca_objects) for r in m.rdma.limit] == \
        [("mlx4_0", 2**32 - 1, 30)]
    t = stats.now_ns()
    assert stats.cpu_usage(m, t).usage_core_nano_seconds == 5_000_000
    mu = stats.memory_usage(m, t)
    assert (mu.working_set_bytes, mu.available_bytes, mu.rss_bytes, mu.page_faults,
            mu.major_page_faults) == (19000, 0, 4096, 12, 1)   # unlimited: 0 available

    # as upstream: cpu.stat/memory.stat only for controllers the cgroup has
    (d / "cgroup.controllers").write_text("pids\n")
    m = cgroups.Cgroup(2, path=str(d)).metrics()
    assert m.cpu.usage_usec == 0 and m.memory.anon == 0 and m.memory.usage == 20000
    (d / "memory.events").write_text("")
    assert not cgroups.Cgroup(2, path=str(d)).metrics().HasField("memory_events")
    with pytest.raises(errdefs.NotFound):
        cgroups.Cgroup(2, path=str(tmp_path / "gone")).metrics()
    (d / "cgroup.controllers").write_text("cpu\n")
    (d / "cpu.stat").write_text("usage_usec 1 2\n")
    with pytest.raises(errdefs.CtrdError, match=r"cpu\.stat: invalid line"):
        cgroups.Cgroup(2, path=str(d)).metrics()


def test_v2_oom_watcher_on_memory_events(tmp_path):
    """The v2 watcher's logic: inotify on memory.events, an OOM is an oom_kill increase. Here
    the file is a stand-in written the way the kernel updates it (this host has no v2
    memory controller); test_v2_oom_watcher_real covers a real one where there is."""
    d = _v2_dir(tmp_path)
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    w = cgroups.Cgroup(2, path=str(d)).oom_watcher()
    try:
        poller = select.poll()
        poller.register(w.fileno(), select.POLLIN)
        assert not poller.poll(0)
        (d / "memory.events").write_text("low 0\nhigh 1\nmax 5\noom 3\noom_kill 0\n")
        assert poller.poll(10_000)
        assert not w.oom_happened()                 # counters moved, oom_kill did not
        (d / "memory.events").write_text("low 0\nhigh 1\nmax 6\noom 4\noom_kill 1\n")
        assert poller.poll(10_000)
        assert w.oom_happened()
        assert not poller.poll(0)                   # drained
        assert not w.oom_happened()                 # no new kill
        (d / "cgroup.events").write_text("populated 0\nfrozen 0\n")
        assert poller.poll(10_000)                  # cgroup.events is watched too
        assert not w.oom_happened() and not w.gone
        (d / "memory.events").unlink()
        assert not w.oom_happened() and w.gone
    finally:
        w.close()
    with pytest.raises(errdefs.NotFound, match="memory.events"):
        cgroups.V2OomWatcher(str(tmp_path))


@needs_root
def test_v2_real_cgroup(cgmaker, child):
    """A real cgroup in the v2 hierarchy (hybrid here: few or no controllers): found from
    /proc/<pid>/cgroup's 0:: line and read as upstream reads it."""
    cg = cgmaker.v2()
    _enter(cg, child.pid)
    loaded = cgroups.load(child.pid, version=2)
    assert loaded.path == cg.path and loaded.procs() == [child.pid]
    m = loaded.metrics()
    controllers = Path(cg.path, "cgroup.controllers").read_text().split()
    if "pids" in controllers:
        assert m.pids.current == 1
    else:
        assert m.pids.current == 0 and m.pids.limit == 0
    if "cpu" in controllers:
        child.do("spin 0.1")
        assert loaded.metrics().cpu.usage_usec > 0
    assert m.HasField("io") and m.HasField("rdma")
    if "memory" not in controllers:
        with pytest.raises(errdefs.NotFound, match="memory.events"):
            loaded.oom_watcher()


@needs_root
def test_v2_oom_watcher_real(cgmaker, child):
    cg = cgmaker.v2()
    if "memory" not in Path(cg.path, "cgroup.controllers").read_text().split():
        pytest.skip("no memory controller in this host's cgroup v2 hierarchy "
                    "(it is bound to v1); see test_v2_oom_watcher_on_memory_events")
    Path(cg.path, "memory.max").write_text(str(16 * MiB))
    Path(cg.path, "memory.swap.max").write_text("0")
    w = cg.oom_watcher()
    try:
        poller = select.poll()
        poller.register(w.fileno(), select.POLLIN)
        _enter(cg, child.pid)
        child.proc.stdin.write(f"alloc {256 * MiB}\n")
        child.proc.stdin.flush()
        assert child.proc.wait(60) == -signal.SIGKILL
        deadline = time.monotonic() + 30
        seen = False
        while not seen and time.monotonic() < deadline:
            if poller.poll(1000):
                seen = w.oom_happened()
        assert seen, "no OOM reported"
    finally:
        w.close()


# --- writable layer ------------------------------------------------------------------------

def test_writable_layer_usage(tmp_path):
    up = tmp_path / "upper"
    (up / "etc").mkdir(parents=True)
    (up / "etc" / "a").write_bytes(b"x" * 10000)
    os.link(up / "etc" / "a", up / "hardlink")      # one inode, counted once
    (up / "sparse").touch()
    with open(up / "sparse", "r+b") as f:
        f.truncate(100 * MiB)                       # no blocks allocated
    os.symlink("/nonexistent", up / "dangling")     # not followed
    if ROOT:
        os.mknod(up / "whiteout", 0o600 | 0o020000, os.makedev(0, 0))  # overlay whiteout
    expect_inodes, expect_bytes, seen = 0, 0, set()
    for dirpath, dirnames, filenames in os.walk(up):
        for p in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(p)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                expect_bytes += st.st_blocks * 512
    expect_inodes = len(seen)
    fs = stats.writable_layer_usage(str(up), "/var/lib/ctrd/snapshots", timestamp=5)
    assert (fs.used_bytes, fs.inodes_used) == (expect_bytes, expect_inodes)
    assert fs.mountpoint == "/var/lib/ctrd/snapshots" and fs.timestamp == 5
    assert fs.used_bytes < 100 * MiB
    # upper, etc, a (= hardlink), sparse, dangling (+ whiteout)
    assert fs.inodes_used == 5 + (1 if ROOT else 0)
    with pytest.raises(errdefs.NotFound, match="directory"):
        stats.writable_layer_usage(str(tmp_path / "gone"), "/")


def test_dataclasses_have_the_cri_fields():
    """The dataclasses carry every runtime.v1 field of their message (but the PSI figures,
    which containerd does not fill either), with the wrappers' unwrapped names."""
    import dataclasses

    from ctrd.api.cri.runtime.v1 import api_pb2 as cri

    pairs = [(stats.CpuUsage, cri.CpuUsage), (stats.MemoryUsage, cri.MemoryUsage),
             (stats.FilesystemUsage, cri.FilesystemUsage), (stats.NetworkUsage, cri.NetworkUsage),
             (stats.NetworkInterfaceUsage, cri.NetworkInterfaceUsage),
             (stats.ProcessUsage, cri.ProcessUsage),
             (stats.PodSandboxStats, cri.LinuxPodSandboxStats)]
    for dc, msg in pairs:
        have = {f.name for f in dataclasses.fields(dc)}
        want = {f.name for f in msg.DESCRIPTOR.fields} - {"psi", "io", "fs_id"}
        if msg is cri.FilesystemUsage:
            want.add("mountpoint")
        assert want <= have, (dc.__name__, want - have)
    cs = {f.name for f in dataclasses.fields(stats.ContainerStats)}
    assert cs == {"cpu", "memory", "writable_layer"}   # + attributes (plugin), swap/io (none)


# --- CPU rate ------------------------------------------------------------------------------

def test_usage_nano_cores_rules():
    a = stats.CpuUsage(1_000_000_000, 5_000_000_000)
    b = stats.CpuUsage(3_000_000_000, 6_000_000_000)        # 1 s of CPU over 2 s
    assert stats.usage_nano_cores(None, b) == 0
    assert stats.usage_nano_cores(a, b) == 500_000_000
    assert stats.usage_nano_cores(b, a) == 0                 # negative interval
    assert stats.usage_nano_cores(a, stats.CpuUsage(2_000_000_000, 1)) == 0  # counter reset
    t = stats.CpuRateTracker()
    assert t.update("x", stats.CpuUsage(a.timestamp, a.usage_core_nano_seconds)) \
        .usage_nano_cores == 0
    assert t.update("x", stats.CpuUsage(b.timestamp, b.usage_core_nano_seconds)) \
        .usage_nano_cores == 500_000_000
    assert t.update("x", stats.CpuUsage(b.timestamp, 7)).usage_nano_cores == 0  # same time
    t.forget("x")
    assert t.update("x", stats.CpuUsage(9, 9)).usage_nano_cores == 0


# --- network -------------------------------------------------------------------------------

def test_parse_net_dev():
    text = ("Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    "
            "packets errs drop fifo colls carrier compressed\n"
            "    lo:     100       2    0    0    0     0          0         0      100"
            "       2    0    0    0     0       0          0\n"
            "  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0\n")
    ifs = stats.parse_net_dev(text)
    assert [i.name for i in ifs] == ["lo", "eth0"]
    e = ifs[1]
    assert (e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_dropped) == (5000, 40, 1, 2)
    assert (e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_dropped) == (7000, 50, 3, 4)
    with pytest.raises(errdefs.InvalidArgument, match="invalid /proc/net/dev line"):
        stats.parse_net_dev(text + "  bad: 1 2 3\n")


@pytest.fixture
def ns_base(tmp_path):
    """A base dir for pinned namespaces; afterwards every mount under it (the pins and the
    pin directory's own bind mount) is detached."""
    if not ROOT:
        pytest.skip("network namespaces need root")
    from ctrd.snapshots import mount as _mount

    base = tmp_path / "ns"
    try:
        yield str(base)
    finally:
        real = os.path.realpath(base)
        for mp in reversed(_mount.mountpoints()):
            if mp == real or mp.startswith(real + "/"):
                _mount._libc.umount2(os.fsencode(mp), _mount.MNT_DETACH)
        assert not [mp for mp in _mount.mountpoints()
                    if mp == real or mp.startswith(real + "/")], "mounts left behind"


@pytest.fixture
def pod_netns(ns_base):
    if not shutil.which("ip"):
        pytest.skip("iproute2's ip is not installed")
    pns = netns.create_pod_namespaces(ns_base, kinds=("net",))
    host_if = f"ctv{uuid.uuid4().hex[:8]}"
    try:
        yield pns, host_if
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        netns.remove(pns)
        assert subprocess.run(["ip", "link", "show", host_if],
                              capture_output=True).returncode != 0, "veth left behind"


@needs_root
def test_network_usage_of_a_pod_netns(pod_netns):
    pns, host_if = pod_netns
    # a /30 in 198.18.0.0/15 (benchmarking range), picked at random
    n = int.from_bytes(os.urandom(2), "big") & 0x7FFC
    base = f"198.{18 + (n >> 14)}.{(n >> 6) & 0xFF}.{(n & 0x3F) << 2}"
    o = base.split(".")
    host_ip = ".".join(o[:3] + [str(int(o[3]) + 1)])
    pod_ip = ".".join(o[:3] + [str(int(o[3]) + 2)])

    def sh(*argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 0, f"{argv}: {r.stderr}"

    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pns.net)
    sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    for argv in (["ip", "addr", "add", f"{pod_ip}/30", "dev", "eth0"],
                 ["ip", "link", "set", "eth0", "up"]):
        r = netns.exec_in_ns(pns, argv, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    before = stats.network_usage(pns.net, timestamp=1)
    assert before.timestamp == 1
    assert before.default_interface is not None and before.default_interface.name == "eth0"
    assert [i.name for i in before.interfaces] == ["eth0"]   # lo is left out

    # traffic both ways: the host sends to the pod, the pod sends to the host
    payload = b"p" * 1000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(20):
            s.sendto(payload, (pod_ip, 9))

    def send_from_pod():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(10):
                s.sendto(payload, (host_ip, 9))
    netns.run_in_ns(pns.net, send_from_pod)

    deadline = time.monotonic() + 20
    while True:
        after = stats.network_usage(pns.net)
        got_rx = after.default_interface.rx_bytes - before.default_interface.rx_bytes
        got_tx = after.default_interface.tx_bytes - before.default_interface.tx_bytes
        if (got_rx >= 20 * 1000 and got_tx >= 10 * 1000) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got_rx >= 20 * 1000, after
    assert got_tx >= 10 * 1000, after
    assert after.default_interface.rx_errors == 0 and after.default_interface.tx_errors == 0

    # the same counters through a process in the namespace
    sleeper = netns.run_in_ns(pns.net, subprocess.Popen, ["sleep", "1000"])
    try:
        by_pid = stats.network_usage_of_pid(sleeper.pid)
        assert by_pid.default_interface.rx_bytes >= after.default_interface.rx_bytes
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(errdefs.NotFound):
        stats.network_usage_of_pid(sleeper.pid)

    netns.remove(pns)
    with pytest.raises(errdefs.NotFound):
        stats.network_usage(pns.net)


def test_network_usage_without_the_default_interface(ns_base):
    pns = netns.create_pod_namespaces(ns_base, kinds=("net",))
    try:
        u = stats.network_usage(pns.net)
        assert u.default_interface is None and u.interfaces == []   # only lo
    finally:
        netns.remove(pns)


# --- through the API: ctr tasks metrics ----------------------------------------------------

@pytest.fixture(params=["ctrd-shim", "go-shim"])
def daemon(request, start_ctrd, tmp_root, registry):
    from taskutil import task_daemon
    yield from task_daemon(request.param, start_ctrd, tmp_root, registry)


@pytest.mark.integration
def test_ctr_tasks_metrics(daemon):
    """``ctr tasks metrics`` against ctrd prints the task's cgroup figures, decoded by ctr
    from the Any's type URL; the Any decodes with our generated types and agrees with our own
    reading of the same cgroup."""
    import grpc

    from conftest import ctr
    from ctrd.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc

    d = daemon
    r = ctr(d.address, "run", "-d", "--memory-limit", str(256 * MiB), d.image, "t-metrics",
            "sleep", "1000")
    assert r.returncode == 0, r.stderr
    r = ctr(d.address, "tasks", "metrics", "t-metrics")
    assert r.returncode == 0, r.stderr
    v2 = cgroups.mode() == "unified"
    if v2:
        assert "memory.usage_limit" in r.stdout and "pids.current" in r.stdout, r.stdout
    else:
        table = dict(line.split()[:2] for line in r.stdout.splitlines()
                     if line.startswith(("memory.", "cpuacct.usage ", "pids.")))
        assert table["memory.limit_in_bytes"] == str(256 * MiB), r.stdout
        assert int(table["memory.usage_in_bytes"]) > 0
        assert table["pids.current"] == "1"
    rj = ctr(d.address, "tasks", "metrics", "--format", "json", "t-metrics")
    assert rj.returncode == 0 and rj.stdout.lstrip().startswith("{"), rj.stderr

    pid = int(next(line.split()[1] for line in ctr(d.address, "tasks", "ls").stdout
                   .splitlines()[1:] if line.split()[0] == "t-metrics"))
    ch = grpc.insecure_channel("unix:" + d.address)
    try:
        resp = tasks_pb2_grpc.TasksStub(ch).Metrics(
            tasks_pb2.MetricsRequest(filters=["id==t-metrics"]),
            metadata=(("containerd-namespace", "default"),), timeout=30)
    finally:
        ch.close()
    assert [m.id for m in resp.metrics] == ["t-metrics"]
    theirs = stats.decode_metrics(resp.metrics[0].data)
    ours = cgroups.load(pid).metrics()
    assert theirs.DESCRIPTOR.full_name == ours.DESCRIPTOR.full_name
    assert {f.name for f, _ in theirs.ListFields()} <= {f.name for f, _ in ours.ListFields()}
    if not v2:
        assert theirs.memory.usage.limit == ours.memory.usage.limit == 256 * MiB
        assert theirs.memory.hierarchical_memory_limit == ours.memory.hierarchical_memory_limit
        assert (theirs.pids.current, theirs.pids.limit) == (ours.pids.current, ours.pids.limit)
        assert len(theirs.cpu.usage.per_cpu) == len(ours.cpu.usage.per_cpu)
        assert ours.cpu.usage.total >= theirs.cpu.usage.total > 0
    else:
        assert theirs.memory.usage_limit == ours.memory.usage_limit == 256 * MiB
    ts = resp.metrics[0].timestamp.ToNanoseconds()
    cs = stats.container_stats(theirs, ts, stats.CpuRateTracker(), "t-metrics")
    assert cs.memory.usage_bytes > 0 and cs.cpu.usage_core_nano_seconds > 0
