"""Pods with a process of their own: a pause container of ``sandbox_image``
(containerd 1.6's sandbox), and -- without a sandbox image -- ctrd's minimal pod init for pods
that ask for a pod-level PID namespace.

Real ctrd, real CNI (bridge), real runc through ctrd's shim, the session registry. The pause
image is made offline: the busybox test layer with a sleep loop as its entrypoint, pushed to
the registry as ``test/pause:latest`` and pulled by ctrd on demand. Every test ends with
nothing of ctrd's left: no process, mount, CNI lease, pod dir, task, container record,
snapshot or lease in ``k8s.io``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import grpc
import pytest

from conftest import ctr
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri_pause import (_k8s_objects, broken_pause_ref, pause_factory,  # noqa: F401
                               pause_ref)
from support.poll import wait_until

pytestmark = pytest.mark.integration


def _pb():
    from ctrd.api.cri.runtime.v1 import api_pb2

    return api_pb2


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _ppid_or_0(pid: int) -> int:
    try:
        return _ppid(pid)
    except OSError:
        return 0


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def _ns(cri, cid: str, kind: str) -> str:
    return cri.sh(cid, f"readlink /proc/self/ns/{kind}").strip()


def _wait_state(cri, sid: str, state, timeout: float = 20.0):
    """The pod's status once in ``state``, or when ``timeout`` passed (the caller asserts)."""
    wait_until(lambda: cri.pod_status(sid).state == state, timeout)
    return cri.pod_status(sid)


