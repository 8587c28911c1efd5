"""Pod namespaces (ctrd.cri.netns) and the CNI client (ctrd.cri.cni) with the real plugins of
Debian's containernetworking-plugins (/usr/lib/cni): bridge + host-local + portmap +
loopback, and hand-written hostile plugins.

Every test works in its own temp dir, on its own bridge (a name unique to the test), its own
10.x/24 (checked against the routing table), its own network name (so its iptables rules are
recognisable by their comments); the fixtures remove pins, bridge, iptables rules and chains,
IPAM and cache dirs whether the test passed or not.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import struct
import subprocess
import threading
import time

import pytest

from ctrd.cri import cni, netns
from ctrd.errdefs import AlreadyExists, DeadlineExceeded, InvalidArgument, NotFound
from ctrd.snapshots import mount as _mount
from support.cni_net import (CNI_BIN, HAVE_PLUGINS, IP, IPTABLES, PLUGINS, PodNet,  # noqa: F401
                              _iptables_save, _rules_of, _seq, testnet, workdir)
from support.poll import wait_until

pytestmark = pytest.mark.integration

needs_plugins = pytest.mark.skipif(not HAVE_PLUGINS,
                                   reason=f"CNI plugins {PLUGINS} not in {CNI_BIN}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and bridges need root")


# --- helpers ---------------------------------------------------------------------------

def _flags(ifname: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", ifname.encode(), 0)
        return struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, req))[1]


def _ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _serve_once_in(netns_path: str, port: int, payload: bytes) -> tuple[socket.socket, threading.Thread]:
    """A TCP server born in the netns (its socket belongs there) answering ``payload``."""
    srv = netns.run_in_ns(netns_path, socket.create_server, ("0.0.0.0", port))
    srv.settimeout(30)

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(payload)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return srv, t


def _fetch(host: str, port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        return s.recv(100)


# --- pod namespaces --------------------------------------------------------------------

@needs_root
def test_pod_namespaces_hostname_lo_and_distinct(workdir):
    base = os.path.join(workdir, "run")
    a = netns.create_pod_namespaces(base, "pod-a")
    b = netns.create_pod_namespaces(base, "pod-b.example")
    try:
        assert set(a.paths) == {"net", "ipc", "uts"}
        assert a.net == netns.netns_path(base, a.name) and a.name.startswith("cni-")
        for kind, path in a.paths.items():
            assert netns.is_pinned(path, kind)
            assert _ns_inode(path) != _ns_inode(f"/proc/self/ns/{kind}")  # new, not the host's
            assert _ns_inode(path) != _ns_inode(b.paths[kind])              # per pod
        assert netns.run_in_ns(a, socket.gethostname, kinds=["uts"]) == "pod-a"
        assert netns.run_in_ns(b.paths, socket.gethostname) == "pod-b.example"
        assert socket.gethostname() not in ("pod-a", "pod-b.example")
        assert netns.run_in_ns(a.net, _flags, "lo") & 1, "lo is up without any CNI plugin"
        # a process started "in" the pod is born in its namespaces
        p = netns.exec_in_ns(a, ["readlink", "/proc/self/ns/net", "/proc/self/ns/uts"],
                             capture_output=True, text=True, check=True)
        assert p.stdout.split() == [f"net:[{_ns_inode(a.net)}]", f"uts:[{_ns_inode(a.uts)}]"]
        # the pin dirs are shared mounts of themselves (as ip netns makes /run/netns)
        info = open("/proc/self/mountinfo").read().splitlines()
        pin_dir = os.path.realpath(os.path.join(base, "netns"))
        line = next(x for x in info if x.split()[4] == pin_dir)
        assert "shared:" in line
    finally:
        netns.remove(a)
        netns.remove(b)
    for path in list(a.paths.values()) + list(b.paths.values()):
        assert not os.path.exists(path)
    netns.remove(a)  # idempotent
    with pytest.raises(NotFound):
        netns.run_in_ns(a.net, socket.gethostname)


@needs_root
def test_pod_namespaces_kinds_and_hostile_arguments(workdir):
    base = os.path.join(workdir, "run")
    only_net = netns.create_pod_namespaces(base, "", kinds=("net",))
    try:
        assert set(only_net.paths) == {"net"}
        assert not os.path.exists(netns.ns_path(base, "uts", only_net.name))
        # a taken name: refused, the existing pin untouched
        with pytest.raises(AlreadyExists):
            netns.create_pod_namespaces(base, "x", name=only_net.name)
        assert netns.is_pinned(only_net.net, "net")
        assert not os.path.exists(netns.ns_path(base, "ipc", only_net.name))
    finally:
        netns.remove(only_net)
    for kwargs in ({"kinds": ("net", "pid")}, {"kinds": ()}, {"hostname": "h" * 65},
                   {"name": "../escape"}):
        before = sorted(os.walk(base))
        with pytest.raises(InvalidArgument):
            netns.create_pod_namespaces(base, **{"hostname": "x", **kwargs})
        assert sorted(os.walk(base)) == before, f"{kwargs} left something behind"


@needs_root
def test_remove_survives_partial_state(workdir):
    base = os.path.join(workdir, "run")
    pns = netns.create_pod_namespaces(base, "p", kinds=("net", "uts"))
    # what a crash can leave: one pin unmounted but its file still there, one file gone,
    # one kind that was never created
    _mount._libc.umount2(os.fsencode(pns.uts), _mount.MNT_DETACH)
    assert os.path.exists(pns.uts) and not netns.is_pinned(pns.uts)
    stale = netns.load_pod_namespaces(base, pns.name)  # all three kinds
    assert set(stale.paths) == {"net", "ipc", "uts"}
    netns.remove(stale)
    assert not any(os.path.exists(p) for p in stale.paths.values())
    netns.remove(stale)


def test_netns_layouts():
    assert netns.netns_base_dir("/run/ctrd/io.containerd.grpc.v1.cri", False) == "/var/run"
    assert netns.netns_path(netns.netns_base_dir("/s", False), "cni-1") == "/var/run/netns/cni-1"
    assert netns.netns_path(netns.netns_base_dir("/s", True), "cni-1") == "/s/netns/cni-1"
    assert netns.ns_path("/s", "ipc", "cni-1") == "/s/ipcns/cni-1"
    name = netns.new_name()
    assert name.startswith("cni-") and len(name) == 40
    with pytest.raises(InvalidArgument):
        netns.ns_path("/s", "mnt", "x")


# --- the CNI client: real plugins ------------------------------------------------------

@needs_root
@needs_plugins
def test_bridge_portmap_pod_lifecycle(workdir, testnet):
    if not IPTABLES:
        pytest.skip("iptables not installed: portmap and ipMasq need it")
    testnet.write([{"type": "loopback"}, testnet.bridge_conf(),
                   {"type": "portmap", "capabilities": {"portMappings": True},
                    "snat": True}])
    client = testnet.client()
    assert client.status().ready
    sid = f"sb{next(_seq)}x{os.getpid()}"
    host_port = random.randint(20000, 30000)
    labels = cni.pod_args(sid, "default", "web", "uid-1")
    caps = cni.capability_args([cni.PortMapping(host_port, 8080, "TCP")])

    pns = netns.create_pod_namespaces(os.path.join(workdir, "run"), "web")
    try:
        res = client.setup(sid, pns.net, labels=labels, capability_args=caps)
        ip, extra = res.pod_ips()
        assert ip.startswith(testnet.prefix + ".") and extra == []
        eth0 = res.interfaces["eth0"]
        assert eth0.sandbox == pns.net and eth0.ips[0].gateway == testnet.gateway
        veth = next(n for n, c in res.interfaces.items()
                    if n not in ("eth0", "lo", testnet.bridge))
        assert _link_exists(veth) and _link_exists(testnet.bridge)
        assert testnet.leases() == [ip]
        assert len(testnet.cache_files()) == 1

        # inside: eth0 has the IP, lo is up
        addrs = netns.exec_in_ns(pns.net, [IP, "-o", "-4", "addr", "show"], capture_output=True,
                                 text=True, check=True).stdout
        assert f"eth0    inet {ip}/24" in addrs.replace("\\", "")
        assert netns.run_in_ns(pns.net, _flags, "lo") & 1

        # the pod reaches the bridge gateway (a host server bound to the gateway IP)
        gw_srv = socket.create_server((testnet.gateway, 0))
        gw_port = gw_srv.getsockname()[1]
        got = []
        acceptor = threading.Thread(target=lambda: got.append(gw_srv.accept()), daemon=True)
        acceptor.start()
        netns.run_in_ns(pns.net, lambda: socket.create_connection((testnet.gateway, gw_port),
                                                                   timeout=5).close())
        acceptor.join(10)
        gw_srv.close()
        assert got and got[0][1][0] == ip
        got[0][0].close()

        # the host reaches a server in the pod: at the pod IP, and through portmap's hostPort
        srv, _ = _serve_once_in(pns.net, 8080, b"hello from the pod")
        try:
            assert _fetch(ip, 8080) == b"hello from the pod"
            assert _fetch(testnet.gateway, host_port) == b"hello from the pod"
            assert _fetch("127.0.0.1", host_port) == b"hello from the pod"
        finally:
            srv.close()
        assert _rules_of("nat", testnet.name), "portmap/ipMasq rules present while up"

        # (no CHECK here: portmap 1.1.1 checks its ip6tables chain even for an IPv4-only
        # pod and fails; CHECK is exercised with bridge alone below)

        client.teardown(sid, pns.net, labels=labels, capability_args=caps)
        netns.remove(pns)
    finally:
        netns.remove(pns)
    assert testnet.leases() == [], "IPAM lease released"
    assert testnet.cache_files() == []
    wait_until(lambda: not _link_exists(veth), 20.0, what=f"veth {veth} gone")
    assert _rules_of("nat", testnet.name) == [], "no iptables rule of the pod left"
    assert not any(f"--dport {host_port}" in x for x in _iptables_save("nat"))
    client.teardown(sid, pns.net, labels=labels)  # again: fine


@needs_root
@needs_plugins
def test_teardown_when_netns_gone_or_add_never_ran(workdir, testnet):
    testnet.write([testnet.bridge_conf(ip_masq=False)])
    client = testnet.client(loopback=True)
    pns = netns.create_pod_namespaces(os.path.join(workdir, "run"), "p", kinds=("net",))
    try:
        res = client.setup("gone1", pns.net)
        ip = res.pod_ips()[0]
        assert testnet.leases() == [ip]
        assert "lo" in res.interfaces  # containerd's loopback network ran too
        client.check("gone1", pns.net)  # (the loopback network is 0.3.1: skipped)
        # break the pod's network behind the plugins' back: CHECK says so
        netns.exec_in_ns(pns.net, [IP, "link", "del", "eth0"], check=True)
        with pytest.raises(cni.PluginError, match=r'type="bridge".*\(check\)'):
            client.check("gone1", pns.net)
    finally:
        netns.remove(pns)  # the namespace goes first (a crash, a manual cleanup)
    assert not os.path.exists(pns.net)
    client.teardown("gone1", pns.net)  # DEL with the netns gone: still succeeds
    assert testnet.leases() == [] and testnet.cache_files() == []
    # DEL for a pod that never had an ADD, with and without a netns path
    client.teardown("never-added", "")
    client.teardown("never-added", "/nonexistent/netns/cni-x")
    assert testnet.leases() == []


@needs_root
@needs_plugins
def test_teardown_uses_the_config_add_used(workdir, testnet):
    path = testnet.write([testnet.bridge_conf(ip_masq=False)])
    client = testnet.client()
    pns = netns.create_pod_namespaces(os.path.join(workdir, "run"), "p", kinds=("net",))
    try:
        client.setup("moved1", pns.net)
        assert len(testnet.leases()) == 1
        os.unlink(path)  # the admin removes the network config while the pod runs
        assert not client.status().ready
        client.teardown("moved1", pns.net)
        assert testnet.leases() == [] and testnet.cache_files() == []
    finally:
        netns.remove(pns)


# --- configs and status ----------------------------------------------------------------

def test_status_not_ready_then_ready_on_new_config(tmp_path):
    conf_dir = tmp_path / "net.d"
    client = cni.CNI(CNI_BIN, str(conf_dir), cache_dir=str(tmp_path / "cache"))
    st = client.status()
    assert not st.ready
    assert st.reason == "NetworkPluginNotReady"
    assert st.message == "Network plugin returns error: cni plugin not initialized"
    assert st.last_load_error == f"no network config found in {conf_dir}: cni plugin not initialized"
    with pytest.raises(cni.NotInitialized) as e:
        client.setup("x1", "/var/run/netns/none")
    assert "no network config found" in str(e.value)
    conf_dir.mkdir()
    (conf_dir / "10-a.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}))
    assert client.status() == cni.NetworkStatus(True)
    assert [(n.config.name, n.ifname) for n in client.networks()] == [("cni-loopback", "lo"),
                                                                      ("a", "eth0")]


def test_load_order_max_conf_num_and_single_conf(tmp_path):
    d = tmp_path
    (d / "20-b.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "b", "type": "ptp"}))
    (d / "10-a.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"},
                                                          {"type": "portmap"}]}))
    (d / "30-c.json").write_text(json.dumps({"cniVersion": "0.3.1", "name": "c", "type": "macvlan"}))
    (d / "40-z.txt").write_text("not a config: ignored")
    (d / "50-dir.conf").mkdir()
    one = cni.load_conf_dir(str(d), 1)
    assert [c.name for c in one] == ["a"] and [p["type"] for p in one[0].plugins] == ["bridge", "portmap"]
    every = cni.load_conf_dir(str(d), 0)
    assert [(c.name, c.cni_version, len(c.plugins)) for c in every] == [
        ("a", "1.0.0", 2), ("b", "0.4.0", 1), ("c", "0.3.1", 1)]
    assert every[1].source == str(d / "20-b.conf")
    client = cni.CNI(CNI_BIN, str(d), max_conf_num=0, loopback=False)
    assert [n.ifname for n in client.networks()] == ["eth0", "eth1", "eth2"]
    # a broken file past max_conf_num is never read (as go-cni)
    (d / "25-broken.conflist").write_text("{{{")
    assert [c.name for c in cni.load_conf_dir(str(d), 2)] == ["a", "b"]
    with pytest.raises(cni.ConfigError, match="25-broken.conflist"):
        cni.load_conf_dir(str(d), 0)


@pytest.mark.parametrize("file, content, problem", [
    ("10-x.conflist", "{not json", "not JSON"),
    ("10-x.conflist", '{"name": "x", "plugins": [{"bridge": "b"}]}', "missing 'type'"),
    ("10-x.conf", '{"name": "x", "cniVersion": "1.0.0"}', "missing 'type'"),
    ("10-x.conflist", '{"name": "x", "plugins": []}', "no plugins in list"),
    ("10-x.conflist", '{"name": "x", "plugins": {"type": "bridge"}}', "invalid 'plugins' type"),
    ("10-x.conflist", '{"plugins": [{"type": "bridge"}]}', "no name"),
    ("10-x.conflist", '{"name": "a b", "plugins": [{"type": "bridge"}]}', "invalid network name"),
    ("10-x.conflist", '{"name": "x", "plugins": [{"type": "../../bin/sh"}]}',
     "invalid plugin type"),
    ("10-x.conflist", '{"name": "x", "cniVersion": 1, "plugins": [{"type": "b"}]}',
     "invalid cniVersion type"),
    ("10-x.conflist", '[1, 2]', "want a JSON object"),
    ("10-x.conf", '{"name": "x", "plugins": [{"type": "bridge"}]}', "name the file *.conflist"),
])
def test_hostile_configs(tmp_path, file, content, problem):
    (tmp_path / file).write_text(content)
    with pytest.raises(cni.ConfigError) as e:
        cni.load_conf_dir(str(tmp_path), 1)
    assert str(tmp_path / file) in str(e.value) and problem in str(e.value)
    client = cni.CNI(CNI_BIN, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    st = client.status()
    assert not st.ready and problem in st.last_load_error
    with pytest.raises(cni.ConfigError):
        client.setup("x1", "/var/run/netns/none")


# --- the CNI protocol, observed by a recording plugin -----------------------------------

_RECORDER = """
    log="$(dirname "$0")/../calls"
    in=$(cat)
    printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$NAME" "$CNI_COMMAND" "$CNI_CONTAINERID" \\
        "$CNI_IFNAME" "$CNI_NETNS" "$CNI_ARGS" >> "$log"
    printf '%s\\n' "$in" >> "$log.stdin"
    if [ "$CNI_COMMAND" = ADD ]; then
        printf '%s' "$RESULT"
    fi
