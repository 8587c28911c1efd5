"""The CRI plugin configured as containerd 1.6 is (runtimes with runc options, a second
handler), RuntimeHandler selection by RunPodSandbox.runtime_handler, unknown handlers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import grpc
import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

CRI = 'plugins."io.containerd.grpc.v1.cri"'
RUNTIMES = f"""
  [{CRI}.containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [{CRI}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{CRI}.containerd.runtimes.runc.options]
        BinaryName = "runc"
        SystemdCgroup = false
    [{CRI}.containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [{CRI}.containerd.runtimes.crun.options]
        BinaryName = "crun"
"""

# crun 1.8 refuses a cgroup v1 host whose cgroup2 hierarchy holds a controller ("cgroups in
# hybrid mode not supported, drop all controllers from cgroupv2"), whatever its cgroup
# manager. What works there: crun in a mount namespace of its own (slave: host mounts still
# propagate) without the cgroup2 mount: it then sees a pure v1 host and manages v1 cgroups
# with the spec's resources. A wrapper as the handler's BinaryName does that.
CRUN_V1_ONLY = """#!/bin/sh
exec unshare -m --propagation slave sh -c \
  'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"' crun "$@"
"""


def crun_hybrid_refusal() -> str:
    """Why crun cannot manage cgroups here ("" when it can)."""
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            ctrls = f.read().split()
    except OSError:
        return ""
    if os.path.isdir("/sys/fs/cgroup/memory") and ctrls:
        return f"cgroup v1 host whose cgroup2 hierarchy holds {ctrls} (hybrid mode)"
    return ""


def runtime_containers(binary: str) -> dict[str, str]:
    """id -> status of the containers ``binary`` knows under its roots in /run."""
    out = {}
    for root in {f"/run/{binary}", "/run/ctrd/runc/k8s.io", "/run/containerd/runc/k8s.io"}:
        if not os.path.isdir(root):
            continue
        r = subprocess.run([binary, "--root", root, "list", "--format", "json"],
                           capture_output=True, text=True)
        for c in json.loads(r.stdout or "null") or []:
            out[c["id"]] = c["status"]
    return out


def test_runtime_handlers(cri_factory):  # noqa: F811
    cri = cri_factory(RUNTIMES)
    pb = cri.pb
    st = cri.rt.Status(pb.StatusRequest(verbose=True))
    # every handler and the unnamed default (the default handler's features), by name
    assert [h.name for h in st.runtime_handlers] == ["", "crun", "runc"]
    by_name = {h.name: h for h in st.runtime_handlers}
    assert by_name[""].features == by_name["runc"].features
    assert st.features.supplemental_groups_policy
    rc = cri.rt.RuntimeConfig(pb.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == pb.CGROUPFS  # runc's SystemdCgroup = false
    sid, pconf = cri.run_pod("runc-pod", handler="runc")
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"])
    status, info = cri.pod_status(sid, verbose=True)
    assert status.runtime_handler == "runc" and info["runtimeHandler"] == "runc"
    assert cri.status(cid, verbose=True)[1]["runtimeType"] == "io.containerd.runc.v2"
    assert cid in runtime_containers("runc")

    with pytest.raises(grpc.RpcError) as e:
        cri.run_pod("nohandler", handler="kata")
    assert e.value.code() == grpc.StatusCode.UNKNOWN  # containerd 2.3.4's: a plain error
    assert "kata" in e.value.details()
    cri.remove_pod(sid)


def test_crun_handler(cri_factory, tmp_path):  # noqa: F811
    if shutil.which("crun") is None:
        pytest.skip("crun is not installed")
    refusal = crun_hybrid_refusal()
    runtimes = RUNTIMES
    if refusal:
        if shutil.which("unshare") is None:
            pytest.skip(f"crun cannot run here ({refusal}) and util-linux unshare, which "
                        "would hide the cgroup2 mount from it, is not installed")
        wrapper = tmp_path / "crun-v1"
        wrapper.write_text(CRUN_V1_ONLY)
        wrapper.chmod(0o755)
        runtimes += f"""
    [{CRI}.containerd.runtimes.crun-v1]
      runtime_type = "io.containerd.runc.v2"
      [{CRI}.containerd.runtimes.crun-v1.options]
        BinaryName = "{wrapper}"
"""
    cri = cri_factory(runtimes)
    pb = cri.pb
    if refusal:
        # plain crun: its refusal comes back from StartContainer; nothing is left of it
        sid, pconf = cri.run_pod("crun-plain", handler="crun")
        cid = cri.create(sid, pconf, "c", ["sleep", "1000"], start=False)
        with pytest.raises(grpc.RpcError) as e:
            cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        assert "hybrid mode" in e.value.details()
        cs = cri.status(cid)
        assert (cs.state, cs.reason) == (pb.CONTAINER_EXITED, "StartError")
        assert cid not in runtime_containers("crun")
        cri.remove_pod(sid)
    handler = "crun-v1" if refusal else "crun"
    sid, pconf = cri.run_pod("crun-pod", handler=handler)
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"], linux=pb.LinuxContainerConfig(
        resources=pb.LinuxContainerResources(memory_limit_in_bytes=48 << 20)))
    assert cid in runtime_containers("crun")
    assert cid not in runtime_containers("runc")
    assert cri.exec(cid, ["uname", "-n"]).stdout == b"crun-pod\n"
    pid = cri.pid(cid)
    with open(f"/proc/{pid}/cgroup") as f:
        mem = next(line.split(":", 2)[2].strip() for line in f if ":memory:" in line)
    if os.path.isdir("/sys/fs/cgroup/memory"):
        with open(f"/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes") as f:
            assert int(f.read()) == 48 << 20
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5))
    assert cri.status(cid).state == pb.CONTAINER_EXITED
    cri.remove_pod(sid)
    assert cid not in runtime_containers("crun")
