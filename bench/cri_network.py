#!/usr/bin/env python3
"""Per-pod network cost in ctrd's CRI: pinning the pod's namespaces
(ctrd.cri.netns.create_pod_namespaces) and CNI ADD, then CNI DEL and unpinning, with the
real plugins of /usr/lib/cni (bridge + host-local, portmap when iptables is there).

Two variants, interleaved: ``loopback-network`` runs containerd's extra ``cni-loopback``
network (one more plugin exec per ADD and DEL); ``lo-by-ctrd`` relies on the ``lo`` that
create_pod_namespaces already brought up.

    sudo .venv/bin/python bench/cri_network.py [--repeats 20]

Everything it makes (bridge, namespaces, iptables rules, temp dirs) is removed at the end,
also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctrd.cri import cni, netns  # noqa: E402
from ctrd.snapshots import mount as _mount  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--bin-dir", default="/usr/lib/cni")
    opts = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ctrd-bench-net-")
    tag = f"{os.getpid() % 100000}"
    name, bridge = f"ctrdb{tag}", f"ctbb{tag}"
    sub = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    port_mapping = shutil.which("iptables") is not None
    plugins = [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": f"{sub}.0/24"}]],
                         "dataDir": f"{work}/ipam"}}]
    if port_mapping:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    os.makedirs(f"{work}/net.d")
    with open(f"{work}/net.d/10-bench.conflist", "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, f)
    clients = {v: cni.CNI(opts.bin_dir, f"{work}/net.d", cache_dir=f"{work}/cache",
                          loopback=(v == "loopback-network"))
               for v in ("loopback-network", "lo-by-ctrd")}
    samples: dict[str, dict[str, list[float]]] = {v: {} for v in clients}
    shared_existed = "CNI-HOSTPORT-DNAT" in _nat()
    try:
        for i in range(opts.repeats + 1):  # the first round warms up, uncounted
            for v, client in clients.items():
                sid = f"bench{i}{v[:2]}"
                caps = cni.capability_args([cni.PortMapping(30000 + i, 80)]) \
                    if port_mapping else {}
                t0 = time.perf_counter()
                pns = netns.create_pod_namespaces(f"{work}/run", f"pod{i}")
                t1 = time.perf_counter()
                client.setup(sid, pns.net, labels=cni.pod_args(sid, "default", "p", "u"),
                             capability_args=caps)
                t2 = time.perf_counter()
                client.teardown(sid, pns.net, capability_args=caps)
                t3 = time.perf_counter()
                netns.remove(pns)
                t4 = time.perf_counter()
                if i == 0:
                    continue
                for k, dt in (("pin", t1 - t0), ("add", t2 - t1), ("up", t2 - t0),
                              ("del", t3 - t2), ("unpin", t4 - t3), ("down", t4 - t2)):
                    samples[v].setdefault(k, []).append(dt * 1000)
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        real = os.path.realpath(work)
        for mp in reversed(_mount.mountpoints()):
            if mp.startswith(real + "/"):
                _mount._libc.umount2(os.fsencode(mp), _mount.MNT_DETACH)
        shutil.rmtree(work, ignore_errors=True)
        if port_mapping and not shared_existed:
            _drop_portmap_chains()
    chain = "bridge+host-local" + ("+portmap" if port_mapping else "")
    print(f"per pod, {opts.repeats} pods, chain {chain}: median [min..max] ms")
    for v, figs in samples.items():
        print(f"  {v}:")
        for k, xs in figs.items():
            print(f"    {k:6} {statistics.median(xs):7.1f} [{min(xs):.1f}..{max(xs):.1f}]")


_SHARED = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


def _nat() -> str:
    return subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout


def _drop_portmap_chains() -> None:
    """portmap's shared chains, which this run created, unless someone's mappings use them."""
    nat = _nat()
    if "-A CNI-HOSTPORT-DNAT " in nat:
        return
    for line in nat.splitlines():
        if line.startswith("-A ") and not line.startswith("-A CNI-") \
                and any(f"-j {c}" in line for c in _SHARED):
            subprocess.run(["iptables", "-t", "nat", "-D"] + shlex.split(line)[1:],
                           capture_output=True)
    for c in _SHARED:
        subprocess.run(["iptables", "-t", "nat", "-F", c], capture_output=True)
        subprocess.run(["iptables", "-t", "nat", "-X", c], capture_output=True)


if __name__ == "__main__":
    main()
