"""Stats and lists under churn, as the kubelet keeps asking while pods come and go: every
stats and list call succeeds while all pods are removed 8 at a time, and while containers
are killed from outside (their processes and cgroups vanish before ctrd hears of it); a
container that went is answered without its cgroup figures, never with an error."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time

import pytest

from support.poll import wait_until
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.cri_stats import _run, cgroup_parent  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


class Asker:
    """A kubelet's relist and stats provider in a loop on their own thread; every error kept."""

    def __init__(self, cri) -> None:  # noqa: F811
        self.cri, self.errors, self.rounds = cri, [], 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run)

    def _run(self) -> None:
        pb, rt = self.cri.pb, self.cri.rt
        calls = (lambda: rt.ListPodSandbox(pb.ListPodSandboxRequest()),
                 lambda: rt.ListContainers(pb.ListContainersRequest()),
                 lambda: rt.ListContainerStats(pb.ListContainerStatsRequest()),
                 lambda: rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()))
        while not self._stop.is_set():
            for call in calls:
                try:
                    call()
                except Exception as e:  # noqa: BLE001 - what the kubelet would have seen
                    self.errors.append(e)
            self.rounds += 1

    def __enter__(self) -> "Asker":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def test_stats_and_lists_during_a_mass_teardown(cri, cgroup_parent):  # noqa: F811
    pb = cri.pb
    pods = [_run(cri, f"churn{i}", f"u-churn{i}", ["sleep", "600"], cgroup_parent)[0]
            for i in range(12)]

    def remove(sid: str) -> None:
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))

    with Asker(cri) as asker:
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            list(ex.map(remove, pods))
        rounds = asker.rounds
        while asker.rounds < rounds + 2:  # and a few rounds once all went
            time.sleep(0.01)
    assert not asker.errors, asker.errors[:3]
    assert asker.rounds >= 2
    assert not cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not cri.rt.ListContainerStats(pb.ListContainerStatsRequest()).stats


def test_containers_killed_from_outside_under_the_stats_calls(cri, cgroup_parent):  # noqa: F811
    pb = cri.pb
    made = [_run(cri, f"kill{i}", f"u-kill{i}", ["sleep", "600"], cgroup_parent)
            for i in range(4)]
    pids = []
    for _, cid in made:
        info = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid,
                                                                verbose=True)).info
        pids.append(json.loads(info["info"])["pid"])
    with Asker(cri) as asker:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the container's init: its cgroup empties and goes
        for _, cid in made:  # until ctrd heard of every exit, asking all along
            assert wait_until(lambda: cri.rt.ContainerStatus(pb.ContainerStatusRequest(
                container_id=cid)).status.state == pb.CONTAINER_EXITED)
        rounds = asker.rounds
        while asker.rounds < rounds + 3:
            time.sleep(0.01)
    assert not asker.errors, asker.errors[:3]
    stats = {s.attributes.id: s for s in
             cri.rt.ListContainerStats(pb.ListContainerStatsRequest()).stats}
    for _, cid in made:
        state = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
        assert state.state == pb.CONTAINER_EXITED and state.exit_code == 137
        assert cid in stats and stats[cid].writable_layer.HasField("used_bytes")
    assert len(cri.rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats) == 4
