"""Stats, metrics and UpdatePodSandboxResources side by side: ctrd against the real
containerd 2.3.4 (``../shared/bin``) on the same CNI network and registry, one pod with one
CPU-burning container each, ctrd in both sandbox modes. What must agree: the metric descriptors, the names (and label
shapes) of the metrics a running container and its pod report, which stats fields are set
(``swap`` and ``io`` unset on cgroup v1, every memory field set), the pod's process count
rule, and the verbose info UpdatePodSandboxResources leaves."""

from __future__ import annotations

import json
import time

import pytest

import containerd2
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri_compare import _detach_under, containerd234, ctrd_cri, pause_image  # noqa: F401

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not containerd2.available(),
                                 reason=f"containerd 2.3.4 not in {containerd2.BIN_DIR}")]


def _scenario(c, image: str, parent: str) -> dict:
    """Run the pod, sample twice, collect what is compared; leave the pod for teardown."""
    pb = c.pb
    r = c.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
    assert r.image_ref
    sconf = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="cmpstats", namespace="default", uid="u-cmpstats"),
        hostname="cmpstats", labels={"big": "x" * 3000},
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent))
    sid = c.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sconf)).pod_sandbox_id
    cconf = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="burn"),
        image=pb.ImageSpec(image=image, user_specified_image=image),
        command=["sh", "-c", "sleep 1000 & while :; do :; done"],
        linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
            memory_limit_in_bytes=64 << 20)))
    cid = c.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=cconf, sandbox_config=sconf)).container_id
    c.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    deadline = time.monotonic() + 30
    while True:  # the list: containerd 2.3.4's ContainerStats never fills usage_nano_cores
        s = c.rt.ListContainerStats(pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(id=cid))).stats[0]
        if (s.cpu.usage_nano_cores.value > 0 and s.cpu.usage_core_nano_seconds.value > 0) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ps = c.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid)).stats
    descs = c.rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
    pods = c.rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
    c.rt.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=sid, overhead=pb.LinuxContainerResources(memory_limit_in_bytes=100),
        resources=pb.LinuxContainerResources(cpu_quota=20000, cpu_period=100000)))
    info = json.loads(c.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=sid, verbose=True)).info["info"])
    pod = next(p for p in pods if p.pod_sandbox_id == sid)
    return {
        "container_fields": sorted(f.name for f, _ in s.ListFields()),
        "cpu_fields": sorted(f.name for f, _ in s.cpu.ListFields()),
        "memory_fields": sorted(f.name for f, _ in s.memory.ListFields()),
        # (its timestamp is containerd's last snapshot-usage scan: 0 until the first, 10 s)
        "layer_fields": sorted(f.name for f, _ in s.writable_layer.ListFields()
                               if f.name != "timestamp"),
        "pod_fields": sorted(f.name for f, _ in ps.linux.ListFields()),
        "pod_network": (ps.linux.network.default_interface.name,
                        [i.name for i in ps.linux.network.interfaces]),
        # sh and its sleep: the container's pids, with no pause or pod process counted
        "pod_processes": ps.linux.process.process_count.value,
        # containerd walks a Go map of the groups: their order is random, compare as a set
        "descriptors": sorted((d.name, d.help, tuple(d.label_keys)) for d in descs),
        "pod_metric_names": sorted({m.name for m in pod.metrics}),
        "pod_metric_labels": sorted({tuple(m.label_values[:2]) + tuple(m.label_values[2:3])
                                     + (len(m.label_values),) for m in pod.metrics}),
        "container_metric_names": sorted({m.name for cm in pod.container_metrics
                                          for m in cm.metrics}),
        "container_metric_shapes": sorted({(m.name, len(m.label_values), m.metric_type)
                                           for cm in pod.container_metrics
                                           for m in cm.metrics}),
        "overhead": info.get("overhead"), "resources": info.get("resources"),
    }


def test_stats_and_metrics_match_containerd_2_3_4(cgroup_parents, ctrd_cri,  # noqa: F811
                                                  containerd234, registry):
    # cgroup_parents first: set up first, torn down last (after both daemons' pods are gone)
    image = registry.ref("busybox")
    ours = _scenario(ctrd_cri, image, cgroup_parents[0])
    ref = _scenario(containerd234, image, cgroup_parents[1])
    differ = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not differ, differ


@pytest.fixture
def cgroup_parents():
    """Two pod cgroup parents (one per daemon); removed at the end, children first."""
    import os
    import subprocess

    stamp = time.time_ns()
    parents = [f"/ctrd-cmpstats-a-{stamp}", f"/ctrd-cmpstats-b-{stamp}"]
    yield parents
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for parent in parents:
            if root.endswith(parent):
                for sub in sorted(dirs, reverse=True):
                    subprocess.run(["rmdir", os.path.join(root, sub)], capture_output=True)
                subprocess.run(["rmdir", root], capture_output=True)
        if root.count("/") > 4:
            dirs[:] = []
