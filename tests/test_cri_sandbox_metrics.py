"""Unit tests of the CRI stats/metrics builders on fixed cgroup trees (no daemon): the cgroup
v2 branch through a fake unified cgroup directory (this host is v1), the v1 branch through
fake per-controller directories, both read by ctrd's real readers
(:class:`ctrd.runtime.cgroups.Cgroup` over a root path), then turned into runtime.v1 figures
the way containerd 2.3.4 does (ctrd/cri/stats.py, ctrd/cri/sandbox_metrics.py)."""

from __future__ import annotations

import os

import pytest

from ctrd import errdefs
from ctrd.cri import sandbox_metrics as sm
from ctrd.cri import sandbox_update_resources as sur
from ctrd.cri import stats
from ctrd.runtime import cgroups

LABELS = ["pod", "ns", "c", "id1", "img"]


def _v2_tree(d, usage_usec: int = 5_000_000) -> str:
    """A unified cgroup directory with the kernel's file formats."""
    os.makedirs(d, exist_ok=True)
    files = {
        "cgroup.controllers": "cpuset cpu io memory pids\n",
        "cpu.stat": f"usage_usec {usage_usec}\nuser_usec 3000000\nsystem_usec 2000000\n"
                    "nr_periods 40\nnr_throttled 4\nthrottled_usec 3500000\n",
        "memory.stat": "anon 4096\nfile 8192\nkernel_stack 16384\nfile_mapped 512\n"
                       "active_file 300\ninactive_file 1000\npgfault 12\npgmajfault 1\n",
        "memory.current": "20000\n", "memory.max": "65536\n",
        "memory.swap.current": "2048\n", "memory.swap.max": "max\n",
        "memory.events": "low 0\nhigh 1\nmax 2\noom 3\noom_kill 5\n",
        "pids.current": "3\n", "pids.max": "100\n",
        "io.stat": "254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n",
    }
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return str(d)


def _v1_tree(root) -> dict[str, str]:
    def put(ctrl: str, name: str, text: str) -> None:
        os.makedirs(os.path.join(root, ctrl), exist_ok=True)
        with open(os.path.join(root, ctrl, name), "w") as f:
            f.write(text)

    put("cpuacct", "cpuacct.stat", "user 250\nsystem 100\n")
    put("cpuacct", "cpuacct.usage", "3700000000\n")
    put("cpuacct", "cpuacct.usage_percpu", "3700000000\n")
    put("cpu", "cpu.stat", "nr_periods 10\nnr_throttled 2\nthrottled_time 2500000000\n")
    put("pids", "pids.current", "2\n")
    put("pids", "pids.max", "max\n")
    put("memory", "memory.stat", "total_cache 10\ntotal_rss 21\ntotal_mapped_file 3\n"
                                 "total_active_file 4\ntotal_inactive_file 5\n"
                                 "total_pgfault 7\ntotal_pgmajfault 1\n")
    put("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    for f, v in (("usage_in_bytes", 100), ("max_usage_in_bytes", 150), ("failcnt", 2),
                 ("limit_in_bytes", 1000)):
        put("memory", f"memory.{f}", f"{v}\n")
        put("memory", f"memory.memsw.{f}", f"{v + 50}\n")
    put("blkio", "blkio.io_serviced_recursive", "254:0 Read 5\n254:0 Write 6\nTotal 11\n")
    put("blkio", "blkio.io_service_bytes_recursive",
        "254:0 Read 4096\n254:0 Write 8192\nTotal 12288\n")
    for f in ("sectors_recursive", "io_queued_recursive", "io_service_time_recursive",
              "io_wait_time_recursive", "io_merged_recursive", "time_recursive"):
        put("blkio", f"blkio.{f}", "Total 0\n")
    return {c: os.path.join(root, c) for c in ("cpu", "cpuacct", "pids", "memory", "blkio")}


def _by_name(metrics) -> dict:
    out: dict = {}
    for m in metrics:
        out.setdefault(m.name, []).append(m)
    return out


