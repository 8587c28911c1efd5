"""cgroup v2 (most hosts now; this one may be v1): the spec builder's v2 branches (what the host
probe finds in a v2 tree, resources -> the v2 files an OCI runtime writes, unified keys, swap)
and the stats readers (finding a task's cgroup on a unified host, the full and the CRI-only
metrics, the CRI figures) over fake v2 trees holding the files a v2 kernel writes. Expected
values are containerd 2.3.4's (its cgroups library v3.1.3 and CRI stats code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgroupv2 import v2_files, weight_linear, weight_quadratic, weights, write_tree
from ctrd.api.cri.runtime.v1 import api_pb2 as cri
from ctrd.cri import stats as cs
from ctrd.cri.config import CRIConfig
from ctrd.cri.spec import HostFacts, apply_resources
from ctrd.cri.stats_sources import cgroup_metrics
from ctrd.errdefs import InvalidArgument, NotFound
from ctrd.runtime import cgroups

MAX = 2**64 - 1
V2 = HostFacts(cgroup2=True, hugetlb=True, swap=True)
V1 = HostFacts(cgroup2=False, hugetlb=True, swap=True)


# --- the host probe over a v2 tree ------------------------------------------------------------

def _v2_host(tmp_path: Path, controllers: str, swap: bool) -> tuple[str, str]:
    root = tmp_path / "sys-fs-cgroup"
    (root / "system.slice" / "ctrd.service").mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    if swap:
        (root / "system.slice" / "ctrd.service" / "memory.swap.max").write_text("max\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/system.slice/ctrd.service\n")
    return str(root), str(proc)


@pytest.mark.parametrize("controllers,swap,want", [
    ("cpuset cpu io memory hugetlb pids rdma misc", True, (True, True, True)),
    ("cpuset cpu io memory pids", True, (True, False, True)),       # no hugetlb controller
    ("cpuset cpu io memory hugetlb pids", False, (True, True, False)),  # swap not accounted
])
def test_probe_of_a_v2_host(tmp_path, controllers, swap, want):
    root, proc = _v2_host(tmp_path, controllers, swap)
    h = HostFacts.probe(cgroup_root=root, proc_cgroup=proc)
    assert (h.cgroup2, h.hugetlb, h.swap) == want


def test_probe_of_a_v1_host(tmp_path):
    root = tmp_path / "sys-fs-cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "hugetlb").mkdir()
    (root / "unified").mkdir()  # hybrid: the v2 hierarchy elsewhere is not "cgroup2 here"
    h = HostFacts.probe(cgroup_root=str(root), proc_cgroup=str(tmp_path / "none"))
    assert (h.cgroup2, h.hugetlb, h.swap) == (False, True, False)
    (root / "memory" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    assert HostFacts.probe(cgroup_root=str(root)).swap


# --- resources -> v2 files ---------------------------------------------------------------------

def _resources(host: HostFacts, cfg: CRIConfig | None = None, **kw) -> dict:
    spec: dict = {}
    apply_resources(spec, cri.LinuxContainerResources(**kw), cfg or CRIConfig(), host)
    return spec["linux"]["resources"]


def test_shares_to_weight_as_the_cgroups_library():
    # containerd/cgroups v3.1.3 (quadratic: 1024 -> 100) and runc 1.1 (linear)
    assert [weight_quadratic(s) for s in (2, 512, 1024, 2048, 262144)] == \
        [1, 59, 100, 174, 10000]
    assert [weight_linear(s) for s in (2, 512, 1024, 2048, 262144)] == \
        [1, 20, 39, 79, 10000]
    assert weights(1024) == {"39", "100"}


def test_a_containers_resources_on_a_v2_host():
    res = _resources(V2, cpu_shares=512, cpu_quota=50000, cpu_period=100000,
                     cpuset_cpus="0-1", cpuset_mems="0", memory_limit_in_bytes=64 << 20)
    files = v2_files(res)
    assert files == {"cpu.weight": "20", "cpu.max": "50000 100000", "cpuset.cpus": "0-1",
                     "cpuset.mems": "0", "memory.max": str(64 << 20),
                     # swap = memory (OCI: memory + swap): no swap at all unless asked
                     "memory.swap.max": "0"}
    assert v2_files(res, linear=False)["cpu.weight"] == "59"
    # a period without a quota: no bandwidth limit
    assert v2_files(_resources(V2, cpu_period=50000))["cpu.max"] == "max 50000"


@pytest.mark.parametrize("swap,want", [(96 << 20, str(64 << 20)), (32 << 20, "0"),
                                       (-1, "max")])
def test_swap_is_memory_plus_swap(swap, want):
    """CRI's memory_swap_limit_in_bytes, like OCI's memory.swap, counts memory + swap; v2's
    memory.swap.max counts swap alone."""
    res = _resources(V2, memory_limit_in_bytes=32 << 20, memory_swap_limit_in_bytes=swap)
    assert v2_files(res)["memory.swap.max"] == want
    nosw = _resources(HostFacts(cgroup2=True, swap=False), memory_limit_in_bytes=32 << 20,
                      memory_swap_limit_in_bytes=swap)
    assert "memory.swap.max" not in v2_files(nosw)  # not accounted: nothing written


def test_hugetlb_and_unified_on_v2():
    cfg = CRIConfig(disable_hugetlb_controller=False)
    res = _resources(V2, cfg, hugepage_limits=[cri.HugepageLimit(page_size="2MB",
                                                                 limit=4 << 21)],
                     unified={"memory.high": "1000000", "pids.max": "42",
                              "cpu.weight": "7"})
    files = v2_files(res)
    assert files["hugetlb.2MB.max"] == str(4 << 21)
    # unified keys are the files themselves, written last: they win over converted ones
    assert (files["memory.high"], files["pids.max"]) == ("1000000", "42")
    res = _resources(V2, cpu_shares=1024, unified={"cpu.weight": "7"})
    assert v2_files(res)["cpu.weight"] == "7"
    with pytest.raises(InvalidArgument, match="cgroup v2"):
        _resources(V1, unified={"memory.high": "1000000"})
    # a v2 host without the hugetlb controller: tolerated (containerd's default), no files
    res = _resources(HostFacts(cgroup2=True, hugetlb=False), cfg,
                     hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=1 << 21)])
    assert not any(k.startswith("hugetlb.") for k in v2_files(res))


# --- finding a task's cgroup on a unified host -----------------------------------------------

def _unified_host(tmp_path: Path, pid: int, path: str) -> tuple[str, str]:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(f"0::{path}\n")
    mnt = tmp_path / "cgroup2"
    mnt.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:20 / / rw - ext4 /dev/sda1 rw\n"
        f"30 22 0:26 / {mnt} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
        "rw,nsdelegate,memory_recursiveprot\n")
    return str(proc), str(mountinfo)


def test_load_on_a_unified_host(tmp_path):
    proc, mountinfo = _unified_host(tmp_path, 4242, "/kubepods.slice/cri-containerd-c1.scope")
    cg = cgroups.load(4242, version=2, proc=proc, mountinfo=mountinfo)
    assert cg.version == 2
    assert cg.path == str(tmp_path / "cgroup2/kubepods.slice/cri-containerd-c1.scope")
    with pytest.raises(NotFound):
        cgroups.load(4242, version=1, proc=proc, mountinfo=mountinfo)  # no v1 hierarchy
    with pytest.raises(NotFound):
        cgroups.load(4243, version=2, proc=proc, mountinfo=mountinfo)  # gone


def test_paths_on_a_unified_host(tmp_path):
    """A v2-only host (cgroup2 on /sys/fs/cgroup) is read as v2 without being told; the
    cgroupsPath of a container (systemd driver form) and a pod's cgroup parent map into it."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:20 / / rw - ext4 /dev/sda1 rw\n"
                         "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime "
                         "shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n")
    assert cgroups.mode(str(mountinfo)) == "unified"
    cg = cgroups.load_path("kubepods-besteffort-pod1.slice:cri-containerd:c1",
                           mountinfo=str(mountinfo))
    assert cg.version == 2 and cg.path == (
        "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/"
        "kubepods-besteffort-pod1.slice/cri-containerd-c1.scope")
    pod = cgroups.load_path("/kubepods/besteffort/pod1", mountinfo=str(mountinfo))
    assert (pod.version, pod.path) == (2, "/sys/fs/cgroup/kubepods/besteffort/pod1")
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(mountinfo.read_text().replace("/sys/fs/cgroup ", "/sys/fs/cgroup/unified ")
                      + "31 22 0:27 / /sys/fs/cgroup/memory rw shared:5 - cgroup cgroup "
                        "rw,memory\n")
    assert cgroups.mode(str(hybrid)) == "hybrid"
    assert cgroups.load_path("/p", mountinfo=str(hybrid)).version == 1  # as containerd


