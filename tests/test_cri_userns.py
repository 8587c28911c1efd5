"""User namespaces for pods: ``userns_options`` POD with one 65536-long mapping,
NODE as before, hostile mappings refused; the rootfs through idmapped lowerdirs, volumes
through idmapped clones ctrd makes (runc 1.1.5 makes none itself).

Real ctrd, real CNI (bridge), real runc through ctrd's shim, real overlay and idmapped
mounts, the session registry's busybox. Observed from inside the container (uid_map,
``id``, file owners) and from the host (owners on disk). The fixtures' teardown fails the
test on any process, mount, CNI lease or pod dir left; the hostile-input test also checks
pins, snapshots and shims.
"""

from __future__ import annotations

import os

import grpc
import pytest

from taskutil import mounts_under
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.cri_pause import _k8s_objects, pause_factory, pause_ref  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

HOST_ID = 200000
SIZE = 65536
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


@pytest.fixture(autouse=True)
def _userns_host(tmp_root):
    """Skip without the kernel feature; let the pod's mapped root traverse the test's
    temp root (mkdtemp makes it 0700, which no unmapped user may enter)."""
    from ctrd.cri import userns

    if not userns.supported():
        pytest.skip("this kernel has no idmapped mounts / user namespaces")
    os.chmod(tmp_root, 0o711)


def _userns(pb, mode=None, uids=((0, HOST_ID, SIZE),), gids=((0, HOST_ID, SIZE),)):
    mode = pb.POD if mode is None else mode
    return pb.UserNamespace(
        mode=mode, uids=[pb.IDMapping(container_id=c, host_id=h, length=n) for c, h, n in uids],
        gids=[pb.IDMapping(container_id=c, host_id=h, length=n) for c, h, n in gids])


def _linux_pod(pb, us, network=None, pid=None):
    return pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(userns_options=us, network=network or pb.POD,
                                             pid=pid or pb.POD)))


def _linux_ctr(pb, us, network=None):
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(userns_options=us, network=network or pb.POD)))


def _run(c, name, us, network=None, pid=None, **kw):
    return c.run_pod(name, linux=_linux_pod(c.pb, us, network, pid), **kw)


def _volume(tmp_root, name="vol"):
    d = tmp_root / name
    d.mkdir(mode=0o755)
    (d / "hostfile").write_text("from the host\n")
    os.chown(d / "hostfile", 0, 0)
    return d


def _owner(ns_path: str) -> int:
    """The inode of the user namespace that owns namespace ``ns_path`` (NS_GET_USERNS)."""
    import fcntl

    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ufd = fcntl.ioctl(fd, 0xB701)
        try:
            return os.fstat(ufd).st_ino
        finally:
            os.close(ufd)
    finally:
        os.close(fd)


def _uid_map(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_pod_userns_rootfs_and_volumes(cri, tmp_root):
    pb = cri.pb
    us = _userns(pb)
    sid, pconf = _run(cri, "userns1", us)
    plain = _volume(tmp_root, "plain")
    mapped = _volume(tmp_root, "mapped")
    ident = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=SIZE)]
    cid = cri.create(sid, pconf, "c1", LOOP, linux=_linux_ctr(pb, us), mounts=[
        pb.Mount(container_path="/plain", host_path=str(plain)),
        pb.Mount(container_path="/mapped", host_path=str(mapped), uidMappings=ident,
                 gidMappings=ident)])
    # the maps, as the container sees them
    assert _uid_map(cri.sh(cid, "cat /proc/self/uid_map")) == [["0", str(HOST_ID), str(SIZE)]]
    assert _uid_map(cri.sh(cid, "cat /proc/self/gid_map")) == [["0", str(HOST_ID), str(SIZE)]]
    assert cri.sh(cid, "id -u; id -g").split() == ["0", "0"]
    # image files are root's inside (idmapped lowerdirs), and so is the rootfs top
    assert cri.sh(cid, "stat -c '%u %g' /bin/busybox /etc /").split() == ["0", "0"] * 3
    # a write in the rootfs: on the host it belongs to the mapped root
    cri.sh(cid, "echo hi > /written && mkdir /newdir")
    pid = cri.pid(cid)
    st = os.stat(f"/proc/{pid}/root/written")
    assert (st.st_uid, st.st_gid) == (HOST_ID, HOST_ID)
    # the pod's own namespaces: the netns belongs to the pod's user namespace
    own = os.readlink(f"/proc/{pid}/ns/user")
    assert own != os.readlink("/proc/self/ns/user")
    # the pod's files are bound idmapped (containerd): the pod's root owns and may write them
    assert cri.sh(cid, "stat -c '%u %g' /etc/hosts /etc/resolv.conf /etc/hostname").split() \
        == ["0", "0"] * 3
    cri.sh(cid, "echo '10.9.9.9 extra' >> /etc/hosts")
    # a plain volume: host root's files are unmapped (nobody) inside; the host's dir as it was
    assert cri.sh(cid, "stat -c %u /plain/hostfile").strip() == "65534"
    # an idmapped volume: host root's files are the pod root's; writes land as host root
    assert cri.sh(cid, "stat -c '%u %g' /mapped/hostfile").split() == ["0", "0"]
    cri.sh(cid, "echo w > /mapped/new && cat /mapped/hostfile")
    st = os.stat(mapped / "new")
    assert (st.st_uid, st.st_gid) == (0, 0)
    st = os.stat(mapped)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)
    assert os.stat(mapped / "hostfile").st_uid == 0
    # a second container of the pod joins the same user namespace
    cid2 = cri.create(sid, pconf, "c2", LOOP, linux=_linux_ctr(pb, us))
    assert os.readlink(f"/proc/{cri.pid(cid2)}/ns/user") == own
    assert os.readlink(f"/proc/{cri.pid(cid2)}/ns/net") == os.readlink(f"/proc/{pid}/ns/net")
    # the clone of the idmapped volume goes with its container
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert not [m for m in mounts_under(tmp_root) if cid in m]
    assert [m for m in mounts_under(tmp_root) if cid2 in m and "idmapped" in m]
    assert (mapped / "new").read_text() == "w\n"  # the volume's files are untouched
    cri.remove_pod(sid)


