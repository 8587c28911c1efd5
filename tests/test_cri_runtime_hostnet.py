"""Pods in the host's namespaces (network, IPC, PID: NamespaceOption NODE) and pod port
mappings through CNI's portmap plugin (a server in the pod reached at a host port)."""

from __future__ import annotations

import os
import random
import socket
import time

import pytest

from support.cni_net import IPTABLES, _iptables_save, _rules_of, testnet, workdir  # noqa: F401
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _ns(cri, cid: str, kind: str) -> str:  # noqa: F811
    return cri.sh(cid, f"readlink /proc/self/ns/{kind}").strip()


def _host_ns(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def test_host_network_ipc_pid(cri):  # noqa: F811
    pb = cri.pb
    node = pb.NamespaceOption(network=pb.NODE, ipc=pb.NODE, pid=pb.NODE)
    sc = pb.LinuxSandboxSecurityContext(namespace_options=node)
    leases = cri.net.leases()
    sid, pconf = cri.run_pod("hostnet", hostname="",
                             linux=pb.LinuxPodSandboxConfig(security_context=sc))
    status, info = cri.pod_status(sid, verbose=True)
    assert status.state == pb.SANDBOX_READY
    assert status.network.ip == "" and info["netns"] == "" and info["ipcns"] == ""
    assert status.linux.namespaces.options.network == pb.NODE
    assert cri.net.leases() == leases, "no CNI for a host network pod"

    cid = cri.create(sid, pconf, "c", ["sleep", "1000"], linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(namespace_options=node)))
    for kind in ("net", "ipc", "uts", "pid"):
        assert _ns(cri, cid, kind) == _host_ns(kind), kind
    assert cri.sh(cid, "uname -n; cat /etc/hostname") == f"{os.uname().nodename}\n" * 2
    # the host's /dev/shm
    probe = f"/dev/shm/ctrd-cri-test-{os.getpid()}"
    with open(probe, "w") as f:
        f.write("host shm\n")
    try:
        assert cri.sh(cid, f"cat {probe}") == "host shm\n"
    finally:
        os.unlink(probe)
    # host PID: the container sees the host's processes, ours among them
    assert cri.sh(cid, f"cat /proc/{os.getpid()}/comm").strip() != ""
    cri.remove_pod(sid)
    assert cri.net.leases() == leases


def _get(host: str, port: int, path: str, timeout: float = 5.0) -> bytes:
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


def test_port_mapping_through_portmap(cri_factory, testnet):  # noqa: F811
    if not IPTABLES:
        pytest.skip("iptables not installed: portmap needs it")
    cri = cri_factory(plugins=[testnet.bridge_conf(),  # noqa: F811
                               {"type": "portmap", "capabilities": {"portMappings": True},
                                "snat": True}])
    pb = cri.pb
    host_port = random.randint(20000, 30000)
    sid, pconf = cri.run_pod("web", port_mappings=[pb.PortMapping(
        protocol=pb.TCP, container_port=8080, host_port=host_port)])
    ip = cri.pod_status(sid).network.ip
    cri.create(sid, pconf, "httpd", ["busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"])
    assert _get(ip, 8080, "/hostname") == b"web\n"
    assert _get(testnet.gateway, host_port, "/hostname") == b"web\n"
    assert _get("127.0.0.1", host_port, "/hostname") == b"web\n"
    assert _rules_of("nat", testnet.name), "portmap's rules while the pod runs"
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert _rules_of("nat", testnet.name) == [], "no rule of the pod left after Stop"
    assert not any(f"--dport {host_port}" in x for x in _iptables_save("nat"))
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
