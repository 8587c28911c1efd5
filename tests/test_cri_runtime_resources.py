"""Linux resources of CRI containers seen in their real cgroups (v1 cgroupfs or v2, whichever
the host has), and the v2 files their specs give a v2 host (through tests/cgroupv2.py, read
back by ctrd's v2 readers from a fake tree, where the host is v1);
UpdateContainerResources on running and created containers, the OOM score adjustment
(clamped without CAP_SYS_RESOURCE), and a container killed by the OOM killer (OOMKilled).
"""

from __future__ import annotations

import json
import os

import grpc
import pytest

from cgroupv2 import v2_files, weights, write_tree
from ctrd.oci import oom
from ctrd.runtime import cgroups
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

CGROUP = "/sys/fs/cgroup"
V2 = os.path.exists(f"{CGROUP}/cgroup.controllers")  # unified: cgroup2 on /sys/fs/cgroup
needs_memory_controller = pytest.mark.skipif(
    not (os.path.isdir(f"{CGROUP}/memory") or V2 and "memory" in
         open(f"{CGROUP}/cgroup.controllers").read().split()),
    reason="no memory cgroup controller on this host")


def cgroup_dir(pid: int, controller: str) -> str:
    """The process's cgroup directory: of ``controller`` on v1, the unified one on v2."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if V2 and ctrls == "":
                return os.path.join(CGROUP, path.lstrip("/"))
            if not V2 and controller in ctrls.split(","):
                return os.path.join(CGROUP, controller, path.lstrip("/"))
    raise AssertionError(f"no {controller} cgroup for {pid}")


def read(pid: int, controller: str, name: str) -> str:
    with open(os.path.join(cgroup_dir(pid, controller), name)) as f:
        return f.read().strip()


def check_limits(client, cid: str, pid: int, tmp_path, shares: int = 0, quota: int = 0,
                 period: int = 0, memory: int = 0) -> None:
    """The container's limits in its real cgroup files, and in the v2 files its spec gives:
    a v2 host's real ones, or (v1 host) a fake v2 tree read by ctrd's v2 reader."""
    _, info = client.status(cid, verbose=True)
    files = v2_files(info["runtimeSpec"]["linux"]["resources"])
    want = {}
    if period:
        want["cpu.max"] = f"{quota or 'max'} {period}"
    if memory:
        want["memory.max"] = str(memory)
    assert {k: files[k] for k in want} == want
    if shares:
        assert files["cpu.weight"] in weights(shares)
    if V2:
        assert {k: read(pid, "", k) for k in want} == want
        if shares:
            assert read(pid, "", "cpu.weight") in weights(shares)
        return
    if shares:
        assert read(pid, "cpu", "cpu.shares") == str(shares)
    if period:
        assert read(pid, "cpu", "cpu.cfs_quota_us") == str(quota or -1)
        assert read(pid, "cpu", "cpu.cfs_period_us") == str(period)
    if memory:
        assert read(pid, "memory", "memory.limit_in_bytes") == str(memory)
        tree = write_tree(tmp_path / f"v2-{cid}", files)
        assert cgroups.Cgroup(2, path=str(tree)).metrics().memory.usage_limit == memory


def resources(pb, **kw):
    return pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(**kw))


@pytest.fixture
def cgroup_parent():
    """A cgroup parent for a pod (cgroupfs driver); its dirs are removed at the end."""
    name = f"/ctrd-cri-test-{os.getpid()}"
    yield name
    dirs = [os.path.join(CGROUP, name.lstrip("/"))]
    if not V2:
        dirs = [os.path.join(CGROUP, ctrl, name.lstrip("/")) for ctrl in os.listdir(CGROUP)]
    for d in dirs:
        if os.path.isdir(d):
            for sub in os.listdir(d):
                if os.path.isdir(os.path.join(d, sub)):
                    os.rmdir(os.path.join(d, sub))
            os.rmdir(d)


@pytest.mark.parametrize("with_parent", [False, True], ids=["no-parent", "cgroup-parent"])
def test_resources_in_cgroups_and_update(cri, cgroup_parent, with_parent, tmp_path):  # noqa: F811
    pb = cri.pb
    linux = pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent if with_parent else "")
    sid, pconf = cri.run_pod("res", linux=linux)
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"], linux=resources(
        pb, cpu_shares=512, cpu_quota=50000, cpu_period=100000,
        memory_limit_in_bytes=64 << 20, oom_score_adj=-500))
    pid = cri.pid(cid)
    assert pid > 0
    if with_parent:
        where = CGROUP if V2 else f"{CGROUP}/memory"
        assert cgroup_dir(pid, "memory") == f"{where}{cgroup_parent}/{cid}"
    assert cgroup_dir(pid, "memory").endswith("/" + cid)
    check_limits(cri, cid, pid, tmp_path, shares=512, quota=50000, period=100000,
                 memory=64 << 20)
    # -500 is below ctrd's own score: kept if ctrd may lower it, else clamped to ctrd's
    want = -500 if oom.can_lower() else max(-500, oom.current_score())
    with open(f"/proc/{pid}/oom_score_adj") as f:
        assert int(f.read()) == want
    assert cri.sh(cid, "cat /proc/self/oom_score_adj") == f"{want}\n"

    cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(
            cpu_shares=256, cpu_quota=20000, cpu_period=100000,
            memory_limit_in_bytes=32 << 20)))
    check_limits(cri, cid, pid, tmp_path, shares=256, quota=20000, period=100000,
                 memory=32 << 20)
    _, info = cri.status(cid, verbose=True)
    res = info["runtimeSpec"]["linux"]["resources"]
    assert res["cpu"]["shares"] == 256 and res["cpu"]["quota"] == 20000
    assert res["memory"]["limit"] == 32 << 20

    # a created container: the spec changes, the start applies it
    later = cri.create(sid, pconf, "later", ["sleep", "1000"], start=False,
                       linux=resources(pb, memory_limit_in_bytes=64 << 20))
    cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=later, linux=pb.LinuxContainerResources(
            memory_limit_in_bytes=48 << 20, cpu_shares=300)))
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=later))
    check_limits(cri, later, cri.pid(later), tmp_path, shares=300, memory=48 << 20)

    # hostile updates: refused, nothing changed
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
            container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=-5)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    check_limits(cri, cid, pid, tmp_path, memory=32 << 20)
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
            container_id="nosuch", linux=pb.LinuxContainerResources(cpu_shares=2)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    cri.remove_pod(sid)


def test_oom_score_adj_positive_and_out_of_range(cri):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("oomadj")
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"], linux=resources(pb, oom_score_adj=900))
    assert cri.sh(cid, "cat /proc/self/oom_score_adj") == "900\n"
    with pytest.raises(grpc.RpcError) as e:
        cri.create(sid, pconf, "bad", ["true"], linux=resources(pb, oom_score_adj=5000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "oom_score_adj" in e.value.details()
    cri.remove_pod(sid)


@needs_memory_controller
def test_oom_killed(cri):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("oom")
    # tail buffers a line that never ends: it grows until the limit
    cid = cri.create(sid, pconf, "hog", ["tail", "/dev/zero"],
                     linux=resources(pb, memory_limit_in_bytes=8 << 20))
    cs = cri.wait_exited(cid, timeout=60)
    assert (cs.state, cs.reason, cs.exit_code) == (pb.CONTAINER_EXITED, "OOMKilled", 137), cs
    # a plain kill is no OOM
    other = cri.create(sid, pconf, "killed", ["sleep", "1000"],
                       linux=resources(pb, memory_limit_in_bytes=64 << 20))
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=other, timeout=0))
    cs = cri.status(other)
    assert (cs.exit_code, cs.reason) == (137, "Error")
    info = json.loads(cri.rt.ContainerStatus(pb.ContainerStatusRequest(
        container_id=cid, verbose=True)).info["info"])
    assert info["pid"] == 0
    cri.remove_pod(sid)


def test_update_refused_by_the_runtime_keeps_the_spec(cri, tmp_path):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("upd")
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"],
                     linux=resources(pb, cpu_quota=50000, cpu_period=100000))
    pid = cri.pid(cid)
    # the kernel refuses a 100 us period (minimum 1 ms): runc update fails
    with pytest.raises(grpc.RpcError):
        cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
            container_id=cid, linux=pb.LinuxContainerResources(cpu_period=100,
                                                              cpu_quota=50)))
    _, info = cri.status(cid, verbose=True)
    assert info["runtimeSpec"]["linux"]["resources"]["cpu"]["period"] == 100000
    check_limits(cri, cid, pid, tmp_path, quota=50000, period=100000)
    # an exited container: only its spec is updated (containerd 2.3.4 answers OK)
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(cpu_shares=100)))
    _, info = cri.status(cid, verbose=True)
    assert info["runtimeSpec"]["linux"]["resources"]["cpu"]["shares"] == 100
    cri.remove_pod(sid)
