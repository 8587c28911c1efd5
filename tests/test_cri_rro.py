"""Recursive read-only mounts (``Mount.recursive_read_only``, Kubernetes 1.30+): a host
directory with a submount bound with ``rro`` is read-only all the way down inside the
container, observed from inside (writes refused with EROFS, ``ro`` on both mounts in
/proc/self/mountinfo); a plain ``readonly`` bind leaves the submount writable (what the
feature is for, and proof that the checks can fail). Support comes from the runtime's
``features`` (runc lists ``rro``; crun 1.8 has no ``features`` command); hostile requests
are refused, naming the field, before anything is made.
"""

from __future__ import annotations

import json
import os
import subprocess

import grpc
import pytest

from conftest import ctr
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

CRI = 'plugins."io.containerd.grpc.v1.cri"'
WITH_CRUN = f"""
  [{CRI}.containerd]
    default_runtime_name = "runc"
    [{CRI}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [{CRI}.containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [{CRI}.containerd.runtimes.crun.options]
        BinaryName = "crun"
"""


def _runc_has_rro() -> bool:
    r = subprocess.run(["runc", "features"], capture_output=True, text=True)
    return r.returncode == 0 and "rro" in json.loads(r.stdout).get("mountOptions", [])


@pytest.fixture
def tree(tmp_path):
    """A host dir ``vol`` with a file and a tmpfs mounted at ``vol/sub`` (unmounted at the
    end, also on failure)."""
    if subprocess.run(["runc", "--version"], capture_output=True).returncode != 0:
        pytest.skip("runc is not installed")
    if not _runc_has_rro():
        pytest.skip("this runc has no rro mount option (runc >= 1.1 has it)")
    vol = tmp_path / "vol"
    sub = vol / "sub"
    sub.mkdir(parents=True)
    (vol / "top").write_text("top\n")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ctrd-rro-sub", str(sub)],
                   check=True, capture_output=True)
    try:
        (sub / "inner").write_text("inner\n")
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(sub)], capture_output=True)


def _mount_opts(cri, cid: str) -> dict[str, set[str]]:  # noqa: F811
    """mount point -> its per-mount options, from the container's /proc/self/mountinfo."""
    out = {}
    for line in cri.sh(cid, "cat /proc/self/mountinfo").splitlines():
        f = line.split(" ")
        out[f[4]] = set(f[5].split(","))
    return out


def _erofs(cri, cid: str, path: str) -> bool:  # noqa: F811
    r = cri.exec(cid, ["touch", path])
    return r.exit_code != 0 and b"Read-only file system" in r.stderr


def test_recursive_read_only_mount(cri, tree):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("rro")
    rro = cri.create(sid, pconf, "rro", ["sleep", "1000"], mounts=[pb.Mount(
        host_path=str(tree), container_path="/v", readonly=True, recursive_read_only=True)])
    plain = cri.create(sid, pconf, "plain", ["sleep", "1000"], mounts=[pb.Mount(
        host_path=str(tree), container_path="/v", readonly=True)])

    # rro: the dir and its submount are both read-only, and readable
    assert cri.sh(rro, "cat /v/top /v/sub/inner") == "top\ninner\n"
    assert _erofs(cri, rro, "/v/new")
    assert _erofs(cri, rro, "/v/sub/new")
    opts = _mount_opts(cri, rro)
    assert "ro" in opts["/v"] and "ro" in opts["/v/sub"], opts
    spec = cri.status(rro, verbose=True)[1]["runtimeSpec"]
    (m,) = [m for m in spec["mounts"] if m["destination"] == "/v"]
    assert "rro" in m["options"] and "rw" not in m["options"], m

    # plain readonly: only the top is read-only; the submount stays writable
    assert _erofs(cri, plain, "/v/new")
    cri.sh(plain, "echo from-plain > /v/sub/written")
    assert (tree / "sub" / "written").read_text() == "from-plain\n"
    opts = _mount_opts(cri, plain)
    assert "ro" in opts["/v"] and "rw" in opts["/v/sub"], opts

    # what the kubelet reads back: the mount as requested
    (sm,) = cri.status(rro).mounts
    assert sm.recursive_read_only and sm.readonly
    cri.remove_pod(sid)