def test_pod_userns_without_pod_process(cri, tmp_root):
    """PID CONTAINER: no pod init; the containers join ctrd's pins, all in the userns."""
    pb = cri.pb
    us = _userns(pb)
    sid, pconf = _run(cri, "noinit", us, pid=pb.CONTAINER)
    status, info = cri.pod_status(sid, verbose=True)
    assert status.linux.namespaces.options.userns_options.mode == pb.POD
    assert info["pid"] == 0 and info["userns"]
    cid = cri.create(sid, pconf, "c1", LOOP, linux=_linux_ctr(pb, us))
    pid = cri.pid(cid)
    assert os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat(info["userns"]).st_ino
    for kind, pin in (("net", info["netns"]), ("ipc", info["ipcns"]), ("uts", info["utsns"])):
        assert os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(pin).st_ino
        # made inside the pod's user namespace (containerd: setupNetnsWithinUserns)
        assert _owner(pin) == os.stat(info["userns"]).st_ino
    assert cri.sh(cid, "hostname").strip() == "noinit"
    assert _uid_map(cri.sh(cid, "cat /proc/self/uid_map")) == [["0", str(HOST_ID), str(SIZE)]]
    # the pod's root owns its IPC namespace: it may create a message queue mount point
    cri.sh(cid, "grep -q ' /dev/mqueue ' /proc/self/mountinfo")
    cri.remove_pod(sid)
    assert not _leftovers(cri, tmp_root)


def test_pod_userns_with_host_network(cri, tmp_root):
    """containerd allows it: the pod's user namespace, the host's netns, /sys bound ro."""
    pb = cri.pb
    us = _userns(pb)
    sid, pconf = _run(cri, "hostnet", us, network=pb.NODE)
    cid = cri.create(sid, pconf, "c1", LOOP, linux=_linux_ctr(pb, us, pb.NODE))
    pid = cri.pid(cid)
    assert _uid_map(cri.sh(cid, "cat /proc/self/uid_map")) == [["0", str(HOST_ID), str(SIZE)]]
    assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    assert cri.sh(cid, "ls /sys/class/net")  # the host's sysfs, readable
    cri.remove_pod(sid)
    assert not _leftovers(cri, tmp_root)


def test_node_mode_runs_as_before(cri):
    pb = cri.pb
    us = pb.UserNamespace(mode=pb.NODE)
    sid, pconf = _run(cri, "nodens", us)
    cid = cri.create(sid, pconf, "c1", LOOP, linux=_linux_ctr(pb, us))
    assert _uid_map(cri.sh(cid, "cat /proc/self/uid_map")) == [["0", "0", "4294967295"]]
    assert os.readlink(f"/proc/{cri.pid(cid)}/ns/user") == os.readlink("/proc/self/ns/user")
    cri.remove_pod(sid)


def _leftovers(c, tmp_root) -> list[str]:
    out = [f"mount {m}" for m in mounts_under(tmp_root)]
    base = c.daemon.state / "io.containerd.grpc.v1.cri"
    for kind in ("netns", "ipcns", "utsns", "userns"):
        d = base / kind
        if d.exists():
            out += [f"pin {kind}/{x}" for x in os.listdir(d)]
    out += _k8s_objects(c.daemon.address)
    return out


