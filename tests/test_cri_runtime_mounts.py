"""What a pod's containers see of the filesystem and of each other: host path binds (ro, rw,
propagation), the pod's /etc/hosts, resolv.conf, hostname, its /dev/shm, sysctls, and the
IPC/UTS/network namespaces the pod's containers share.
"""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.poll import wait_until

pytestmark = pytest.mark.integration


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def test_host_path_binds(cri, tmp_path):  # noqa: F811
    pb = cri.pb
    rw, ro, fresh = tmp_path / "rw", tmp_path / "ro", tmp_path / "new" / "dir"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("from the host\n")
    resolv = tmp_path / "my-resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    sid, pconf = cri.run_pod("binds")
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"], mounts=[
        pb.Mount(host_path=str(rw), container_path="/rw"),
        pb.Mount(host_path=str(ro), container_path="/ro", readonly=True),
        pb.Mount(host_path=str(fresh), container_path="/fresh"),
        # a container's own mount of a pod file wins over the pod's
        pb.Mount(host_path=str(resolv), container_path="/etc/resolv.conf", readonly=True)])
    cri.sh(cid, "echo from the container > /rw/out")
    assert (rw / "out").read_text() == "from the container\n"
    assert cri.sh(cid, "cat /ro/f") == "from the host\n"
    r = cri.exec(cid, ["touch", "/ro/x"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    assert fresh.is_dir(), "a missing host path is made as a directory (kubelet's contract)"
    assert cri.sh(cid, "cat /etc/resolv.conf") == "nameserver 192.0.2.53\n"
    status = cri.status(cid)
    assert [m.container_path for m in status.mounts] == ["/rw", "/ro", "/fresh",
                                                         "/etc/resolv.conf"]
    # a host file over a directory of the image: runc refuses, the error says so
    with pytest.raises(grpc.RpcError):
        cri.create(sid, pconf, "bad", ["true"], mounts=[
            pb.Mount(host_path=str(ro / "f"), container_path="/etc")])
    cri.remove_pod(sid)


def test_mount_propagation(cri, tmp_path):  # noqa: F811
    """rslave (HOST_TO_CONTAINER) sees mounts made on the host later; private does not;
    rslave of a source that is not shared or slave is refused."""
    pb = cri.pb
    src = tmp_path / "src"
    src.mkdir()
    late = src / "late"
    late.mkdir()
    mounted: list[str] = []
    try:
        _run("mount", "-t", "tmpfs", "ctrd-prop", str(src))
        mounted.append(str(src))
        (src / "late").mkdir()
        sid, pconf = cri.run_pod("prop")
        # a private mount point first: rslave is refused on it
        _run("mount", "--make-private", str(src))
        with pytest.raises(grpc.RpcError) as e:
            cri.create(sid, pconf, "refused", ["true"], mounts=[pb.Mount(
                host_path=str(src), container_path="/s",
                propagation=pb.PROPAGATION_HOST_TO_CONTAINER)])
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "shared or slave" in e.value.details()
        _run("mount", "--make-shared", str(src))
        slave = cri.create(sid, pconf, "slave", ["sleep", "1000"], mounts=[pb.Mount(
            host_path=str(src), container_path="/s",
            propagation=pb.PROPAGATION_HOST_TO_CONTAINER)])
        private = cri.create(sid, pconf, "private", ["sleep", "1000"], mounts=[pb.Mount(
            host_path=str(src), container_path="/s", propagation=pb.PROPAGATION_PRIVATE)])
        _run("mount", "-t", "tmpfs", "ctrd-late", str(src / "late"))
        mounted.append(str(src / "late"))
        (src / "late" / "hello").write_text("late mount\n")
        assert cri.sh(slave, "cat /s/late/hello") == "late mount\n"
        assert cri.exec(private, ["cat", "/s/late/hello"]).exit_code != 0
        cri.remove_pod(sid)
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", "-l", m], capture_output=True)


def test_pod_files_hostname_and_dns(cri):  # noqa: F811
    pb = cri.pb
    dns = pb.DNSConfig(servers=["192.0.2.1", "192.0.2.2"], searches=["ns.svc.example",
                                                                     "example"],
                       options=["ndots:5"])
    sid, pconf = cri.run_pod("files", hostname="web-0", dns_config=dns)
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"])
    assert cri.sh(cid, "cat /etc/resolv.conf") == (
        "search ns.svc.example example\nnameserver 192.0.2.1\nnameserver 192.0.2.2\n"
        "options ndots:5\n")
    assert cri.sh(cid, "cat /etc/hostname; uname -n; echo $HOSTNAME") == "web-0\n" * 3
    hosts = cri.sh(cid, "cat /etc/hosts")
    assert "localhost" in hosts
    mounts = cri.sh(cid, "cat /proc/self/mounts")
    for path in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/dev/shm"):
        assert f" {path} " in mounts, path
    # a pod without DNS config gets the host's resolv.conf
    sid2, pconf2 = cri.run_pod("plain")
    c2 = cri.create(sid2, pconf2, "c", ["sleep", "1000"])
    with open("/etc/resolv.conf") as f:
        assert cri.sh(c2, "cat /etc/resolv.conf") == f.read()
    cri.remove_pod(sid)
    cri.remove_pod(sid2)


def test_pod_without_hostname_gets_the_nodes(cri):  # noqa: F811
    """A pod config without hostname and with a name longer than a hostname may be (what
    conformance suites and controllers send): the node's hostname, as containerd."""
    node = os.uname().nodename
    name = "conformance-" + "x" * 90  # > 64 bytes: not a valid hostname
    sid, pconf = cri.run_pod(name, hostname="")
    try:
        cid = cri.create(sid, pconf, "c", ["sleep", "1000"])
        assert cri.sh(cid, "cat /etc/hostname; uname -n; echo $HOSTNAME") == f"{node}\n" * 3
        # its own UTS namespace all the same (setting it inside does not touch the host's)
        assert cri.sh(cid, "readlink /proc/self/ns/uts") != os.readlink("/proc/self/ns/uts")
    finally:
        cri.remove_pod(sid)


def _ns(cri, cid: str, kind: str) -> str:  # noqa: F811
    return cri.sh(cid, f"readlink /proc/self/ns/{kind}").strip()


def test_pod_shares_shm_ipc_uts_net(cri):  # noqa: F811
    sid, pconf = cri.run_pod("share")
    a = cri.create(sid, pconf, "a", ["sleep", "1000"])
    b = cri.create(sid, pconf, "b", ["sleep", "1000"])
    cri.sh(a, "echo from-a > /dev/shm/note")
    assert cri.sh(b, "cat /dev/shm/note") == "from-a\n"
    assert "tmpfs" in cri.sh(b, "grep ' /dev/shm ' /proc/self/mounts")
    for kind in ("ipc", "uts", "net"):
        assert _ns(cri, a, kind) == _ns(cri, b, kind), kind
        assert _ns(cri, a, kind) != os.readlink(f"/proc/self/ns/{kind}"), kind
    # PID: a namespace per container unless the pod's is asked for
    assert _ns(cri, a, "pid") != _ns(cri, b, "pid")
    assert cri.sh(a, "cat /proc/1/cmdline | tr '\\0' ' '").startswith("sleep")

    other, oconf = cri.run_pod("other")
    c = cri.create(other, oconf, "c", ["sleep", "1000"])
    assert cri.exec(c, ["cat", "/dev/shm/note"]).exit_code != 0, "/dev/shm is per pod"
    for kind in ("ipc", "uts", "net"):
        assert _ns(cri, c, kind) != _ns(cri, a, kind), kind
    cri.remove_pod(sid)
    cri.remove_pod(other)


def test_sysctls(cri):  # noqa: F811
    pb = cri.pb
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        host_port_start = f.read()
    sid, pconf = cri.run_pod("sysctl", linux=pb.LinuxPodSandboxConfig(sysctls={
        "net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"}))
    a = cri.create(sid, pconf, "a", ["sleep", "1000"])
    b = cri.create(sid, pconf, "b", ["sleep", "1000"])
    for cid in (a, b):
        assert cri.sh(cid, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start") == "80\n"
        assert cri.sh(cid, "cat /proc/sys/kernel/shm_rmid_forced") == "1\n"
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        assert f.read() == host_port_start, "the host's value is untouched"
    # a non-root user may bind port 80 in this pod
    web = cri.create(sid, pconf, "web", ["busybox", "nc", "-l", "-p", "80"], linux=pb.
                     LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                         run_as_user=pb.Int64Value(value=65534))))
    wait_until(lambda: ":80 " in cri.sh(a, "busybox netstat -ltn"), 20, interval=0.1)
    assert ":80 " in cri.sh(a, "busybox netstat -ltn")
    assert cri.status(web).state == pb.CONTAINER_RUNNING
    # a sysctl outside the pod's namespaces is refused by the runtime, naming it
    with pytest.raises(grpc.RpcError) as e:
        bad, bconf = cri.run_pod("badsysctl", linux=pb.LinuxPodSandboxConfig(sysctls={
            "vm.swappiness": "10"}))
        cri.create(bad, bconf, "c", ["true"])
    assert "vm.swappiness" in e.value.details()
    cri.remove_pod(sid)
