"""CRI stats fields, metrics and UpdatePodSandboxResources as containerd 2.3.4 fills them,
through the CRI client against the real daemon (runc, cgroup v1 on this host, CNI bridge).

- ContainerStats: cpu (``usage_nano_cores`` unset on a container's first sample, > 0 on the
  next while it burns CPU), every memory field, no ``swap`` (containerd 2.3.4 fills none),
  the writable layer;
- PodSandboxStats: network (``eth0`` default, every interface but lo), the containers, the
  process count as the sum of the containers' pids;
- ListMetricDescriptors / ListPodSandboxMetrics: containerd's names, label values of the
  descriptor's shape whatever the pod's labels and annotations;
- UpdatePodSandboxResources: NotFound, recorded in verbose status (and across a restart),
  hostile values refused naming the field.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory, pod_config  # noqa: F401 - fixtures
from support.cri_stats import _run, cgroup_parent  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

BURN = ["sh", "-c", "while :; do :; done"]


def _wait_cpu(cri, cid, above: int = 0):  # noqa: F811
    """Poll ContainerStats until usage_core_nano_seconds exceeds ``above``."""
    pb = cri.pb
    deadline = time.monotonic() + 30
    while True:
        s = cri.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
        if s.cpu.usage_core_nano_seconds.value > above or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def test_container_stats_fields(cri, cgroup_parent):  # noqa: F811
    pb = cri.pb
    sid, cid = _run(cri, "fields", "u-fields", BURN, cgroup_parent)
    first = cri.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert first.HasField("cpu") and first.cpu.HasField("usage_core_nano_seconds")
    # containerd 2.3.4 (without its collector's sample) leaves the rate unset at first
    assert not first.cpu.HasField("usage_nano_cores")
    second = _wait_cpu(cri, cid, first.cpu.usage_core_nano_seconds.value)
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.cpu.usage_nano_cores.value > 0
    mem = second.memory
    for f in ("working_set_bytes", "available_bytes", "usage_bytes", "rss_bytes",
              "page_faults", "major_page_faults"):
        assert mem.HasField(f), f
    assert 0 < mem.working_set_bytes.value <= mem.usage_bytes.value
    assert mem.available_bytes.value == (64 << 20) - mem.working_set_bytes.value
    assert mem.page_faults.value > 0
    assert mem.timestamp > 0
    # containerd 2.3.4 fills no swap (nor io / psi on cgroup v1)
    assert not second.HasField("swap") and not second.HasField("io")
    assert not second.cpu.HasField("psi") and not mem.HasField("psi")
    assert second.writable_layer.HasField("used_bytes")
    assert second.writable_layer.HasField("inodes_used")
    assert second.writable_layer.fs_id.mountpoint
    # The list shares the samples: its rate is against ContainerStats' last one. Asked
    # until the counter moved (the container may sit out a CFS period between two reads).
    deadline = time.monotonic() + 30
    while True:
        listed = cri.rt.ListContainerStats(pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(id=cid))).stats
        assert [s.attributes.id for s in listed] == [cid]
        if listed[0].cpu.usage_core_nano_seconds.value > \
                second.cpu.usage_core_nano_seconds.value or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert listed[0].cpu.usage_nano_cores.value > 0
    streamed = [s.attributes.id for r in cri.rt.StreamContainerStats(
        pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(id=cid)))
        for s in r.container_stats]
    assert streamed == [cid]
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))


def test_pod_stats_network_containers_processes(cri, cgroup_parent):  # noqa: F811
    pb = cri.pb
    sid, cid = _run(cri, "podfields", "u-podfields",
                    ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], cgroup_parent)
    # a second container in the same pod
    sconf = pod_config(pb, "podfields", "u-podfields",
                       linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent))
    cconf = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="side"),
                               image=pb.ImageSpec(image=cri.image), command=["sleep", "1000"])
    cid2 = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=cconf, sandbox_config=sconf)).container_id
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid2))

    deadline = time.monotonic() + 30
    while True:  # the first container's shell forks its two sleeps
        ps = cri.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid)).stats
        if ps.linux.process.process_count.value >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    linux = ps.linux
    assert sorted(c.attributes.id for c in linux.containers) == sorted([cid, cid2])
    # containerd: the pod's count is its containers' pids.current, summed (3 + 1)
    assert linux.process.process_count.value == 4
    assert linux.network.default_interface.name == "eth0"
    assert [i.name for i in linux.network.interfaces] == ["eth0"]  # lo left out
    eth0 = linux.network.interfaces[0]
    for f in ("rx_bytes", "rx_errors", "tx_bytes", "tx_errors"):
        assert eth0.HasField(f), f
    assert linux.cpu.HasField("usage_core_nano_seconds")
    assert linux.memory.working_set_bytes.value > 0

    listed = cri.rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats
    assert [p.attributes.id for p in listed] == [sid]
    streamed = [p.attributes.id for r in cri.rt.StreamPodSandboxStats(
        pb.StreamPodSandboxStatsRequest()) for p in r.pod_sandbox_stats]
    assert streamed == [sid]

    # a stopped pod: Unavailable (containerd), and left out of the list
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sid))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert list(cri.rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats) == []
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))


def test_metric_descriptors(cri):  # noqa: F811
    pb = cri.pb
    ds = cri.rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
    by = {d.name: d for d in ds}
    assert len(by) == len(ds) == 49
    base = ["pod", "namespace", "container", "id", "image"]
    assert list(by["container_cpu_usage_seconds_total"].label_keys) == base
    assert by["container_cpu_usage_seconds_total"].help == \
        "Cumulative CPU time consumed in seconds."
    assert list(by["container_network_receive_bytes_total"].label_keys) == base + ["interface"]
    assert list(by["container_fs_usage_bytes"].label_keys) == base + ["device"]
    assert list(by["container_memory_failures_total"].label_keys) == \
        base + ["failure_type", "scope"]
    assert list(by["container_blkio_device_usage_total"].label_keys) == \
        base + ["device", "major", "minor", "operation"]
    assert list(by["container_ulimits_soft"].label_keys) == base + ["ulimit"]


def test_pod_sandbox_metrics_bounded_labels(cri, cgroup_parent):  # noqa: F811
    pb = cri.pb
    keys = {d.name: list(d.label_keys) for d in cri.rt.ListMetricDescriptors(
        pb.ListMetricDescriptorsRequest()).descriptors}
    huge = "h" * 4000  # under the store's 4096-byte label limit
    labels = {f"l{i}": huge for i in range(200)}
    annotations = {f"a{i}": huge for i in range(200)}
    sconf = pod_config(pb, "metrics", "u-metrics", labels=labels, annotations=annotations,
                       linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent))
    sid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sconf)).pod_sandbox_id
    cconf = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="main"),
        image=pb.ImageSpec(image=cri.image, user_specified_image="busybox:test"),
        command=BURN, labels=labels, annotations=annotations,
        linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
            memory_limit_in_bytes=64 << 20, cpu_period=100000, cpu_shares=512)))
    cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=cconf, sandbox_config=sconf)).container_id
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))

    pods = cri.rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
    assert [p.pod_sandbox_id for p in pods] == [sid]
    pod = pods[0]
    names = {m.name for m in pod.metrics}
    assert "container_network_receive_bytes_total" in names
    for m in pod.metrics:
        assert list(m.label_values) == ["metrics", "default", "", sid, "", "eth0"], m
    assert [c.container_id for c in pod.container_metrics] == [cid]
    cm = {m.name: m for m in pod.container_metrics[0].metrics}
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_memory_usage_bytes", "container_processes",
                 "container_fs_usage_bytes", "container_spec_memory_limit_bytes",
                 "container_spec_cpu_shares", "container_file_descriptors",
                 "container_start_time_seconds", "container_last_seen"):
        assert name in cm, name
    assert cm["container_spec_memory_limit_bytes"].value.value == 64 << 20
    assert cm["container_spec_cpu_shares"].value.value == 512
    assert cm["container_processes"].value.value >= 1
    assert cm["container_memory_working_set_bytes"].metric_type == pb.GAUGE
    assert cm["container_cpu_usage_seconds_total"].metric_type == pb.COUNTER
    assert list(cm["container_processes"].label_values) == \
        ["metrics", "default", "main", cid, "busybox:test"]
    every = list(pod.metrics) + list(pod.container_metrics[0].metrics)
    for m in every:
        assert len(m.label_values) == len(keys[m.name]), m.name
        assert all(huge not in v for v in m.label_values)
    streamed = [p.pod_sandbox_id for r in cri.rt.StreamPodSandboxMetrics(
        pb.StreamPodSandboxMetricsRequest()) for p in r.pod_sandbox_metrics]
    assert streamed == [sid]

    # a stopped container drops out of the pod's metrics (containerd: no task, no metrics)
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    pods = cri.rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
    assert [p.pod_sandbox_id for p in pods] == [sid] and not pods[0].container_metrics
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert list(cri.rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
                .pod_metrics) == []
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))


def _info(cri, sid):  # noqa: F811
    pb = cri.pb
    return json.loads(cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=sid, verbose=True)).info["info"])


def test_update_pod_sandbox_resources(cri):  # noqa: F811
    pb = cri.pb
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id="nosuchpod"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    sid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(
        config=pod_config(pb, "resize", "u-resize"))).pod_sandbox_id
    info = _info(cri, sid)
    assert "overhead" not in info and "resources" not in info
    cri.rt.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=sid,
        overhead=pb.LinuxContainerResources(memory_limit_in_bytes=100),
        resources=pb.LinuxContainerResources(cpu_quota=200000, cpu_period=100000,
                                             unified={"memory.high": "max"})))
    info = _info(cri, sid)
    assert info["overhead"] == {"linux": {"memory_limit_in_bytes": 100}}
    assert info["resources"] == {"linux": {"cpu_period": 100000, "cpu_quota": 200000,
                                           "unified": {"memory.high": "max"}}}

    for field, bad in (
            ("resources.memory_limit_in_bytes",
             dict(resources=pb.LinuxContainerResources(memory_limit_in_bytes=-5))),
            ("overhead.oom_score_adj",
             dict(overhead=pb.LinuxContainerResources(oom_score_adj=5000))),
            ("resources.unified", dict(resources=pb.LinuxContainerResources(
                unified={"../../etc/passwd": "x"}))),
            ("resources.cpuset_cpus",
             dict(resources=pb.LinuxContainerResources(cpuset_cpus="0\x001"))),
            ("resources.hugepage_limits[0].page_size", dict(resources=pb.LinuxContainerResources(
                hugepage_limits=[pb.HugepageLimit(page_size="", limit=1)]))),
            ("resources is", dict(resources=pb.LinuxContainerResources(
                unified={f"memory.k{i}": "v" * 1024 for i in range(100)})))):
        with pytest.raises(grpc.RpcError) as e:
            cri.rt.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=sid, **bad))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in e.value.details(), (field, e.value.details())
    # nothing of the refused calls was recorded
    assert _info(cri, sid)["overhead"] == {"linux": {"memory_limit_in_bytes": 100}}

    # an unset field is recorded as containerd records a nil one
    cri.rt.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=sid, resources=pb.LinuxContainerResources(cpu_shares=2)))
    info = _info(cri, sid)
    assert info["overhead"] == {} and info["resources"] == {"linux": {"cpu_shares": 2}}

    cri.restart()  # recorded in the sandbox's status file: kept across a restart
    info = _info(cri, sid)
    assert info["overhead"] == {} and info["resources"] == {"linux": {"cpu_shares": 2}}
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
