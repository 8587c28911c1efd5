"""CRI pods and containers survive a kill -9 of ctrd:
after the restart every sandbox is listed READY with its IP and its namespaces, running
containers are RUNNING and controllable, containers that exited while ctrd was down are EXITED
with their real exit code, and stop/remove release everything.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.poll import wait_until

pytestmark = pytest.mark.integration


def _shim_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _get(host: str, port: int, path: str, timeout: float = 5.0) -> bytes:
    """The body of an HTTP/1.0 GET (busybox httpd in a pod); retried while it comes up."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data.split(b"\r\n\r\n", 1)[-1]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_kill9_restart_pods_and_containers(cri, tmp_path):  # noqa: F811
    pb = cri.pb
    gate = tmp_path / "gate"
    gate.mkdir()
    sid_a, pa = cri.run_pod("pa")
    sid_b, pb_conf = cri.run_pod("pb")
    ip_a = cri.pod_status(sid_a).network.ip
    ip_b = cri.pod_status(sid_b).network.ip
    netns_a = cri.pod_status(sid_a, verbose=True)[1]["netns"]
    assert ip_a and ip_b and ip_a != ip_b

    web = cri.create(sid_a, pa, "web", ["busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"])
    sleeper = cri.create(sid_b, pb_conf, "sleeper", ["sleep", "1000"])
    killed = cri.create(sid_b, pb_conf, "killed", ["sleep", "1000"])
    # exits 3 when the test opens the gate (while ctrd is down)
    gated = cri.create(sid_b, pb_conf, "gated",
                       ["sh", "-c", "while [ ! -e /gate/open ]; do sleep 0.1; done; exit 3"],
                       mounts=[pb.Mount(host_path=str(gate), container_path="/gate")])
    # its shim is killed too: the task manager finds the shim gone at start (a pod of its
    # own: the containers of a pod share one shim)
    sid_c, pc = cri.run_pod("pc")
    shimless = cri.create(sid_c, pc, "shimless", ["sleep", "1000"])
    created = cri.create(sid_a, pa, "later", ["sleep", "1000"], start=False)
    assert _get(ip_a, 8080, "/hostname") == b"pa\n"
    pids = {c: cri.pid(c) for c in (killed, shimless)}
    shim = _shim_of(pids[shimless])

    def while_down():
        os.kill(pids[killed], signal.SIGKILL)
        (gate / "open").touch()
        os.kill(shim, signal.SIGKILL)
        os.kill(pids[shimless], signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{pids[shimless]}"), 20)

    cri.restart(while_down)

    pods = {s.id: s for s in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items}
    assert set(pods) == {sid_a, sid_b, sid_c}
    assert all(s.state == pb.SANDBOX_READY for s in pods.values())
    assert cri.pod_status(sid_a).network.ip == ip_a
    assert cri.pod_status(sid_b).network.ip == ip_b
    assert os.path.exists(netns_a)
    assert _get(ip_a, 8080, "/hostname") == b"pa\n", "the pod's network survived"

    states = {c.id: c.state for c in cri.rt.ListContainers(pb.ListContainersRequest()).containers}
    assert states[web] == pb.CONTAINER_RUNNING and states[sleeper] == pb.CONTAINER_RUNNING
    assert states[created] == pb.CONTAINER_CREATED
    for cid, code in ((killed, 137), (gated, 3), (shimless, 137)):
        cs = cri.wait_exited(cid)
        assert (cs.state, cs.exit_code, cs.reason) == (pb.CONTAINER_EXITED, code, "Error"), \
            (cid, cs)
        assert cs.finished_at >= cs.started_at > 0

    # running containers stay controllable
    assert cri.exec(sleeper, ["uname", "-n"]).stdout == b"pb\n"
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=created))
    assert cri.exec(created, ["true"]).exit_code == 0
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=sleeper, timeout=5))
    cs = cri.status(sleeper)
    assert cs.state == pb.CONTAINER_EXITED and cs.exit_code in (137, 143)
    cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=killed))
    cri.remove_pod(sid_b)
    cri.remove_pod(sid_c)
    assert cri.net.leases() == [ip_a]

    # and once more: a second restart finds the same
    cri.restart()
    assert cri.status(web).state == pb.CONTAINER_RUNNING
    assert cri.pod_status(sid_a).network.ip == ip_a
    assert [s.id for s in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items] == [sid_a]
    cri.remove_pod(sid_a)
    assert not os.path.exists(netns_a)


def test_restart_edge_cases(cri):  # noqa: F811
    """ctrd died between a task's start and the status update (the task runs, the record
    says CREATED); a pod whose namespace pin disappeared while ctrd was down (a reboot, a
    hand cleanup); a crash in the middle of a RunPodSandbox (a state dir with its /dev/shm
    mount and a status dir, no record)."""
    import subprocess

    from conftest import ctr

    pb = cri.pb
    sid, pconf = cri.run_pod("edge")
    behind = cri.create(sid, pconf, "behind", ["sleep", "1000"], start=False)
    r = ctr(cri.daemon.address, "-n", "k8s.io", "tasks", "start", "-d", "--null-io", behind)
    assert r.returncode == 0, r.stderr
    sid2, _ = cri.run_pod("pinless")
    ip2 = cri.pod_status(sid2).network.ip
    netns2 = cri.pod_status(sid2, verbose=True)[1]["netns"]
    assert sorted(cri.net.leases()) == sorted([cri.pod_status(sid).network.ip, ip2])
    state = cri.daemon.state / "io.containerd.grpc.v1.cri"
    root = cri.daemon.root / "io.containerd.grpc.v1.cri"
    orphan = state / "sandboxes" / ("0" * 64)
    orphan_status = root / "containers" / ("1" * 64)

    def while_down():
        subprocess.run(["umount", netns2], check=True)
        os.unlink(netns2)
        (orphan / "shm").mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "shm", str(orphan / "shm")], check=True)
        orphan_status.mkdir(parents=True)
        (orphan_status / "status").write_text("{}")

    cri.restart(while_down)
    cs, info = cri.status(behind, verbose=True)
    assert cs.state == pb.CONTAINER_RUNNING and cs.started_at > 0 and info["pid"] > 0
    assert cri.exec(behind, ["uname", "-n"]).stdout == b"edge\n"
    assert cri.pod_status(sid).state == pb.SANDBOX_READY
    st2 = cri.pod_status(sid2)
    assert st2.state == pb.SANDBOX_NOTREADY and st2.network.ip == ""
    assert not orphan.exists() and not orphan_status.exists()
    # the gone pod's network is still released by Stop
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid2))
    assert ip2 not in cri.net.leases()
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid2))
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=behind, timeout=0))
    assert cri.status(behind).exit_code == 137
    cri.remove_pod(sid)