# --- the stats readers over what the spec gives -------------------------------------------------

def test_stats_of_a_limited_container_on_v2(tmp_path):
    """The files a v2 host has for a container created with limits, read by the full reader,
    the CRI-only one and the CRI figures."""
    res = _resources(V2, CRIConfig(disable_hugetlb_controller=False),
                     cpu_shares=512, cpu_quota=50000, cpu_period=100000,
                     memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=96 << 20,
                     hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=4 << 21)])
    res["pids"] = {"limit": 100}  # the runtime handler's base spec may carry one
    d = write_tree(tmp_path / "c1", {**v2_files(res), "hugetlb.2MB.current": "0",
                                     "hugetlb.2MB.events": "max 0",
                                     "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 "
                                                "dbytes=0 dios=0"})
    cg = cgroups.Cgroup(2, path=str(d))
    full = cg.metrics()
    assert (full.memory.usage, full.memory.usage_limit) == (30000, 64 << 20)
    assert (full.memory.swap_usage, full.memory.swap_limit) == (0, 32 << 20)
    assert (full.pids.current, full.pids.limit) == (1, 100)
    assert [(h.pagesize, h.max) for h in full.hugetlb] == [("2MB", 4 << 21)]
    assert [(e.major, e.minor, e.rbytes, e.wbytes) for e in full.io.usage] == \
        [(8, 0, 4096, 8192)]
    light = cgroup_metrics(cg, cri_only=True)
    assert light.memory.usage_limit == 64 << 20
    for m in (full, light):
        mem = cs.memory_usage(m, 1)
        # containerd: working set = usage - inactive_file; available = limit - working set
        assert (mem.working_set_bytes, mem.available_bytes, mem.usage_bytes,
                mem.rss_bytes) == (27952, (64 << 20) - 27952, 30000, 8192)
        assert cs.cpu_usage(m, 1).usage_core_nano_seconds == 7_000_000
        assert cs.pids_current(m) == 1


def test_stats_of_an_unlimited_container_on_v2(tmp_path):
    d = write_tree(tmp_path / "c2", v2_files(_resources(V2, cpu_shares=2)))
    assert (d / "cpu.weight").read_text() == "1\n"
    m = cgroups.Cgroup(2, path=str(d)).metrics()
    assert (m.memory.usage_limit, m.memory.swap_limit, m.pids.limit) == (MAX, MAX, MAX)
    assert cs.memory_usage(m, 1).available_bytes == 0  # no limit: 0, as containerd
    assert cgroup_metrics(cgroups.Cgroup(2, path=str(tmp_path / "gone"))) is None