def test_runtime_features_probe():
    """The support the CRI derives from ``<runtime> features``: runc lists ``rro``, crun
    1.8 has no ``features`` command, a missing binary has nothing."""
    from ctrd.cri import runtime_features as rf
    from ctrd.cri.config import RuntimeHandler

    if not _runc_has_rro():
        pytest.skip("this runc has no rro mount option")
    assert rf.kernel_supports_rro()  # the kernel here is 6.x
    assert rf.recursive_read_only_supported(RuntimeHandler())
    assert rf.recursive_read_only_supported(RuntimeHandler(options={"BinaryName": "runc"}))
    assert not rf.recursive_read_only_supported(
        RuntimeHandler(options={"BinaryName": "/nonexistent/runc"}))
    assert not rf.recursive_read_only_supported(
        RuntimeHandler(runtime_type="io.containerd.kata.v2"))
    # a shim default BinaryName counts where the handler sets none
    assert not rf.recursive_read_only_supported(
        RuntimeHandler(), {"BinaryName": "/nonexistent/runc"})
    if subprocess.run(["crun", "features"], capture_output=True).returncode != 0:
        assert not rf.recursive_read_only_supported(
            RuntimeHandler(options={"BinaryName": "crun"}))
    assert not rf.kernel_supports_rro("5.11.0-1-amd64")
    assert rf.kernel_supports_rro("5.12.0")


def _cri_leftovers(cri, tree) -> dict:  # noqa: F811
    pb = cri.pb
    d = cri.daemon.state / "io.containerd.grpc.v1.cri"
    return {"containers": [c.id for c in
                           cri.rt.ListContainers(pb.ListContainersRequest()).containers],
            "state": sorted(os.listdir(d)) if d.exists() else [],
            "snapshots": ctr(cri.daemon.address, "-n", "k8s.io", "snapshots", "ls").stdout,
            "tree": sorted(os.listdir(tree))}


def test_recursive_read_only_hostile(cri_factory, tree):  # noqa: F811
    cri = cri_factory(WITH_CRUN)
    pb = cri.pb
    sid, pconf = cri.run_pod("rro-bad")
    before = _cri_leftovers(cri, tree)
    missing = str(tree / "not-made")

    def refused(mount, handler_sid=sid, handler_pconf=pconf):
        with pytest.raises(grpc.RpcError) as e:
            cri.create(handler_sid, handler_pconf, "bad", ["true"], mounts=[mount])
        return e.value

    # without readonly: a read-write mount cannot be recursively read-only
    e = refused(pb.Mount(host_path=missing, container_path="/v", recursive_read_only=True))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "recursive_read_only" in e.details() and "readonly" in e.details(), e.details()
    # with propagation other than private
    for prop, name in ((pb.PROPAGATION_BIDIRECTIONAL, "PROPAGATION_BIDIRECTIONAL"),
                       (pb.PROPAGATION_HOST_TO_CONTAINER, "PROPAGATION_HOST_TO_CONTAINER")):
        e = refused(pb.Mount(host_path=missing, container_path="/v", readonly=True,
                             recursive_read_only=True, propagation=prop))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        assert "recursive_read_only" in e.details() and name in e.details(), e.details()
    # what the kubelet reads first: Status advertises rro for runc (and the unnamed
    # default, which is runc), not for crun 1.8
    handlers = {h.name: h.features.recursive_read_only_mounts
                for h in cri.rt.Status(pb.StatusRequest()).runtime_handlers}
    crun_can = subprocess.run(["crun", "features"], capture_output=True).returncode == 0
    assert handlers == {"": True, "runc": True, "crun": crun_can}, handlers
    # a handler whose runtime cannot (crun 1.8: no `features`): refused, as containerd
    if not crun_can:
        csid, cpconf = cri.run_pod("rro-crun", handler="crun")
        e = refused(pb.Mount(host_path=missing, container_path="/v", readonly=True,
                             recursive_read_only=True), csid, cpconf)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e.details()
        assert "RROUnsupported" in e.details(), e.details()
        cri.remove_pod(csid)
    assert _cri_leftovers(cri, tree) == before, "nothing made: no source dir, no container"
    assert not os.path.exists(missing)
    # the same name works afterwards (the reservation was released)
    cid = cri.create(sid, pconf, "bad", ["sleep", "1000"], mounts=[pb.Mount(
        host_path=str(tree), container_path="/v", readonly=True, recursive_read_only=True)])
    assert _erofs(cri, cid, "/v/sub/x")
    cri.remove_pod(sid)
