"""The CRI RuntimeService end to end: a real ctrd with its CRI plugin, real CNI plugins
(Debian's bridge + host-local), real runc through ctrd's shim, driven over gRPC with the
runtime.v1 stubs as the kubelet would.
"""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory, pod_config  # noqa: F401 - fixtures
from support.poll import wait_until

pytestmark = pytest.mark.integration


def test_version_and_status(cri):
    pb = cri.pb
    v = cri.rt.Version(pb.VersionRequest())
    assert v.runtime_name == "ctrd" and v.runtime_api_version == "v1"
    st = cri.rt.Status(pb.StatusRequest(verbose=True))
    conds = {c.type: c.status for c in st.status.conditions}
    from ctrd.deprecation import cgroup_v1_host

    # as containerd 2.3.4: a cgroup v1 host is a deprecation warning
    assert conds == {"RuntimeReady": True, "NetworkReady": True,
                     "ContainerdHasNoDeprecationWarnings": not cgroup_v1_host()}
    assert "config" in st.info


def test_pod_and_container_lifecycle(cri):
    pb = cri.pb
    logdir = str(cri.logdir / "default_pod1_uid-1")
    sid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(
        config=pod_config(pb, log_directory=logdir))).pod_sandbox_id
    status = cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid,
                                                                verbose=True))
    assert status.status.state == pb.SANDBOX_READY
    ip = status.status.network.ip
    assert ip.startswith(cri.net.prefix + "."), ip
    info = json.loads(status.info["info"])
    assert os.path.exists(info["netns"])

    items = cri.rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(
        label_selector={"app": "pod1"}))).items
    assert [s.id for s in items] == [sid]

    sandbox_config = pod_config(pb, log_directory=logdir)
    cconf = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c1"), image=pb.ImageSpec(image=cri.image),
        command=["sh", "-c", "echo started; exec sleep 1000"], log_path="c1/0.log",
        labels={"role": "main"})
    cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=cconf, sandbox_config=sandbox_config)).container_id
    cs = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert cs.state == pb.CONTAINER_CREATED
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    cs = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid,
                                                          verbose=True))
    assert cs.status.state == pb.CONTAINER_RUNNING
    assert cs.status.log_path == os.path.join(logdir, "c1/0.log")

    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["uname", "-n"], timeout=10))
    assert (r.exit_code, r.stdout) == (0, b"pod1\n")
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid,
                                           cmd=["sh", "-c", "echo err >&2; exit 4"]))
    assert (r.exit_code, r.stderr) == (4, b"err\n")
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid,
                                           cmd=["cat", "/proc/net/fib_trie"]))
    assert ip.encode() in r.stdout  # the pod's IP is local in its network namespace
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    listed = cri.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        pod_sandbox_id=sid, state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))))
    assert [c.id for c in listed.containers] == [cid]

    # sleep is the container's PID 1 and ignores SIGTERM: StopContainer must escalate to
    # SIGKILL once its 2 s are up (exit 137) and answer within the call's deadline
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2), timeout=30)
    cs = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert cs.state == pb.CONTAINER_EXITED
    assert cs.exit_code == 137, cs
    assert cs.reason == "Error"

    cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert cri.rt.ListContainers(pb.ListContainersRequest()).containers == []
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    st = cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid)).status
    assert st.state == pb.SANDBOX_NOTREADY
    assert not os.path.exists(info["netns"])
    assert cri.net.leases() == []
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))  # idempotent


def test_completed_container_and_errors(cri):
    pb = cri.pb
    sid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(pb, "pod2", "u2"))
                               ).pod_sandbox_id
    cconf = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="once"),
                               image=pb.ImageSpec(image=cri.image),
                               command=["sh", "-c", "exit 0"])
    cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=cconf, sandbox_config=pod_config(pb, "pod2", "u2"))
    ).container_id
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    wait_until(lambda: cri.status(cid).state == pb.CONTAINER_EXITED, 20)
    cs = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    assert (cs.state, cs.exit_code, cs.reason) == (pb.CONTAINER_EXITED, 0, "Completed")
    assert cs.finished_at >= cs.started_at > 0

    # the same name again while the first exists: refused, naming the owner
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=cconf, sandbox_config=pod_config(pb, "pod2", "u2")))
    assert "reserved" in e.value.details()
    # an image that is not there
    bad = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="x"),
                             image=pb.ImageSpec(image="nosuch.example/none:1"))
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=bad, sandbox_config=pod_config(pb, "pod2", "u2")))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nosuch.example" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # a second pod with the same metadata: name reserved
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(pb, "pod2", "u2")))
    assert "reserved" in e.value.details()
