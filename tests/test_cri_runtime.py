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

from conftest import ctr
from taskutil import mounts_under, processes_under, reap
from test_cri_network import testnet, workdir  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

CNI_BIN = "/usr/lib/cni"


def _pb():
    from ctrd.api.cri.runtime.v1 import api_pb2, api_pb2_grpc

    return api_pb2, api_pb2_grpc


class CRI:
    """A CRI client on a ctrd started for the test, with the helpers the tests share.

    ``restart()`` kills ctrd with SIGKILL and starts it again on the same root, state and
    config (the fixture's teardown then works on the new daemon)."""

    def __init__(self, daemon, start_ctrd, config_text: str) -> None:
        from cri_client import _Deadlined

        pb, pb_grpc = _pb()
        self.pb = pb
        self.daemon = daemon
        self._start_ctrd = start_ctrd
        self.config_text = config_text
        self.channel = grpc.insecure_channel("unix:" + daemon.address)
        self.rt = _Deadlined(pb_grpc.RuntimeServiceStub(self.channel), 120.0)
        self.img = _Deadlined(pb_grpc.ImageServiceStub(self.channel), 120.0)

    def close(self) -> None:
        self.channel.close()

    def restart(self, before_start=None) -> None:
        """kill -9 ctrd; ``before_start()`` runs while it is down; start it again."""
        from cri_client import _Deadlined

        import signal

        self.close()
        os.kill(self.daemon.proc.pid, signal.SIGKILL)
        self.daemon.proc.wait()
        if before_start is not None:
            before_start()
        self.daemon = self._start_ctrd(config_text=self.config_text, name="ctrd")
        _, pb_grpc = _pb()
        self.channel = grpc.insecure_channel("unix:" + self.daemon.address)
        self.rt = _Deadlined(pb_grpc.RuntimeServiceStub(self.channel), 120.0)
        self.img = _Deadlined(pb_grpc.ImageServiceStub(self.channel), 120.0)
        try:
            self.rt.Version(self.pb.VersionRequest())
        except grpc.RpcError as e:
            raise AssertionError(f"CRI not served after the restart: {e.details()}\n"
                                 + self.daemon.read_log()[-5000:]) from None

    # --- helpers --------------------------------------------------------------------------

    def run_pod(self, name: str = "pod1", uid: str = "", handler: str = "", **kw):
        """RunPodSandbox; (sandbox id, its config)."""
        config = pod_config(self.pb, name, uid or f"uid-{name}", **kw)
        sid = self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(
            config=config, runtime_handler=handler)).pod_sandbox_id
        return sid, config

    def create(self, sid: str, pconf, name: str, command: list[str], start: bool = True,
               **kw) -> str:
        """CreateContainer (the test image unless ``image=``), then StartContainer."""
        pb = self.pb
        kw.setdefault("image", pb.ImageSpec(image=self.image))
        cconf = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                                   command=command, **kw)
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=cconf, sandbox_config=pconf)).container_id
        if start:
            self.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        return cid

    def exec(self, cid: str, cmd: list[str], timeout: int = 20):
        return self.rt.ExecSync(self.pb.ExecSyncRequest(container_id=cid, cmd=cmd,
                                                        timeout=timeout))

    def sh(self, cid: str, script: str) -> str:
        """stdout of ``sh -c script`` in the container; fails the test on a non-zero exit."""
        r = self.exec(cid, ["sh", "-c", script])
        assert r.exit_code == 0, (script, r.exit_code, r.stdout, r.stderr)
        return r.stdout.decode()

    def status(self, cid: str, verbose: bool = False):
        r = self.rt.ContainerStatus(self.pb.ContainerStatusRequest(container_id=cid,
                                                                  verbose=verbose))
        return (r.status, json.loads(r.info["info"])) if verbose else r.status

    def pod_status(self, sid: str, verbose: bool = False):
        r = self.rt.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=sid,
                                                                    verbose=verbose))
        return (r.status, json.loads(r.info["info"])) if verbose else r.status

    def wait_exited(self, cid: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            cs = self.status(cid)
            if cs.state == self.pb.CONTAINER_EXITED or time.monotonic() > deadline:
                return cs
            time.sleep(0.05)

    def pid(self, cid: str) -> int:
        """The container's init pid (ContainerStatus verbose info)."""
        return self.status(cid, verbose=True)[1]["pid"]

    def remove_pod(self, sid: str) -> None:
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sid))
        self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sid))


