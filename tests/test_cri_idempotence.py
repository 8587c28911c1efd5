"""A kubelet retry of a create still in flight waits for it and gets the same object; a
create of a name that exists fails with "reserved", as in containerd."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory, pod_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def test_concurrent_retries_get_the_same_pod_and_container(cri):  # noqa: F811
    pb = cri.pb
    config = pod_config(pb, "retry", "u-retry")
    with ThreadPoolExecutor(3) as pool:
        ids = list(pool.map(lambda _: cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(
            config=config)).pod_sandbox_id, range(3)))
    assert len(set(ids)) == 1, ids
    assert len(cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items) == 1
    with pytest.raises(grpc.RpcError) as e:  # no longer in flight: reserved
        cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))
    assert "reserved" in e.value.details()

    sid = ids[0]
    cconf = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                               image=pb.ImageSpec(image=cri.image), command=["sleep", "100"])
    with ThreadPoolExecutor(3) as pool:
        cids = list(pool.map(lambda _: cri.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=cconf, sandbox_config=config)).container_id, range(3)))
    assert len(set(cids)) == 1, cids
    assert len(cri.rt.ListContainers(pb.ListContainersRequest()).containers) == 1
    cri.remove_pod(sid)


def test_failed_first_attempt_lets_the_retry_try_again(cri):  # noqa: F811
    pb = cri.pb
    config = pod_config(pb, "again", "u-again")
    bad = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                             image=pb.ImageSpec(image="nosuch.example/none:1"))
    sid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(cri.rt.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=bad, sandbox_config=config)) for _ in range(2)]
        for f in futs:
            with pytest.raises(grpc.RpcError) as e:
                f.result()
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    good = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                              image=pb.ImageSpec(image=cri.image), command=["true"])
    cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=good, sandbox_config=config)).container_id
    assert cid
    cri.remove_pod(sid)