def _check_shape(metrics) -> None:
    """Every metric is a described one, with as many label values as its keys."""
    for m in metrics:
        assert m.name in sm.LABEL_KEYS, m.name
        assert len(m.label_values) == len(sm.LABEL_KEYS[m.name]), m


# --- descriptors ---------------------------------------------------------------------------

def test_descriptors_are_containerds():
    ds = sm.list_metric_descriptors()
    assert len(ds) == 49 and len({d.name for d in ds}) == 49
    assert [d.name for d in ds[:3]] == ["container_cpu_user_seconds_total",
                                        "container_cpu_system_seconds_total",
                                        "container_cpu_usage_seconds_total"]
    by = {d.name: d for d in ds}
    assert by["container_memory_rss"].help == ("Size of RSS in bytes, total anonymous memory "
                                               "and [swap cache memory used by the container.")
    assert list(by["container_start_time_seconds"].label_keys) == list(sm.BASE_LABEL_KEYS)


# --- cgroup v2 -----------------------------------------------------------------------------

def test_v2_stats_through_a_fake_tree(tmp_path):
    d = _v2_tree(tmp_path / "pod" / "ctr")
    m = cgroups.Cgroup(2, path=d).metrics()
    tracker = stats.CpuRateTracker()
    first = stats.container_stats(m, 1_000_000_000, tracker, "ctr")
    assert first.cpu.usage_core_nano_seconds == 5_000_000_000
    assert first.cpu.usage_nano_cores is None            # containerd: unset at first
    mem = first.memory
    assert (mem.working_set_bytes, mem.available_bytes, mem.usage_bytes, mem.rss_bytes,
            mem.page_faults, mem.major_page_faults) == (19000, 65536 - 19000, 20000, 4096, 12, 1)
    assert stats.pids_current(m) == 3

    _v2_tree(tmp_path / "pod" / "ctr", usage_usec=5_500_000)  # half a second of CPU
    m2 = cgroups.Cgroup(2, path=d).metrics()
    second = stats.container_stats(m2, 2_000_000_000, tracker, "ctr")
    assert second.cpu.usage_nano_cores == 500_000_000    # half a core over one second
    same = stats.container_stats(m2, 2_000_000_000, tracker, "ctr")
    assert same.cpu.usage_nano_cores is None             # no interval: unset, not 0
    tracker.retain(set())
    assert stats.container_stats(m2, 3_000_000_000, tracker, "ctr").cpu.usage_nano_cores \
        is None                                          # forgotten: a first sample again


def test_v2_metrics_through_a_fake_tree(tmp_path):
    m = cgroups.Cgroup(2, path=_v2_tree(tmp_path / "c")).metrics()
    cpu = _by_name(sm.cpu_metrics(m, LABELS, 7))
    assert cpu["container_cpu_usage_seconds_total"][0].value.value == 5   # integer seconds
    assert cpu["container_cpu_user_seconds_total"][0].value.value == 3
    assert cpu["container_cpu_cfs_periods_total"][0].value.value == 40
    assert cpu["container_cpu_cfs_throttled_seconds_total"][0].value.value == 3
    mem = _by_name(sm.memory_metrics(m, LABELS, 7))
    assert mem["container_memory_working_set_bytes"][0].value.value == 19000
    assert mem["container_memory_max_usage_bytes"][0].value.value == 65536  # containerd: limit
    assert mem["container_memory_kernel_usage"][0].value.value == 16384
    assert mem["container_memory_swap"][0].value.value == 2048
    assert mem["container_memory_failcnt"][0].value.value == 0
    assert mem["container_oom_events_total"][0].value.value == 5
    fails = mem["container_memory_failures_total"]
    assert [(list(f.label_values[5:]), f.value.value) for f in fails] == \
        [(["pgfault", "container"], 12), (["pgmajfault", "container"], 1)]
    io = _by_name(sm.disk_io_metrics(m, LABELS, 7))
    assert [(list(x.label_values[5:]), x.value.value)
            for x in io["container_fs_reads_bytes_total"]] == [(["254:0"], 100)]
    assert io["container_fs_writes_total"][0].value.value == 2
    proc = _by_name(sm.process_metrics(m, None, 4, 1, LABELS, 7))
    assert proc["container_threads"][0].value.value == 3      # v2 only
    assert proc["container_threads_max"][0].value.value == 100
    everything = (sm.cpu_metrics(m, LABELS, 7) + sm.memory_metrics(m, LABELS, 7)
                  + sm.disk_io_metrics(m, LABELS, 7))
    _check_shape(everything)
    assert all(x.timestamp == 7 for x in everything)