def test_hostile_mappings_refused(cri, tmp_root):
    pb = cri.pb
    big = 1 << 32
    cases = [
        ("uids", _userns(pb, uids=((0, HOST_ID, SIZE), (SIZE, HOST_ID + SIZE, 10)))),
        ("gids", _userns(pb, gids=((0, HOST_ID, 1), (1, HOST_ID + 1, 1)))),
        ("uids", _userns(pb, uids=((1, HOST_ID, SIZE),))),          # container root unmapped
        ("uids", _userns(pb, uids=((0, HOST_ID, 0),))),              # empty
        ("uids", _userns(pb, uids=((0, big - 10, SIZE),))),         # host ids past 2^32
        ("gids", _userns(pb, gids=((0, HOST_ID, big - 1),))),       # container ids past 2^32
        ("mode", _userns(pb, mode=pb.CONTAINER)),
        ("mode", _userns(pb, mode=pb.TARGET)),
        ("mode", _userns(pb, mode=pb.NODE)),                        # NODE with mappings
        ("userns_options", _userns(pb, gids=())),                  # POD without gid maps
    ]
    for i, (fieldname, us) in enumerate(cases):
        with pytest.raises(grpc.RpcError) as ei:
            _run(cri, f"bad{i}", us)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (i, ei.value.details())
        assert f"userns_options" in ei.value.details() and fieldname in ei.value.details(), \
            (i, ei.value.details())
    assert not cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not _leftovers(cri, tmp_root)
    # a container whose mapping differs from its pod's; an idmapped volume in a host-userns
    # pod; a volume with two mapping lines
    us = _userns(pb)
    sid, pconf = _run(cri, "good", us)
    other = _userns(pb, uids=((0, HOST_ID + SIZE, SIZE),), gids=((0, HOST_ID + SIZE, SIZE),))
    vol = _volume(tmp_root)
    two = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=1),
           pb.IDMapping(container_id=1, host_id=HOST_ID + 1, length=1)]
    for name, kw, want in [
            ("differs", {"linux": _linux_ctr(pb, other)}, "userns_options"),
            ("two", {"linux": _linux_ctr(pb, us), "mounts": [pb.Mount(
                container_path="/v", host_path=str(vol), uidMappings=two,
                gidMappings=two[:1])]}, "mounts[0].uidMappings")]:
        with pytest.raises(grpc.RpcError) as ei:
            cri.create(sid, pconf, name, LOOP, **kw)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
        assert want in ei.value.details(), ei.value.details()
    sid2, pconf2 = cri.run_pod("hostuserns")
    ident = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=SIZE)]
    with pytest.raises(grpc.RpcError) as ei:
        cri.create(sid2, pconf2, "v", LOOP, mounts=[pb.Mount(
            container_path="/v", host_path=str(vol), uidMappings=ident, gidMappings=ident)])
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mounts[0].uidMappings" in ei.value.details(), ei.value.details()
    assert not cri.rt.ListContainers(pb.ListContainersRequest()).containers
    cri.remove_pod(sid)
    cri.remove_pod(sid2)
    assert not _leftovers(cri, tmp_root)


def test_userns_pod_survives_restart(cri, tmp_root):
    pb = cri.pb
    us = _userns(pb)
    sid, pconf = _run(cri, "restart", us)
    vol = _volume(tmp_root)
    ident = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=SIZE)]
    cid = cri.create(sid, pconf, "c1", LOOP, linux=_linux_ctr(pb, us), mounts=[pb.Mount(
        container_path="/v", host_path=str(vol), uidMappings=ident, gidMappings=ident)])
    pid = cri.pid(cid)
    cri.restart()
    assert cri.pod_status(sid).state == pb.SANDBOX_READY
    assert cri.status(cid).state == pb.CONTAINER_RUNNING
    assert cri.pid(cid) == pid
    assert cri.sh(cid, "id -u; stat -c %u /v/hostfile").split() == ["0", "0"]
    # a new container after the restart joins the pinned user namespace
    cid2 = cri.create(sid, pconf, "c2", LOOP, linux=_linux_ctr(pb, us))
    assert os.readlink(f"/proc/{cri.pid(cid2)}/ns/user") == os.readlink(f"/proc/{pid}/ns/user")
    cri.remove_pod(sid)
    assert not _leftovers(cri, tmp_root)


def test_pause_mode_userns(pause_factory, pause_ref, tmp_root):  # noqa: F811
    c = pause_factory(sandbox_image=pause_ref)
    pb = c.pb
    us = _userns(pb)
    sid, pconf = _run(c, "paused", us)
    cid = c.create(sid, pconf, "c1", LOOP, linux=_linux_ctr(pb, us))
    assert _uid_map(c.sh(cid, "cat /proc/self/uid_map")) == [["0", str(HOST_ID), str(SIZE)]]
    assert c.sh(cid, "stat -c %u /bin/busybox").strip() == "0"
    info = c.pod_status(sid, verbose=True)[1]
    pause_pid = info["pid"]
    pid = c.pid(cid)
    for ns in ("user", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{pause_pid}/ns/{ns}")
        if ns != "user":
            assert _owner(f"/proc/{pid}/ns/{ns}") == os.stat(f"/proc/{pid}/ns/user").st_ino
    with open(f"/proc/{pause_pid}/uid_map") as f:
        assert _uid_map(f.read()) == [["0", str(HOST_ID), str(SIZE)]]
    c.remove_pod(sid)
    assert not _leftovers(c, tmp_root)