"""


def _recorder(net: PodNet, name: str, result: dict) -> None:
    net.plugin(name, f"NAME={name}\nRESULT='{json.dumps(result)}'\n" + _RECORDER)


def test_protocol_env_stdin_prevresult_and_order(tmp_path):
    net = PodNet("proto", "-", "10.0.0", str(tmp_path / "net.d"), str(tmp_path / "cache"),
                  str(tmp_path / "ipam"), str(tmp_path / "bin"))
    os.makedirs(net.conf_dir)
    os.makedirs(net.bin_dir)
    r1 = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
          "ips": [{"address": "10.9.9.9/24", "gateway": "10.9.9.1", "interface": 0},
                  {"address": "fd00::9/64", "interface": 0}],
          "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.9.9.53"]}}
    _recorder(net, "first", r1)
    _recorder(net, "second", r1)
    net.write([{"type": "first", "capabilities": {"portMappings": True}, "keep": 1},
               {"type": "second", "capabilities": {"bandwidth": True, "dns": False}}])
    client = net.client()
    caps = cni.capability_args([cni.PortMapping(80, 8080, "UDP", "127.0.0.1")],
                               bandwidth=cni.BandWidth(1000, 2000, 3000, 4000),
                               dns_servers=["1.1.1.1"])
    res = client.setup("cid1", "/var/run/netns/cni-test",
                       labels=cni.pod_args("cid1", "ns1", "pod1", "uid1"),
                       args={"EXTRA": "1"}, capability_args=caps)
    assert res.pod_ips() == ("10.9.9.9", ["fd00::9"])
    assert res.pod_ips("ipv6") == ("fd00::9", ["10.9.9.9"])
    assert res.dns[0].nameservers == ["10.9.9.53"]
    client.teardown("cid1", "/var/run/netns/cni-test")  # not a namespace: passed empty

    calls = [line.split("\t") for line in (tmp_path / "calls").read_text().splitlines()]
    assert [(c[0], c[1]) for c in calls] == [("first", "ADD"), ("second", "ADD"),
                                             ("second", "DEL"), ("first", "DEL")]
    assert all(c[2] == "cid1" and c[3] == "eth0" for c in calls)
    assert calls[0][4] == "/var/run/netns/cni-test" and calls[2][4] == ""
    args = dict(kv.split("=", 1) for kv in calls[0][5].split(";"))
    assert args == {"K8S_POD_NAMESPACE": "ns1", "K8S_POD_NAME": "pod1",
                    "K8S_POD_INFRA_CONTAINER_ID": "cid1", "K8S_POD_UID": "uid1",
                    "IgnoreUnknown": "1", "EXTRA": "1"}
    assert calls[2][5] == ""  # teardown was given no args

    stdins = [json.loads(line) for line in (tmp_path / "calls.stdin").read_text().splitlines()]
    add1, add2, del2, del1 = stdins
    assert add1["name"] == "proto" and add1["cniVersion"] == "1.0.0" and add1["keep"] == 1
    assert "prevResult" not in add1
    assert add1["runtimeConfig"] == {"portMappings": [
        {"hostPort": 80, "containerPort": 8080, "protocol": "udp", "hostIP": "127.0.0.1"}]}
    assert add2["prevResult"] == r1  # the previous plugin's result
    assert add2["runtimeConfig"] == {"bandwidth": {"ingressRate": 1000, "ingressBurst": 2000,
                                                   "egressRate": 3000, "egressBurst": 4000}}
    # DEL gets ADD's cached result and, without capability args, ADD's
    assert del2["prevResult"] == r1 and del1["prevResult"] == r1
    assert del1["runtimeConfig"]["portMappings"][0]["hostPort"] == 80
    assert net.cache_files() == []


# --- hostile plugins -------------------------------------------------------------------

@needs_root
@needs_plugins
@pytest.mark.parametrize("case", ["unknown binary", "hangs", "garbage output", "json error",
                                  "stderr only", "bad result", "floods stdout"])
def test_hostile_plugins_leave_nothing_behind(workdir, testnet, case):
    sleep_for = str(100000 + next(_seq) * 7 + random.randint(0, 9999))  # findable in ps
    bodies = {
        "hangs": f'if [ "$CNI_COMMAND" = ADD ]; then exec sleep {sleep_for}; fi\n'
                 'cat >/dev/null\nexit 0\n',
        "garbage output": 'cat >/dev/null\n'
                          'if [ "$CNI_COMMAND" = ADD ]; then echo "this is not JSON"; fi\n'
                          'exit 0\n',
        "json error": 'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
                      'echo \'{"code": 7, "msg": "bad thing", "details": "why it is bad"}\'\n'
                      'exit 1\n',
        "stderr only": 'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
                       'echo "it broke" >&2\nexit 3\n',
        "bad result": 'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
                      'echo \'{"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]}\'\n'
                      'exit 0\n',
        "floods stdout": 'cat >/dev/null\nif [ "$CNI_COMMAND" = ADD ]; then exec yes; fi\n'
                         'exit 0\n',
    }
    ptype = "nosuchplugin" if case == "unknown binary" else "hostile"
    if case != "unknown binary":
        testnet.plugin("hostile", bodies[case])
    # the hostile plugin runs after bridge has set up a veth and leased an IP
    testnet.write([testnet.bridge_conf(ip_masq=True), {"type": ptype}])
    client = testnet.client(timeout=2.0)
    pns = netns.create_pod_namespaces(os.path.join(workdir, "run"), "p", kinds=("net",))
    try:
        expect = DeadlineExceeded if case == "hangs" else cni.PluginError
        with pytest.raises(expect) as e:
            client.setup("hostile1", pns.net)
        msg = str(e.value)
        assert f'type="{ptype}"' in msg and f'name="{testnet.name}"' in msg, msg
        assert {"unknown binary": f'failed to find plugin "{ptype}"',
                "hangs": "did not finish in 2s",
                "garbage output": "invalid result",
                "json error": "(add): bad thing; why it is bad",
                "stderr only": "it broke",
                "bad result": "invalid address 'nonsense'",
                "floods stdout": "printed more than 1048576 bytes: killed"}[case] in msg, msg
        if case == "json error":
            assert e.value.cni_code == 7 and e.value.details == "why it is bad"
        # nothing half-done: the bridge's veth, lease and rules are gone, no cache entry
        assert testnet.leases() == []
        assert testnet.cache_files() == []
        assert netns.exec_in_ns(pns.net, [IP, "-o", "link"], capture_output=True, text=True,
                                check=True).stdout.count(": eth0") == 0
        assert _rules_of("nat", testnet.name) == []
        if case == "hangs":
            assert f"sleep {sleep_for}" not in subprocess.run(
                ["ps", "-eo", "args"], capture_output=True, text=True).stdout
    finally:
        netns.remove(pns)
    client.teardown("hostile1", "")  # and a later teardown is fine


def test_invalid_setup_arguments(tmp_path):
    (tmp_path / "10-a.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}))
    client = cni.CNI(CNI_BIN, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    for cid, kw in (("", {}), ("bad id!", {}), ("ok", {"args": {"A": "x;y"}}),
                    ("ok", {"labels": {"A=B": "x"}})):
        with pytest.raises(InvalidArgument):
            client.setup(cid, "/var/run/netns/x", **kw)
    assert not os.path.exists(tmp_path / "cache")


def test_parse_result_versions():
    old = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.3/16", "gateway": "10.1.0.1",
                                          "routes": [{"dst": "0.0.0.0/0"}]},
           "dns": {"nameservers": ["8.8.8.8"], "search": ["svc"]}}
    ifs, ips, routes, dns = cni.parse_result(old)
    assert ifs == [] and ips == [cni.IPConfig("10.1.2.3/16", "10.1.0.1")]
    assert routes == [cni.Route("0.0.0.0/0")] and dns.search == ["svc"]
    with pytest.raises(ValueError, match="interface 3"):
        cni.parse_result({"interfaces": [{"name": "eth0"}],
                          "ips": [{"address": "10.0.0.1/8", "interface": 3}]})
    with pytest.raises(ValueError, match="invalid gateway"):
        cni.parse_result({"ips": [{"address": "10.0.0.1/8", "gateway": "x"}]})