# --- cgroup v1 -----------------------------------------------------------------------------

def test_v1_metrics_through_a_fake_tree(tmp_path):
    m = cgroups.Cgroup(1, paths=_v1_tree(str(tmp_path))).metrics()
    cpu = _by_name(sm.cpu_metrics(m, LABELS, 1))
    assert cpu["container_cpu_usage_seconds_total"][0].value.value == 3
    assert cpu["container_cpu_user_seconds_total"][0].value.value == 2    # 250 ticks
    assert cpu["container_cpu_system_seconds_total"][0].value.value == 1
    assert cpu["container_cpu_cfs_throttled_seconds_total"][0].value.value == 2
    mem = _by_name(sm.memory_metrics(m, LABELS, 1))
    assert mem["container_memory_usage_bytes"][0].value.value == 100
    assert mem["container_memory_working_set_bytes"][0].value.value == 95
    assert mem["container_memory_max_usage_bytes"][0].value.value == 150
    assert mem["container_memory_rss"][0].value.value == 21
    assert mem["container_memory_swap"][0].value.value == 150   # memsw usage
    assert mem["container_memory_failcnt"][0].value.value == 2
    assert mem["container_oom_events_total"][0].value.value == 4
    io = _by_name(sm.disk_io_metrics(m, LABELS, 1))
    usage = io["container_blkio_device_usage_total"]
    assert [list(u.label_values[6:]) for u in usage] == [["254", "0", "Read"],
                                                         ["254", "0", "Write"]]
    assert io["container_fs_reads_total"][0].value.value == 5
    assert io["container_fs_writes_bytes_total"][0].value.value == 8192
    proc = _by_name(sm.process_metrics(m, None, None, None, LABELS, 1))
    assert "container_threads" not in proc and "container_file_descriptors" not in proc
    assert proc["container_threads_max"][0].value.value == 0    # v1 "max" is 0
    _check_shape(sm.cpu_metrics(m, LABELS, 1) + sm.memory_metrics(m, LABELS, 1)
                 + sm.disk_io_metrics(m, LABELS, 1))

    st = stats.container_stats(m, 5, stats.CpuRateTracker(), "x")
    assert (st.memory.working_set_bytes, st.memory.available_bytes) == (95, 905)
    assert stats.pids_current(m) == 2 and stats.pids_current(None) == 0


# --- spec, processes, filesystem, network ---------------------------------------------------

def test_spec_and_rlimit_metrics():
    spec = {"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]},
            "linux": {"resources": {"cpu": {"period": 100000, "shares": 2},
                                    "memory": {"limit": 1 << 20, "swap": -1}}}}
    sp = _by_name(sm.spec_metrics(spec, LABELS, 1))
    assert sp["container_spec_cpu_period"][0].value.value == 100000
    assert sp["container_spec_memory_limit_bytes"][0].value.value == 1 << 20
    # Go's uint64(-1)
    assert sp["container_spec_memory_swap_limit_bytes"][0].value.value == 2**64 - 1
    assert "container_spec_memory_reservation_limit_bytes" not in sp
    assert sm.spec_metrics({}, LABELS, 1) == []
    pr = _by_name(sm.process_metrics(None, spec, 3, 1, LABELS, 1))
    ul = pr["container_ulimits_soft"][0]
    assert ul.label_values[-1] == "RLIMIT_NOFILE" and ul.value.value == 1024
    assert pr["container_file_descriptors"][0].value.value == 3
    assert pr["container_sockets"][0].value.value == 1
    _check_shape(sm.spec_metrics(spec, LABELS, 1) + sm.process_metrics(None, spec, 3, 1,
                                                                        LABELS, 1))


