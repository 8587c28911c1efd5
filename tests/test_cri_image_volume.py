"""Image volumes (CRI ``Mount.image``, Kubernetes ImageVolume) end to end: a real ctrd with
its CRI plugin, images pulled from the real registry fixture through PullImage, real overlay,
real runc; what the container sees is read from inside it (ExecSync).

containerd 2.3.4 (internal/cri/server/container_image_mount.go) is the reference: one volume
per pod and image under ``<cri state>/image-volumes/<pod>/``, held by the pod's lease, cleaned
at StopPodSandbox; RemoveImage of an image in use as a volume succeeds and the volume stays.
"""

from __future__ import annotations

import subprocess

import grpc
import pytest

from conftest import ctr
from cri_image_fixtures import volume_image
from taskutil import mounts_under
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _volumes_dir(cri):
    return cri.daemon.state / "io.containerd.grpc.v1.cri" / "image-volumes"


def _snapshots(cri) -> list[str]:
    r = ctr(cri.daemon.address, "snapshots", "ls", namespace="k8s.io")
    assert r.returncode == 0, r.stderr
    return [line.split()[0] for line in r.stdout.splitlines()[1:] if line.split()]


def _leases(cri) -> list[str]:
    r = ctr(cri.daemon.address, "leases", "ls", "-q", namespace="k8s.io")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _volume_snapshots(cri) -> list[str]:
    return [s for s in _snapshots(cri) if "image-volumes" in s]


def _assert_clean(cri, sid: str = "") -> None:
    """No image-volume mount, snapshot or directory of ctrd's left (of pod ``sid`` or any)."""
    base = _volumes_dir(cri) / sid if sid else _volumes_dir(cri)
    assert mounts_under(base) == [], open("/proc/self/mountinfo").read()
    assert _volume_snapshots(cri) == []
    if sid:
        assert not base.exists(), list(base.iterdir())


@pytest.fixture
def vol(cri, registry, tmp_path):  # noqa: F811
    """(cri, reference, image id) with the volume image pulled through PullImage."""
    ref, img = volume_image(registry, tmp_path)
    cri.volume_digest = img.digest  # the manifest's: containerd names the volume's dir by it
    pb = cri.pb
    image_id = cri.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref))).image_ref
    assert image_id.startswith("sha256:")
    return cri, ref, image_id


def _mount(pb, path: str, image: str, sub: str = "", **kw):
    kw.setdefault("readonly", True)
    return pb.Mount(container_path=path, image=pb.ImageSpec(image=image), image_sub_path=sub,
                    **kw)


def test_image_volume_files_readonly_status_and_release(vol):
    cri, ref, image_id = vol
    pb = cri.pb
    sid, pconf = cri.run_pod("iv")
    # the kubelet names the image by the id PullImage answered
    c1 = cri.create(sid, pconf, "c1", ["sleep", "1000"],
                    mounts=[_mount(pb, "/vol", image_id)])
    assert cri.sh(c1, "cat /vol/data/hello.txt /vol/data/layer2.txt") == \
        "hello from the image volume\nsecond layer\n"
    assert cri.sh(c1, "readlink /vol/inside") == "data/sub\n"
    # writes refused: EROFS, for a new file and for one of the image's files
    r = cri.exec(c1, ["sh", "-c", "echo x > /vol/new; echo y >> /vol/data/hello.txt"])
    assert r.exit_code != 0
    assert b"Read-only file system" in r.stderr, r.stderr
    assert cri.sh(c1, "cat /vol/data/hello.txt") == "hello from the image volume\n"
    # mounted read-only as the container sees it
    line = [x for x in cri.sh(c1, "cat /proc/self/mountinfo").splitlines()
            if x.split(" ")[4] == "/vol"]
    assert len(line) == 1 and "ro" in line[0].split(" ")[5].split(","), line

    # ContainerStatus reports the mount as containerd does: the image, read-only, the host
    # path of the pod's volume
    base = _volumes_dir(cri) / sid
    (m,) = cri.status(c1).mounts
    assert (m.container_path, m.image.image, m.readonly) == ("/vol", image_id, True)
    # named by the manifest digest, as containerd names it
    assert m.host_path == str(base / cri.volume_digest.split(":")[1])
    assert mounts_under(base) == [m.host_path]
    assert _volume_snapshots(cri) == [m.host_path]

    # a second container of the pod mounting the same image (a sub path, by reference)
    # shares the pod's volume
    c2 = cri.create(sid, pconf, "c2", ["sleep", "1000"],
                    mounts=[_mount(pb, "/sub", ref, "data/sub")])
    assert cri.sh(c2, "ls /sub") == "inner.txt\n"
    (m2,) = cri.status(c2).mounts
    assert m2.host_path == m.host_path + "/data/sub" and m2.image_sub_path == "data/sub"
    assert mounts_under(base) == [m.host_path]

    # removing one container keeps the volume the other still uses; the last one releases it
    for c in (c1, c2):
        cri.rt.StopContainer(pb.StopContainerRequest(container_id=c, timeout=0))
    cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c1))
    assert mounts_under(base) == [m.host_path]
    cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c2))
    _assert_clean(cri, sid)
    assert sid in _leases(cri)  # the pod's lease (containerd's), until the pod goes
    cri.remove_pod(sid)
    assert sid not in _leases(cri)
    _assert_clean(cri)


