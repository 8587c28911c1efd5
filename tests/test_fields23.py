"""The fields containerd 2.3 added to services ctrd already had, against containerd 2.3.4 side by
side where a daemon answers: CommitSnapshotRequest.parent (rebase on commit), the snapshot
events' ``snapshotter``, ``/content/create``, Images ``source_date_epoch`` and
DeleteImageRequest.target, Diff ``source_date_epoch`` (``SOURCE_DATE_EPOCH`` in ctr 2.3.4) and
``sync_fs``; platform ``os.features`` matching."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import tarfile
import time

import grpc
import pytest

import containerd2
from ctrd.images.manifest import Platform, matches

CTR2 = str(containerd2.CTR)
NS = "fields23"
need_containerd2 = pytest.mark.skipif(
    not containerd2.available(), reason=f"containerd 2.3.4 is not at {containerd2.BIN_DIR}")


def ctr2(address: str, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ, CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS="1", **(env or {}))
    return subprocess.run([CTR2, "--address", address, "-n", NS, *args], capture_output=True,
                          timeout=60, env=e, **kw)


class Side:
    """gRPC stubs on one daemon, in namespace NS."""

    def __init__(self, address: str) -> None:
        from ctrd.api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
        from ctrd.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
        from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc

        self.address = address
        self.ch = grpc.insecure_channel(f"unix://{address}")
        self.md = (("containerd-namespace", NS),)
        self.sn, self.snpb = snapshots_pb2_grpc.SnapshotsStub(self.ch), snapshots_pb2
        self.im, self.impb = images_pb2_grpc.ImagesStub(self.ch), images_pb2
        self.df, self.dfpb = diff_pb2_grpc.DiffStub(self.ch), diff_pb2

    def close(self) -> None:
        self.ch.close()

    def prepare(self, key: str, parent: str = ""):
        # A GC root: without a lease or one, either daemon's next GC pass (any lease a ctr
        # command ends starts one) removes the snapshot.
        return list(self.sn.Prepare(self.snpb.PrepareSnapshotRequest(
            snapshotter="overlayfs", key=key, parent=parent,
            labels={"containerd.io/gc.root": "test"}), metadata=self.md).mounts)

    def commit(self, name: str, key: str, parent: str = "") -> grpc.StatusCode:
        try:
            self.sn.Commit(self.snpb.CommitSnapshotRequest(
                snapshotter="overlayfs", name=name, key=key, parent=parent,
                labels={"containerd.io/gc.root": "test"}), metadata=self.md)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    def stat(self, key: str):
        return self.sn.Stat(self.snpb.StatSnapshotRequest(snapshotter="overlayfs", key=key),
                            metadata=self.md).info


def writable_dir(mounts) -> str:
    """Where a prepared snapshot's changes go (bind source, or the overlay's upperdir)."""
    (m,) = mounts
    if m.type == "bind":
        return m.source
    return next(o.split("=", 1)[1] for o in m.options if o.startswith("upperdir="))


def lowerdirs(mounts) -> list[str]:
    (m,) = mounts
    if m.type == "bind":
        return [m.source]
    return next(o.split("=", 1)[1] for o in m.options if o.startswith("lowerdir=")).split(":")


@pytest.fixture
def sides(ctrd, c2):
    out = {"ctrd": Side(ctrd.address), "containerd": Side(c2.address)}
    yield out
    for s in out.values():
        s.close()


def _rebase_story(s: Side) -> dict:
    """What one daemon answers to the commit-with-parent cases."""
    out = {}
    m = s.prepare("base-active")
    with open(os.path.join(writable_dir(m), "a"), "w") as f:
        f.write("a")
    out["commit base"] = s.commit("base", "base-active")
    m = s.prepare("top-active")  # no parent: may be rebased when committed
    with open(os.path.join(writable_dir(m), "b"), "w") as f:
        f.write("b")
    out["rebase onto base"] = s.commit("top", "top-active", parent="base")
    out["top's parent"] = s.stat("top").parent
    out["child lowerdirs"] = len(lowerdirs(s.prepare("child", parent="top")))
    s.prepare("x-active")
    out["missing parent"] = s.commit("x", "x-active", parent="nope")
    s.prepare("act")
    s.prepare("y-active")
    out["active parent"] = s.commit("y", "y-active", parent="act")
    s.prepare("z-active", parent="base")
    out["other parent than its own"] = s.commit("z", "z-active", parent="top")
    out["z's parent"] = s.stat("z").parent if out["other parent than its own"] == \
        grpc.StatusCode.OK else ""
    return out


@pytest.mark.integration
@need_containerd2
def test_commit_with_parent_as_containerd(sides):
    ours, theirs = (_rebase_story(sides[k]) for k in ("ctrd", "containerd"))
    assert ours == theirs
    assert ours["top's parent"] == "base" and ours["child lowerdirs"] == 2


def _events(address: str, run) -> str:
    """``ctr events`` output while ``run()`` drives the daemon."""
    env = dict(os.environ, CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS="1")
    p = subprocess.Popen([CTR2, "--address", address, "events"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        time.sleep(0.5)  # the subscription is in place before the first event
        run()
        time.sleep(0.5)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
    return out


@pytest.mark.integration
@need_containerd2
def test_snapshot_and_content_events_as_containerd(ctrd, c2, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello fields23\n")
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()

    def run(address: str):
        def go():
            for args in (("snapshots", "prepare", "k1"), ("snapshots", "commit", "n1", "k1"),
                         ("snapshots", "rm", "n1")):
                r = ctr2(address, *args)
                assert r.returncode == 0, r.stderr
            with open(blob, "rb") as f:
                r = ctr2(address, "content", "ingest", "ref1", stdin=f)
            assert r.returncode == 0, r.stderr
        return go

    ours, theirs = _events(ctrd.address, run(ctrd.address)), _events(c2.address, run(c2.address))

    def bodies(out: str) -> list[tuple[str, str]]:
        rows = []
        for line in out.splitlines():
            parts = line.split(" ", 4)  # date time zone? namespace topic body
            topic = next((p for p in line.split() if p.startswith("/")), "")
            if topic.startswith(("/snapshot/", "/content/")):
                rows.append((topic, line[line.index("{"):] if "{" in line else ""))
            del parts
        return rows

    a, b = bodies(ours), bodies(theirs)
    assert [t for t, _ in a] == [t for t, _ in b] == [
        "/snapshot/prepare", "/snapshot/commit", "/snapshot/remove", "/content/create"], ours
    assert a == b
    assert '"snapshotter":"overlayfs"' in a[0][1]
    assert digest in a[3][1]


@pytest.mark.integration
@need_containerd2
def test_images_epoch_and_delete_target_as_containerd(sides, ctrd, c2):
    from google.protobuf import field_mask_pb2, timestamp_pb2

    from ctrd.api.containerd.types import descriptor_pb2

    target = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.manifest.v1+json",
                                       digest="sha256:" + "ab" * 32, size=123)
    other = descriptor_pb2.Descriptor(media_type=target.media_type, digest="sha256:" + "cd" * 32,
                                      size=123)
    for name, s in sides.items():
        p = s.impb
        t1 = timestamp_pb2.Timestamp(seconds=1_000_000_000)
        img = s.im.Create(p.CreateImageRequest(image=p.Image(name="ex.com/i:1", target=target),
                                               source_date_epoch=t1), metadata=s.md).image
        assert img.created_at.seconds == img.updated_at.seconds == 1_000_000_000, name
        t2 = timestamp_pb2.Timestamp(seconds=1_100_000_000)
        img = s.im.Update(p.UpdateImageRequest(
            image=p.Image(name="ex.com/i:1", target=target, labels={"a": "b"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]), source_date_epoch=t2),
            metadata=s.md).image
        assert (img.created_at.seconds, img.updated_at.seconds) == (1_000_000_000,
                                                                    1_100_000_000), name
        # ctr 2.3.4 sends SOURCE_DATE_EPOCH on an update
        r = ctr2(s.address, "images", "label", "ex.com/i:1", "c=d",
                 env={"SOURCE_DATE_EPOCH": "1200000000"})
        assert r.returncode == 0, r.stderr
        got = s.im.Get(p.GetImageRequest(name="ex.com/i:1"), metadata=s.md).image
        assert got.updated_at.seconds == 1_200_000_000, name
        with pytest.raises(grpc.RpcError) as e:
            s.im.Delete(p.DeleteImageRequest(name="ex.com/i:1", target=other), metadata=s.md)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, name
        assert "has target" in e.value.details()
        s.im.Delete(p.DeleteImageRequest(name="ex.com/i:1", target=target), metadata=s.md)
        with pytest.raises(grpc.RpcError) as e:
            s.im.Get(p.GetImageRequest(name="ex.com/i:1"), metadata=s.md)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


TAR = "application/vnd.oci.image.layer.v1.tar"


def _diff_entries(s: Side, epoch: int) -> tuple[list[tuple[str, int]], bytes]:
    m = s.prepare("d-active")
    d = writable_dir(m)
    os.makedirs(os.path.join(d, "etc"))
    with open(os.path.join(d, "etc", "new"), "w") as f:
        f.write("new\n")
    r = ctr2(s.address, "snapshots", "diff", "--keep", "--media-type", TAR, "d-active",
             env={"SOURCE_DATE_EPOCH": str(epoch)})
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        return [(ti.name.rstrip("/"), int(ti.mtime)) for ti in tf.getmembers()], r.stdout


@pytest.mark.integration
@need_containerd2
def test_diff_source_date_epoch_as_containerd(sides):
    epoch = 1_000_000
    ours, tar = _diff_entries(sides["ctrd"], epoch)
    theirs, _ = _diff_entries(sides["containerd"], epoch)
    assert ours == theirs == [("etc", epoch), ("etc/new", epoch)]
    # the produced layer applies with sync_fs, and says the same digest
    s = sides["ctrd"]
    desc = s.dfpb.ApplyRequest().diff.__class__(
        media_type=TAR, digest="sha256:" + hashlib.sha256(tar).hexdigest(), size=len(tar))
    mounts = s.sn.Prepare(s.snpb.PrepareSnapshotRequest(snapshotter="overlayfs",
                                                        key="apply-target"),
                          metadata=s.md).mounts
    applied = s.df.Apply(s.dfpb.ApplyRequest(diff=desc, mounts=mounts, sync_fs=True),
                         metadata=s.md).applied
    assert applied.digest == desc.digest
    with open(os.path.join(writable_dir(list(mounts)), "etc", "new")) as f:
        assert f.read() == "new\n"


def test_syncfs_errors_name_the_path(tmp_path):
    from ctrd.diff.differ import syncfs

    syncfs(str(tmp_path))
    with pytest.raises(OSError, match="nope"):
        syncfs(str(tmp_path / "nope"))


def test_os_features_must_be_offered():
    linux = Platform("linux", "amd64")
    assert matches(linux, Platform("linux", "amd64", os_version="10.0"))
    assert not matches(linux, Platform("linux", "amd64", os_features=("sse4",)))
    assert matches(Platform("linux", "amd64", os_features=("a", "sse4")),
                   Platform("linux", "amd64", os_features=("sse4",)))


def test_index_entry_platform_keeps_os_fields():
    from ctrd.images.manifest import parse_index

    doc = ('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
           '"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
           '"digest":"sha256:' + "a" * 64 + '","size":1,"platform":{"os":"windows",'
           '"architecture":"amd64","os.version":"10.0.17763.1","os.features":["win32k"]}}]}')
    idx = parse_index(doc.encode(), "application/vnd.oci.image.index.v1+json")
    p = idx.manifests[0].platform
    assert (p.os_version, p.os_features) == ("10.0.17763.1", ("win32k",))