def test_filesystem_and_descriptor_counts(tmp_path):
    import socket

    vfs = os.statvfs(tmp_path)
    fs = _by_name(sm.filesystem_metrics(vfs, 4096, 3, LABELS, 1))
    assert fs["container_fs_usage_bytes"][0].value.value == 4096
    assert fs["container_fs_inodes_total"][0].value.value == 3
    assert fs["container_fs_limit_bytes"][0].value.value == vfs.f_blocks * vfs.f_bsize
    assert fs["container_fs_usage_bytes"][0].label_values[-1] == "/"
    fs = _by_name(sm.filesystem_metrics(vfs, None, None, LABELS, 1))  # no snapshot figures
    assert fs["container_fs_inodes_total"][0].value.value == vfs.f_files

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM):
        fds, sockets = sm.count_descriptors([os.getpid()])
        assert fds >= 1 and sockets >= 1
    assert sm.count_descriptors([2**22 + 7]) == (0, 0)   # no such process


def test_network_default_interface_and_pod_metrics():
    text = ("Inter-|   Receive\n face |bytes\n"
            "    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n"
            "  net1: 100 2 3 4 0 0 0 0 200 5 6 7 0 0 0 0\n")
    ifaces = stats.parse_net_dev(text)
    usage = stats._network_usage(ifaces, "eth0", 1)
    # containerd 2.3.4: no eth0, the first interface (lo never counts) is the default
    assert usage.default_interface.name == "net1"
    assert [i.name for i in usage.interfaces] == ["net1"]
    ms = sm.pod_network_metrics(usage.default_interface, ["p", "n", "", "sid", ""], 1)
    by = {m.name: m.value.value for m in ms}
    assert by == {"container_network_receive_bytes_total": 100,
                  "container_network_receive_packets_total": 2,
                  "container_network_receive_errors_total": 3,
                  "container_network_receive_packets_dropped_total": 4,
                  "container_network_transmit_bytes_total": 200,
                  "container_network_transmit_packets_total": 5,
                  "container_network_transmit_errors_total": 6,
                  "container_network_transmit_packets_dropped_total": 7}
    _check_shape(ms)
    assert all(list(m.label_values) == ["p", "n", "", "sid", "", "eth0"] for m in ms)


# --- UpdatePodSandboxResources checks -------------------------------------------------------

def test_update_resources_checks_and_json():
    from ctrd.api.cri.runtime.v1 import api_pb2 as pb

    ok = pb.LinuxContainerResources(cpu_quota=-1, memory_swap_limit_in_bytes=-1,
                                    oom_score_adj=-998, unified={"memory.high": "max"})
    sur.check_resources("resources", ok)
    assert sur.resources_json(ok) == {"linux": {
        "cpu_quota": -1, "memory_swap_limit_in_bytes": -1, "oom_score_adj": -998,
        "unified": {"memory.high": "max"}}}
    for bad, where in ((pb.LinuxContainerResources(cpu_shares=-1), "x.cpu_shares"),
                       (pb.LinuxContainerResources(cpu_quota=-2), "x.cpu_quota"),
                       (pb.LinuxContainerResources(unified={"..": "1"}), "x.unified"),
                       (pb.LinuxContainerResources(unified={"a/b.c": "1"}), "x.unified"),
                       (pb.LinuxContainerResources(unified={"cpu.max": "1\x00"}), "x.unified"),
                       (pb.LinuxContainerResources(cpuset_mems="\x00"), "x.cpuset_mems")):
        with pytest.raises(errdefs.InvalidArgument, match=where.replace(".", r"\.")):
            sur.check_resources("x", bad)