def _zombies_in_pidns(pidns: str) -> list[str]:
    """Zombie processes of the PID namespace ``pidns`` (a readlink of ns/pid), from the host."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/ns/pid") != pidns:
                continue
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            found.append(stat[:80])
    return found


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- a pause container of sandbox_image ----------------------------------------------------

def test_pause_pod_lifecycle_pulled_on_demand(pause_factory, pause_ref):
    cri = pause_factory(sandbox_image=pause_ref)
    pb = cri.pb
    # not there before the first pod: RunPodSandbox pulls it through the CRI pull path
    assert not cri.img.ImageStatus(pb.ImageStatusRequest(
        image=pb.ImageSpec(image=pause_ref))).image.id
    sid, pconf = cri.run_pod("web", hostname="web-0",
                             linux=pb.LinuxPodSandboxConfig(
                                 sysctls={"net.ipv4.ip_unprivileged_port_start": "77"}))
    img = cri.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=pause_ref))).image
    assert img.id and pause_ref in img.repo_tags

    status, info = cri.pod_status(sid, verbose=True)
    assert status.state == pb.SANDBOX_READY
    assert status.network.ip.startswith(cri.net.prefix + "."), status.network.ip
    pid = info["pid"]
    assert pid > 0 and info["image"] == pause_ref and info["pause"] == "image"
    assert info["snapshotKey"] == sid and info["imageId"] == img.id
    assert wait_until(lambda: "while :; do sleep 3600" in _cmdline(pid)), _cmdline(pid)
    # the pause: read-only rootfs, its own IPC/UTS/PID namespaces, the pinned netns,
    # oom_score_adj -998 or clamped to ctrd's own, no_new_privs, the pod's sysctl
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    for kind in ("ipc", "uts", "pid"):
        assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
    with open(f"/proc/{pid}/oom_score_adj") as f:
        adj = int(f.read())
    with open(f"/proc/{cri.daemon.proc.pid}/oom_score_adj") as f:
        assert adj in (-998, int(f.read()))
    with open(f"/proc/{pid}/status") as f:
        assert "NoNewPrivs:\t1" in f.read()
    r = ctr(cri.daemon.address, "containers", "info", sid, namespace="k8s.io")
    spec = json.loads(r.stdout)["Spec"]
    assert spec["root"]["readonly"] is True
    assert spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == sid
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "77"}

    a = cri.create(sid, pconf, "a", ["sleep", "1000"])
    b = cri.create(sid, pconf, "b", ["sh", "-c", "exec sleep 1001"])
    for c in (a, b):
        # IPC/UTS/PID of the pause (by /proc/<pid>/ns), the pod's netns by its pin
        for kind in ("ipc", "uts", "pid", "net"):
            assert _ns(cri, c, kind) == os.readlink(f"/proc/{pid}/ns/{kind}"), (c, kind)
        assert cri.sh(c, "uname -n; cat /etc/hostname") == "web-0\nweb-0\n"
        assert cri.sh(c, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start") == "77\n"
    # one PID namespace: each sees the other and the pause (PID 1)
    ps = cri.sh(a, "ps -o pid,args")
    assert "sleep 1001" in ps and "sleep 1000" in ps and "while :" in ps, ps
    assert "trap" in cri.sh(b, "cat /proc/1/cmdline")
    # the pause and the pod's containers share one shim
    assert _ppid(pid) == _ppid(cri.pid(a)) == _ppid(cri.pid(b))

    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    status, info = cri.pod_status(sid, verbose=True)
    assert status.state == pb.SANDBOX_NOTREADY and info["pid"] == 0
    assert not os.path.exists(f"/proc/{pid}") or _cmdline(pid) == ""
    assert not os.path.exists(info["netns"]) and cri.net.leases() == []
    r = ctr(cri.daemon.address, "tasks", "ls", "-q", namespace="k8s.io")
    assert r.stdout.split() == []
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert _k8s_objects(cri.daemon.address) == []


def test_pause_killed_from_host_pod_notready(pause_factory, pause_ref):
    cri = pause_factory(sandbox_image=pause_ref)
    pb = cri.pb
    sid, pconf = cri.run_pod("victim")
    c = cri.create(sid, pconf, "c", ["sleep", "1000"], linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))))
    pid = cri.pod_status(sid, verbose=True)[1]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert _wait_state(cri, sid, pb.SANDBOX_NOTREADY).state == pb.SANDBOX_NOTREADY
    assert cri.pod_status(sid, verbose=True)[1]["pid"] == 0
    # the container (its own PID namespace) still runs; nothing new starts in the pod
    assert cri.status(c).state == pb.CONTAINER_RUNNING
    with pytest.raises(grpc.RpcError) as e:
        cri.create(sid, pconf, "late", ["sleep", "1"])
    assert e.value.code() == grpc.StatusCode.UNKNOWN  # containerd 2.3.4's: a plain error
    cri.remove_pod(sid)
    assert _k8s_objects(cri.daemon.address) == []


def test_pause_pod_survives_restart(pause_factory, pause_ref):
    cri = pause_factory(sandbox_image=pause_ref)
    pb = cri.pb
    sid, pconf = cri.run_pod("durable")
    c = cri.create(sid, pconf, "c", ["sleep", "1000"])
    status, info = cri.pod_status(sid, verbose=True)
    pid, ip = info["pid"], status.network.ip
    cri.restart()
    status, info = cri.pod_status(sid, verbose=True)
    assert status.state == pb.SANDBOX_READY and status.network.ip == ip
    assert info["pid"] == pid
    assert cri.status(c).state == pb.CONTAINER_RUNNING
    assert cri.sh(c, "echo ok") == "ok\n"
    c2 = cri.create(sid, pconf, "c2", ["sleep", "1000"])  # joins the pause's namespaces
    assert _ns(cri, c2, "ipc") == os.readlink(f"/proc/{pid}/ns/ipc")
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=c2, timeout=0))
    # the reloaded pause is watched again: its death is seen
    os.kill(pid, signal.SIGKILL)
    assert _wait_state(cri, sid, pb.SANDBOX_NOTREADY).state == pb.SANDBOX_NOTREADY
    cri.remove_pod(sid)
    assert _k8s_objects(cri.daemon.address) == []


def test_sandbox_image_pull_failure_names_image(pause_factory, registry):
    missing = f"{registry.address}/test/nosuch-pause:1"
    cri = pause_factory(sandbox_image=missing)
    pb = cri.pb
    with pytest.raises(grpc.RpcError) as e:
        cri.run_pod("nopause")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
    assert "failed to get sandbox image" in e.value.details()
    assert missing in e.value.details()
    assert cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert _k8s_objects(cri.daemon.address) == []
    # the name is free again for a retry
    with pytest.raises(grpc.RpcError) as e:
        cri.run_pod("nopause")
    assert "reserved" not in e.value.details()


def test_pause_pods_concurrently_one_pull(pause_factory, pause_ref):
    cri = pause_factory(sandbox_image=pause_ref)
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            results[i] = cri.run_pod(f"conc{i}")[0]
        except grpc.RpcError as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(v, str) for v in results.values()), results
    pids = {cri.pod_status(s, verbose=True)[1]["pid"] for s in results.values()}
    assert len(pids) == 4 and 0 not in pids
    images = cri.img.ListImages(cri.pb.ListImagesRequest()).images
    assert [i for i in images if pause_ref in i.repo_tags]


def test_pause_that_cannot_start_leaves_nothing(pause_factory, broken_pause_ref):
    cri = pause_factory(sandbox_image=broken_pause_ref)
    with pytest.raises(grpc.RpcError) as e:
        cri.run_pod("broken")
    assert "/no/such" in e.value.details(), e.value.details()
    assert cri.rt.ListPodSandbox(cri.pb.ListPodSandboxRequest()).items == []
    assert _k8s_objects(cri.daemon.address) == []
    assert cri.net.leases() == []


# --- no sandbox image: ctrd's pod init for a shared PID namespace ---------------------------

def _shared_pid_pod(cri, name: str):
    pb = cri.pb
    return cri.run_pod(name, linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.POD))))


def _pod_pid_container(cri, sid, pconf, name: str, command: list[str]) -> str:
    pb = cri.pb
    return cri.create(sid, pconf, name, command, linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.POD))))


def test_pod_init_shares_pid_and_reaps_orphans(pause_factory):
    cri = pause_factory()
    pb = cri.pb
    sid, pconf = _shared_pid_pod(cri, "shared")
    status, info = cri.pod_status(sid, verbose=True)
    assert status.state == pb.SANDBOX_READY and status.network.ip
    pid = info["pid"]
    assert info["pause"] == "init" and info["image"] == "" and pid > 0
    # runc start returns once it signalled runc init, which then execs the pod init
    assert wait_until(lambda: _cmdline(pid).startswith("/bin/busybox sh -c trap")), \
        _cmdline(pid)
    a = _pod_pid_container(cri, sid, pconf, "a", ["sleep", "1000"])
    b = _pod_pid_container(cri, sid, pconf, "b", ["sh", "-c", "exec sleep 1001"])
    pidns = os.readlink(f"/proc/{pid}/ns/pid")
    assert pidns != os.readlink("/proc/self/ns/pid")
    for c in (a, b):
        assert _ns(cri, c, "pid") == pidns
        # the pinned IPC/UTS/net namespaces, joined by the init too
        for kind in ("ipc", "uts", "net"):
            assert _ns(cri, c, kind) == os.readlink(f"/proc/{pid}/ns/{kind}"), kind
    ps = cri.sh(a, "ps -o pid,args")
    assert "sleep 1001" in ps and "sleep 1000" in ps, ps
    assert cri.sh(a, "cat /proc/1/cmdline | tr '\\0' ' '").startswith("/bin/busybox sh")
    # a container that double-forks: its orphans are reparented to the pod init, which
    # reaps them when they exit (they wait for a file the test creates)
    cri.sh(b, "for i in 1 2 3 4 5; do (sh -c 'while [ ! -e /tmp/orphans-go ]; do sleep 0.1; "
              "done' >/dev/null 2>&1 &); done")

    def orphans() -> list[int]:
        found = []
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                if _ppid(int(p)) == pid and "orphans-go" in _cmdline(int(p)):
                    found.append(int(p))
            except OSError:  # gone meanwhile
                pass
        return found

    assert wait_until(lambda: len(orphans()) == 5), \
        f"the 5 orphans were not reparented to the pod init: {orphans()}"
    kids = orphans()  # alive until the file appears
    cri.sh(b, "touch /tmp/orphans-go")
    # reaped: a zombie would keep its /proc entry until its parent waits for it
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{k}") for k in kids)), \
        [(k, _zombies_in_pidns(pidns)) for k in kids if os.path.exists(f"/proc/{k}")]
    assert _zombies_in_pidns(pidns) == []
    # a container of the same pod asking for its own PID namespace still gets one
    c = cri.create(sid, pconf, "own", ["sleep", "1000"], linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))))
    assert _ns(cri, c, "pid") != pidns
    kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid_or_0(int(p)) == pid]
    print(f"pod init: sh {_rss_kib(pid)} KiB RSS, its children "
          f"{[(_cmdline(k)[:30], _rss_kib(k)) for k in kids]}")
    # killing the init from the host: NOTREADY, the shared PID namespace's processes die
    os.kill(pid, signal.SIGKILL)
    assert _wait_state(cri, sid, pb.SANDBOX_NOTREADY).state == pb.SANDBOX_NOTREADY
    assert cri.wait_exited(a).state == pb.CONTAINER_EXITED
    cri.remove_pod(sid)
    assert _k8s_objects(cri.daemon.address) == []


def test_pod_init_restart_and_stop(pause_factory):
    cri = pause_factory()
    pb = cri.pb
    sid, pconf = _shared_pid_pod(cri, "keep")
    a = _pod_pid_container(cri, sid, pconf, "a", ["sleep", "1000"])
    pid = cri.pod_status(sid, verbose=True)[1]["pid"]
    cri.restart()
    status, info = cri.pod_status(sid, verbose=True)
    assert status.state == pb.SANDBOX_READY and info["pid"] == pid
    b = _pod_pid_container(cri, sid, pconf, "b", ["sleep", "1001"])
    assert "sleep 1000" in cri.sh(b, "ps -o args")
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert cri.status(a).state == pb.CONTAINER_EXITED
    assert cri.pod_status(sid).state == pb.SANDBOX_NOTREADY
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert _k8s_objects(cri.daemon.address) == []


def test_pod_init_without_static_busybox(pause_factory, tmp_path):
    dynamic = tmp_path / "busybox"
    dynamic.symlink_to("/bin/sh")  # dynamically linked: unusable in an empty rootfs
    cri = pause_factory(env={"CTRD_POD_INIT_BUSYBOX": f"{tmp_path}/nowhere:{dynamic}"})
    with pytest.raises(grpc.RpcError) as e:
        _shared_pid_pod(cri, "nobusybox")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "busybox" in e.value.details() and "sandbox_image" in e.value.details()
    assert cri.rt.ListPodSandbox(cri.pb.ListPodSandboxRequest()).items == []
    # pods that do not share PIDs need no init
    sid, _ = cri.run_pod("plain")
    assert cri.pod_status(sid, verbose=True)[1]["pause"] == "none"


# --- the specs, without a daemon -------------------------------------------------------------

def _sandbox_config(**kw):
    pb = _pb()
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="p", namespace="ns", uid="u"),
        hostname="p-host", log_directory="/var/log/pods/x", **kw)


def _facts(**kw):
    from ctrd.cri.spec import SandboxFacts

    facts = dict(id="sid", netns_path="/run/netns/cni-1", shm_path="/s/shm",
                 resolv_conf_path="/s/resolv.conf")
    return SandboxFacts(**{**facts, **kw})


def test_sandbox_spec_pause():
    from ctrd.cri.config import CRIConfig
    from ctrd.cri.spec import HostFacts, sandbox_spec

    pb = _pb()
    host = HostFacts(oom_score_adj=-500, can_lower_oom=False, hostname="node")
    config = _sandbox_config(linux=pb.LinuxPodSandboxConfig(
        cgroup_parent="/kubepods/pod1", sysctls={"kernel.msgmax": "1024"}))
    image = {"config": {"Entrypoint": ["/pause"], "Cmd": ["-v"], "Env": ["A=1"],
                        "WorkingDir": "/w"}}
    spec = sandbox_spec("sid", config, image, _facts(), None, CRIConfig(), host=host)
    assert spec["process"]["args"] == ["/pause", "-v"]
    assert "A=1" in spec["process"]["env"] and spec["process"]["cwd"] == "/w"
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["hostname"] == "p-host"
    nss = {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}
    assert nss == {"pid": None, "ipc": None, "uts": None, "mount": None,
                   "network": "/run/netns/cni-1"}
    assert spec["process"]["oomScoreAdj"] == -500  # clamped: CAP_SYS_RESOURCE missing
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["linux"]["sysctl"] == {"kernel.msgmax": "1024"}
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod1/sid"
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}
    assert "seccomp" not in spec["linux"]  # as containerd 1.6: none unless the pod names one
    rd = _sandbox_config(linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(seccomp=pb.SecurityProfile(
            profile_type=pb.SecurityProfile.RuntimeDefault))))
    spec_rd = sandbox_spec("sid", rd, image, _facts(), None, CRIConfig(), host=host)
    assert spec_rd["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/dev/shm"]["source"] == "/s/shm" and "ro" in mounts["/dev/shm"]["options"]
    assert mounts["/etc/resolv.conf"]["source"] == "/s/resolv.conf"
    assert "/run" not in mounts
    ann = spec["annotations"]
    assert ann["io.kubernetes.cri.container-type"] == "sandbox"
    assert ann["io.kubernetes.cri.sandbox-id"] == "sid"
    assert ann["io.kubernetes.cri.sandbox-log-directory"] == "/var/log/pods/x"
    # with CAP_SYS_RESOURCE the pause gets containerd's -998
    spec = sandbox_spec("sid", config, image, _facts(), None, CRIConfig(),
                        host=HostFacts(oom_score_adj=0, can_lower_oom=True))
    assert spec["process"]["oomScoreAdj"] == -998


def test_sandbox_spec_host_namespaces_and_unconfined():
    from ctrd.cri.spec import HostFacts, sandbox_spec

    pb = _pb()
    config = _sandbox_config(linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE, ipc=pb.NODE, pid=pb.NODE),
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined))))
    spec = sandbox_spec("sid", config, {"config": {"Cmd": ["/pause"]}},
                        _facts(netns_path=None), None, host=HostFacts())
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["mount"]
    assert "hostname" not in spec and "seccomp" not in spec["linux"]
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/dev/shm"]["source"] == "/dev/shm"


def test_sandbox_spec_hostile_image():
    from ctrd.errdefs import InvalidArgument
    from ctrd.cri.spec import HostFacts, sandbox_spec

    with pytest.raises(InvalidArgument, match="entrypoint and cmd"):
        sandbox_spec("sid", _sandbox_config(), {"config": {}}, _facts(), None,
                     host=HostFacts())
    with pytest.raises(InvalidArgument, match="working directory"):
        sandbox_spec("sid", _sandbox_config(), {"config": {"Cmd": ["x"], "WorkingDir": "w"}},
                     _facts(), None, host=HostFacts())


def test_pod_init_spec_and_binary(tmp_path):
    from ctrd.cri.spec import (POD_INIT_PATH, HostFacts, find_pod_init_binary, is_static_elf,
                               sandbox_spec)

    spec = sandbox_spec("sid", _sandbox_config(), None,
                        _facts(ipcns_path="/pins/ipc", utsns_path="/pins/uts"), None,
                        pod_init="/bin/busybox", host=HostFacts())
    assert spec["process"]["args"][:3] == [POD_INIT_PATH, "sh", "-c"]
    assert spec["process"]["user"] == {"uid": 65535, "gid": 65535}
    assert spec["process"]["capabilities"]["bounding"] == []
    nss = {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}
    assert nss == {"pid": None, "ipc": "/pins/ipc", "uts": "/pins/uts", "mount": None,
                   "network": "/run/netns/cni-1"}
    assert "hostname" not in spec  # set on the pinned UTS namespace already
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert set(mounts) == {"/proc", "/dev", POD_INIT_PATH}
    assert mounts[POD_INIT_PATH]["source"] == "/bin/busybox"
    assert "ro" in mounts[POD_INIT_PATH]["options"]
    # only a static ELF will do
    assert not is_static_elf("/bin/sh")
    (tmp_path / "junk").write_bytes(b"\x7fELF" + b"\xff" * 60)
    assert not is_static_elf(str(tmp_path / "junk"))
    assert find_pod_init_binary([str(tmp_path / "none"), "/bin/sh"]) is None
    if is_static_elf("/bin/busybox"):
        assert find_pod_init_binary() == os.path.realpath("/bin/busybox")



def test_sandbox_spec_user(tmp_path):
    from ctrd.cri.spec import HostFacts, sandbox_spec, user_needs_rootfs
    from ctrd.errdefs import NotFound

    pb = _pb()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\npause:x:65535:65534::/:\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:pause\n")
    image = {"config": {"Cmd": ["/pause"], "User": "pause"}}
    spec = sandbox_spec("sid", _sandbox_config(), image, _facts(), str(tmp_path),
                        host=HostFacts())
    assert spec["process"]["user"] == {"uid": 65535, "gid": 65534}
    # the pod's run_as_user wins; supplemental groups added
    config = _sandbox_config(linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            run_as_user=pb.Int64Value(value=7), run_as_group=pb.Int64Value(value=8),
            supplemental_groups=[9])))
    spec = sandbox_spec("sid", config, image, _facts(), None, host=HostFacts())
    assert spec["process"]["user"] == {"uid": 7, "gid": 8, "additionalGids": [9]}
    assert not user_needs_rootfs("") and not user_needs_rootfs("7:8")
    assert user_needs_rootfs("pause") and user_needs_rootfs("7")
    with pytest.raises(NotFound):
        sandbox_spec("sid", _sandbox_config(), {"config": {"Cmd": ["x"], "User": "nosuch"}},
                     _facts(), str(tmp_path), host=HostFacts())