def cri_config(testnet, extra: str = "") -> str:  # noqa: F811
    """ctrd's config for a CRI test: CNI from ``testnet``, pins under the state dir."""
    return f"""version = 2
[plugins."io.containerd.grpc.v1.cri"]
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{testnet.bin_dir}:{CNI_BIN}"
    conf_dir = "{testnet.conf_dir}"
{extra}"""


@pytest.fixture
def cri_factory(start_ctrd, tmp_root, registry, testnet):  # noqa: F811
    """``cri_factory(extra_config="", plugins=None)``: ctrd with the CRI plugin on
    ``testnet`` (a bridge network unless ``plugins`` are given), the busybox test image
    pulled into k8s.io. Teardown: every pod stopped and removed through the API, then the
    test fails if a process, mount, CNI lease or pod state dir of ctrd's was left."""
    if not os.path.exists(os.path.join(CNI_BIN, "bridge")):
        pytest.skip("CNI plugins are not installed (apt-get install containernetworking-plugins)")
    made: list[CRI] = []

    def make(extra_config: str = "", plugins: list | None = None) -> CRI:
        testnet.write(plugins if plugins is not None else [testnet.bridge_conf(ip_masq=False)])
        config = cri_config(testnet, extra_config)
        d = start_ctrd(config_text=config)
        r = ctr(d.address, "-n", "k8s.io", "images", "pull", "--plain-http",
                registry.ref("busybox"))
        assert r.returncode == 0, r.stderr
        c = CRI(d, start_ctrd, config)
        c.image = registry.ref("busybox")
        c.logdir = tmp_root / "pods"
        c.net = testnet
        made.append(c)
        return c

    try:
        yield make
    finally:
        teardown(made, tmp_root)


def teardown(made: list, tmp_root, extra=lambda c: []) -> None:
    """Remove every pod of the CRI clients ``made``, stop their daemons, reap what is left
    under ``tmp_root``; then fail on anything still there (containers, processes, mounts, CNI
    leases, pod dirs, and ``extra(c)``'s findings)."""
    leftovers: list[str] = []
    for c in made:
        pb = c.pb
        try:
            for s in c.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
                c.remove_pod(s.id)
            leftovers += [f"container {x.id}" for x in
                          c.rt.ListContainers(pb.ListContainersRequest()).containers]
            leftovers += extra(c)
        finally:
            c.close()
            d = c.daemon
            leftovers += [f"process {p}" for p in processes_under(tmp_root)
                          if p != d.proc.pid]
            leftovers += [f"mount {m}" for m in mounts_under(tmp_root)]
            leftovers += [f"lease {x}" for x in c.net.leases()]
            sandboxes = d.state / "io.containerd.grpc.v1.cri" / "sandboxes"
            if sandboxes.exists():
                leftovers += [f"pod dir {x.name}" for x in sandboxes.iterdir()]
            d.stop()
    reap(tmp_root)
    assert not leftovers, leftovers


@pytest.fixture
def cri(cri_factory):
    return cri_factory()


def pod_config(pb, name: str = "pod1", uid: str = "uid-1", **kw):
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
        hostname=kw.pop("hostname", name), log_directory=kw.pop("log_directory", ""),
        labels=kw.pop("labels", {"app": name}), annotations=kw.pop("annotations", {"note": "x"}),
        **kw)


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
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cs = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
        if cs.state == pb.CONTAINER_EXITED:
            break
        time.sleep(0.05)
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
