"""``workdir`` and ``testnet``: a temp dir and a CNI network of the test's own (Debian's
containernetworking-plugins in /usr/lib/cni).

Each ``testnet`` has its own bridge (a name unique to the test), its own 10.x/24 (checked
against the routing table), its own network name (so its iptables rules are recognisable by
their comments); the fixtures remove pins, bridge, iptables rules and chains, IPAM and cache
dirs whether the test passed or not.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass

import pytest

from ctrd.cri import cni
from ctrd.snapshots import mount as _mount

CNI_BIN = "/usr/lib/cni"
PLUGINS = ("bridge", "host-local", "loopback", "portmap")
HAVE_PLUGINS = all(os.access(os.path.join(CNI_BIN, p), os.X_OK) for p in PLUGINS)
IPTABLES = shutil.which("iptables")
IP = shutil.which("ip")
_seq = itertools.count()  # with the pid, names unique to a test


@pytest.fixture
def workdir():
    """A temp dir; at the end every mount under it is detached, then it is removed."""
    d = tempfile.mkdtemp(prefix="ctrd-cri-net-")
    try:
        yield d
    finally:
        real = os.path.realpath(d)
        for mp in reversed(_mount.mountpoints()):
            if mp.startswith(real + "/"):
                _mount._libc.umount2(os.fsencode(mp), _mount.MNT_DETACH)
        shutil.rmtree(d, ignore_errors=True)


def _free_subnet() -> str:
    routes = subprocess.run([IP, "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout if IP else ""
    for _ in range(200):
        net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if f"{net}." not in routes:
            return net
    raise AssertionError("no free 10.x/24 found")


@dataclass
class PodNet:
    """One test's network: a unique name, bridge and /24, its own conf/cache/IPAM dirs."""

    name: str
    bridge: str
    prefix: str          # "10.x.y"
    conf_dir: str
    cache_dir: str
    ipam_dir: str
    bin_dir: str         # for hand-written plugins (searched before CNI_BIN)

    @property
    def subnet(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    def bridge_conf(self, ip_masq: bool = True) -> dict:
        return {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": ip_masq,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.ipam_dir}}

    def write(self, plugins: list[dict], version: str = "1.0.0",
              file: str = "10-test.conflist") -> str:
        path = os.path.join(self.conf_dir, file)
        with open(path, "w") as f:
            json.dump({"cniVersion": version, "name": self.name, "plugins": plugins}, f)
        return path

    def client(self, **kw) -> cni.CNI:
        kw.setdefault("loopback", False)
        return cni.CNI([self.bin_dir, CNI_BIN], self.conf_dir, cache_dir=self.cache_dir, **kw)

    def plugin(self, name: str, body: str) -> None:
        """A hand-written plugin ``name`` (a shell script)."""
        path = os.path.join(self.bin_dir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + textwrap.dedent(body))
        os.chmod(path, 0o755)

    def leases(self) -> list[str]:
        d = os.path.join(self.ipam_dir, self.name)
        try:
            return [n for n in os.listdir(d) if n[0].isdigit() and "last_reserved" not in n]
        except FileNotFoundError:
            return []

    def cache_files(self) -> list[str]:
        try:
            return os.listdir(os.path.join(self.cache_dir, "results"))
        except FileNotFoundError:
            return []


def _iptables_save(table: str) -> list[str]:
    if not IPTABLES:
        return []
    p = subprocess.run([IPTABLES + "-save", "-t", table], capture_output=True, text=True)
    return p.stdout.splitlines() if p.returncode == 0 else []


def _rules_of(table: str, name: str) -> list[str]:
    """-A lines whose comment names network ``name`` (bridge's masquerade, portmap's DNAT)."""
    marker = f'name: \\"{name}\\"'
    return [line for line in _iptables_save(table) if line.startswith("-A ") and marker in line]


_SHARED = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


def _iptables_cleanup(name: str, shared_existed: bool) -> None:
    """Remove every rule commented with network ``name`` and the per-pod chains they jump
    to; portmap's shared chains too if this test created them and nobody else uses them."""
    if not IPTABLES:
        return
    for table in ("nat", "filter"):
        chains = set()
        for line in _rules_of(table, name):
            words = shlex.split(line)
            if "-j" in words:
                target = words[words.index("-j") + 1]
                if target.startswith("CNI-") and target not in _SHARED:
                    chains.add(target)
            subprocess.run([IPTABLES, "-t", table, "-D"] + words[1:], capture_output=True)
        for c in chains:
            subprocess.run([IPTABLES, "-t", table, "-F", c], capture_output=True)
            subprocess.run([IPTABLES, "-t", table, "-X", c], capture_output=True)
    if not shared_existed:
        nat = _iptables_save("nat")
        if any(line.startswith("-A CNI-HOSTPORT-DNAT ") for line in nat):
            return  # someone else's port mappings now live there
        for line in nat:
            if line.startswith("-A ") and any(f"-j {c}" in line for c in _SHARED) \
                    and not line.startswith("-A CNI-"):
                subprocess.run([IPTABLES, "-t", "nat", "-D"] + shlex.split(line)[1:],
                               capture_output=True)
        for c in _SHARED:
            subprocess.run([IPTABLES, "-t", "nat", "-F", c], capture_output=True)
            subprocess.run([IPTABLES, "-t", "nat", "-X", c], capture_output=True)


@pytest.fixture
def testnet(workdir):
    n = next(_seq)
    tag = f"{os.getpid() % 100000}{n}"
    net = PodNet(name=f"ctrdt{tag}", bridge=f"ctb{tag}"[:15], prefix=_free_subnet(),
                  conf_dir=os.path.join(workdir, "net.d"), cache_dir=os.path.join(workdir, "cache"),
                  ipam_dir=os.path.join(workdir, "ipam"), bin_dir=os.path.join(workdir, "bin"))
    for d in (net.conf_dir, net.bin_dir):
        os.makedirs(d)
    shared_existed = any(line.startswith(":CNI-HOSTPORT-DNAT") for line in _iptables_save("nat"))
    try:
        yield net
    finally:
        if IP:
            subprocess.run([IP, "link", "del", net.bridge], capture_output=True)
        _iptables_cleanup(net.name, shared_existed)