def test_image_volume_symlink_inside_sub_path(vol):
    cri, ref, image_id = vol
    pb = cri.pb
    sid, pconf = cri.run_pod("ivlink")
    c = cri.create(sid, pconf, "c", ["sleep", "1000"],
                   mounts=[_mount(pb, "/in", image_id, "inside")])
    assert cri.sh(c, "cat /in/inner.txt") == "inner\n"
    # the symlink is resolved inside the image: the bind's source is the real directory
    assert cri.status(c).mounts[0].host_path.endswith("/data/sub")
    cri.remove_pod(sid)
    _assert_clean(cri)


def test_image_volume_stop_pod_releases(vol):
    """containerd's cleanupImageMounts: StopPodSandbox unmounts the pod's volumes."""
    cri, _, image_id = vol
    pb = cri.pb
    sid, pconf = cri.run_pod("ivstop")
    cri.create(sid, pconf, "c", ["sleep", "1000"], mounts=[_mount(pb, "/vol", image_id)])
    assert mounts_under(_volumes_dir(cri) / sid)
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    _assert_clean(cri, sid)
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert sid not in _leases(cri)


def test_image_volume_image_removed_while_in_use(vol):
    """As containerd: RemoveImage succeeds (it checks no container), the volume stays
    mounted and readable (its snapshot, held by the pod's lease, keeps the layers)."""
    cri, ref, image_id = vol
    pb = cri.pb
    sid, pconf = cri.run_pod("ivrm")
    c = cri.create(sid, pconf, "c", ["sleep", "1000"], mounts=[_mount(pb, "/vol", image_id)])
    cri.img.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
    assert not cri.img.ImageStatus(pb.ImageStatusRequest(
        image=pb.ImageSpec(image=image_id))).HasField("image")
    assert cri.sh(c, "cat /vol/data/hello.txt /vol/data/layer2.txt") == \
        "hello from the image volume\nsecond layer\n"
    # a new container naming the removed image is refused, the running one is untouched
    e = _create_error(cri, sid, pconf, [_mount(pb, "/v2", image_id)])
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert cri.sh(c, "cat /vol/data/hello.txt") == "hello from the image volume\n"
    cri.remove_pod(sid)
    _assert_clean(cri)


def _create_error(cri, sid, pconf, mounts) -> grpc.RpcError:
    pb = cri.pb
    with pytest.raises(grpc.RpcError) as ei:
        cri.create(sid, pconf, "bad", ["sleep", "1000"], start=False, mounts=mounts)
    assert [c for c in cri.rt.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id=sid))).containers
        if c.metadata.name == "bad"] == []
    return ei.value


