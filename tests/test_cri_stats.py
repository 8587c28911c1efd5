"""CRI stats: ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats from
the real cgroups (v1 here) and the pod's network namespace."""

from __future__ import annotations

import time

import pytest

from test_cri_network import testnet, workdir  # noqa: F401 - fixtures
from test_cri_runtime import cri, cri_factory, pod_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _run(cri, name: str, uid: str, cmd: list[str], parent: str):  # noqa: F811
    pb = cri.pb
    sconf = pod_config(pb, name, uid, linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent))
    sid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sconf)).pod_sandbox_id
    cconf = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="main"),
                               image=pb.ImageSpec(image=cri.image), command=cmd,
                               labels={"stats": "yes"},
                               linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
                                   memory_limit_in_bytes=64 << 20)))
    cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=cconf, sandbox_config=sconf)).container_id
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    return sid, cid


@pytest.fixture
def cgroup_parent():
    """A pod cgroup parent name; its directories (runc makes them) are removed at the end."""
    import os
    import subprocess

    parent = f"/ctrd-test-stats-{time.time_ns()}"
    yield parent
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if root.endswith(parent):
            for sub in sorted(dirs, reverse=True):
                subprocess.run(["rmdir", os.path.join(root, sub)], capture_output=True)
            subprocess.run(["rmdir", root], capture_output=True)
        if root.count("/") > 4:
            dirs[:] = []


def test_container_and_pod_stats(cri, cgroup_parent):  # noqa: F811
    pb = cri.pb
    parent = cgroup_parent
    sid, cid = _run(cri, "stats", "u-stats",
                    ["sh", "-c", "dd if=/dev/zero of=/big bs=1024 count=2048 2>/dev/null; "
                                 "while :; do :; done"], parent)
    time.sleep(1.0)
    s1 = cri.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert s1.attributes.id == cid and s1.attributes.metadata.name == "main"
    assert s1.cpu.usage_core_nano_seconds.value > 0
    assert s1.memory.working_set_bytes.value > 0
    assert s1.memory.available_bytes.value <= 64 << 20
    assert s1.writable_layer.used_bytes.value >= 2 << 20  # the file dd wrote
    assert s1.writable_layer.inodes_used.value >= 1
    time.sleep(0.5)
    s2 = cri.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert s2.cpu.usage_core_nano_seconds.value > s1.cpu.usage_core_nano_seconds.value
    assert s2.cpu.usage_nano_cores.value > 0  # from the two samples

    listed = cri.rt.ListContainerStats(pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(label_selector={"stats": "yes"}))).stats
    assert [s.attributes.id for s in listed] == [cid]
    none = cri.rt.ListContainerStats(pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(label_selector={"stats": "no"}))).stats
    assert list(none) == []

    ps = cri.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid)).stats
    assert ps.attributes.id == sid
    assert [c.attributes.id for c in ps.linux.containers] == [cid]
    assert ps.linux.network.default_interface.name == "eth0"
    names = {i.name for i in ps.linux.network.interfaces}
    assert "eth0" in names
    assert ps.linux.cpu.usage_core_nano_seconds.value > 0  # the pod's cgroup parent
    all_pods = cri.rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats
    assert [p.attributes.id for p in all_pods] == [sid]

    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    s3 = cri.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert not s3.HasField("cpu")  # no task: only the writable layer, as containerd
    assert s3.writable_layer.used_bytes.value >= 2 << 20
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
