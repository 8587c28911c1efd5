"""ListPodSandbox / ListContainers and their Kubernetes 1.36 streaming forms through the CRI
client: filters by id prefix, state, pod and labels (evaluated in the core), creation order,
the streaming calls answering the same items; CheckpointContainer refused clearly."""

from __future__ import annotations

import grpc
import pytest

from cri_client import rpc_error
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _stream(call, req) -> list:
    out = []
    for msg in call(req):
        out.append(msg)
    return out


def test_lists_filters_and_streams(cri):  # noqa: F811
    pb = cri.pb
    a, pa = cri.run_pod("lists-a", labels={"app": "a", "tier": "web"})
    b, pbconf = cri.run_pod("lists-b", labels={"app": "b", "tier": "web"})
    try:
        ca = cri.create(a, pa, "ca", ["sleep", "1000"], labels={"c": "1"})
        cb = cri.create(b, pbconf, "cb", ["sleep", "1000"], start=False, labels={"c": "2"})

        def pods(**f):
            req = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**f)) if f else \
                pb.ListPodSandboxRequest()
            listed = [s.id for s in cri.rt.ListPodSandbox(req).items]
            sreq = pb.StreamPodSandboxesRequest(filter=req.filter) if f else \
                pb.StreamPodSandboxesRequest()
            streamed = [s.id for m in _stream(cri.rt.StreamPodSandboxes, sreq)
                        for s in m.pod_sandboxes]
            assert streamed == listed
            return listed

        def ctrs(**f):
            req = pb.ListContainersRequest(filter=pb.ContainerFilter(**f))
            listed = [c.id for c in cri.rt.ListContainers(req).containers]
            streamed = [c.id for m in _stream(cri.rt.StreamContainers,
                                              pb.StreamContainersRequest(filter=req.filter))
                        for c in m.containers]
            assert streamed == listed
            return listed

        assert pods() == [a, b]  # oldest first
        assert pods(id=a[:12]) == [a]
        assert pods(label_selector={"tier": "web"}) == [a, b]
        assert pods(label_selector={"app": "b"}) == [b]
        assert pods(label_selector={"app": "b", "tier": "db"}) == []
        assert ctrs() == [ca, cb]
        assert ctrs(pod_sandbox_id=b[:10]) == [cb]
        assert ctrs(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)) == [ca]
        assert ctrs(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED)) == [cb]
        assert ctrs(label_selector={"c": "2"}) == [cb]
        assert ctrs(id="nosuch") == []
        # an empty answer is still one (empty) message
        msgs = _stream(cri.rt.StreamContainers, pb.StreamContainersRequest(
            filter=pb.ContainerFilter(id="nosuch")))
        assert len(msgs) == 1 and not msgs[0].containers
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=a))
        assert pods(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY)) == [a]
        assert pods(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY)) == [b]

        e = rpc_error(cri.rt.CheckpointContainer, pb.CheckpointContainerRequest(
            container_id=cb, location="/tmp/x.tar"))
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED and "CRIU" in e.details()
        e = rpc_error(cri.rt.CheckpointContainer, pb.CheckpointContainerRequest(
            container_id="nosuch"))
        assert e.code() == grpc.StatusCode.NOT_FOUND
    finally:
        cri.remove_pod(a)
        cri.remove_pod(b)