def test_image_volume_missing_image(vol):
    cri, _, _ = vol
    pb = cri.pb
    sid, pconf = cri.run_pod("ivmiss")
    missing = f"{cri.image.rsplit(':', 1)[0]}-nope:v9"
    e = _create_error(cri, sid, pconf, [_mount(pb, "/vol", missing)])
    # containerd: errdefs.ErrNotFound wrapped, so NotFound, naming the image
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert e.details() == (f"failed to mount image volume: ImageVolumeMountFailed: "
                           f"failed to resolve image \"{missing}\": not found"), e.details()
    _assert_clean(cri, sid)
    cri.remove_pod(sid)


@pytest.mark.parametrize("kw, field", [
    (dict(sub="../.."), "image_sub_path"),
    (dict(sub="data/../../x"), "image_sub_path"),
    (dict(sub="/data"), "image_sub_path"),
    (dict(sub="escape"), "image_sub_path"),       # symlink out of the image
    (dict(sub="escape/etc"), "image_sub_path"),
    (dict(sub="abs"), "image_sub_path"),          # absolute symlink
    (dict(sub="afile"), "image_sub_path"),        # not a directory
    (dict(sub="no/such/dir"), "image_sub_path"),
    (dict(sub="data\0x"), "image_sub_path"),
    (dict(host_path="/tmp"), "host_path"),
    (dict(readonly=False), "readonly"),
])
def test_image_volume_hostile(vol, kw, field):
    cri, _, image_id = vol
    pb = cri.pb
    sid, pconf = cri.run_pod("ivbad")
    e = _create_error(cri, sid, pconf, [_mount(pb, "/vol", image_id, **kw)])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert field in e.details(), e.details()
    _assert_clean(cri, sid)  # a volume mounted before the sub path was refused is gone
    # a valid container of the same pod still works afterwards
    c = cri.create(sid, pconf, "ok", ["sleep", "1000"], mounts=[_mount(pb, "/vol", image_id)])
    assert cri.sh(c, "cat /vol/afile") == "a file, not a directory\n"
    cri.remove_pod(sid)
    _assert_clean(cri)


def test_image_sub_path_without_image(cri, tmp_path):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("ivnoimg")
    e = _create_error(cri, sid, pconf, [pb.Mount(container_path="/v", host_path=str(tmp_path),
                                                 image_sub_path="x")])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "image_sub_path" in e.details()
    cri.remove_pod(sid)


def test_image_volume_survives_ctrd_restart_then_removal_cleans(vol):
    cri, _, image_id = vol
    pb = cri.pb
    sid, pconf = cri.run_pod("ivrestart")
    c = cri.create(sid, pconf, "c", ["sleep", "1000"], mounts=[_mount(pb, "/vol", image_id)])
    host_path = cri.status(c).mounts[0].host_path
    cri.restart()
    assert cri.sh(c, "cat /vol/data/hello.txt") == "hello from the image volume\n"
    assert cri.status(c).mounts[0].host_path == host_path
    assert mounts_under(_volumes_dir(cri) / sid) == [host_path]
    # a new container of the pod reuses the volume mounted before the restart
    c2 = cri.create(sid, pconf, "c2", ["sleep", "1000"], mounts=[_mount(pb, "/vol", image_id)])
    assert cri.sh(c2, "cat /vol/data/layer2.txt") == "second layer\n"
    assert mounts_under(_volumes_dir(cri) / sid) == [host_path]
    for x in (c, c2):
        cri.rt.StopContainer(pb.StopContainerRequest(container_id=x, timeout=0))
        cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=x))
    _assert_clean(cri, sid)
    cri.remove_pod(sid)
    assert sid not in _leases(cri)



def test_image_volume_dir_of_an_unknown_pod_released_at_start(cri):  # noqa: F811
    """What a crash in the middle of RemovePodSandbox leaves (the pod's record gone, its
    volume still mounted) is unmounted and removed when ctrd starts again."""
    stale = _volumes_dir(cri) / ("f" * 64) / ("e" * 64)

    def leave_a_volume():
        stale.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(stale)], check=True)

    try:
        cri.restart(before_start=leave_a_volume)
        assert mounts_under(_volumes_dir(cri)) == []
        assert not stale.parent.exists()
    finally:
        subprocess.run(["umount", "-l", str(stale)], capture_output=True)
