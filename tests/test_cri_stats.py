"""CRI stats: ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats from
the real cgroups (v1 here) and the pod's network namespace."""

from __future__ import annotations

import time

import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.cri_stats import _run, cgroup_parent  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


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
