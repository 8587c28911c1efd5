"""Diff.Apply on the wire, driven exactly as ctr's unpack drives it (Snapshots.Prepare,
Diff.Apply, Snapshots.Commit per layer), against ctrd and containerd: same diff IDs, same
trees, on overlayfs and native."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile

import grpc
import pytest

from conftest import CTR
from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb
from ctrd.api.containerd.services.content.v1 import content_pb2_grpc as cpb_grpc
from ctrd.api.containerd.services.diff.v1 import diff_pb2 as dpb
from ctrd.api.containerd.services.diff.v1 import diff_pb2_grpc as dpb_grpc
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as spb_grpc
from ctrd.api.containerd.types import descriptor_pb2

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

NS = (("containerd-namespace", "default"),)
# Snapshots made here are GC roots: a Remove triggers a collection, which would otherwise
# take every snapshot no image or lease refers to (as in containerd).
ROOT = {"containerd.io/gc.root": "test"}
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(entries) -> tuple[bytes, str]:
    """A gzip layer from (name, kind, data/target, mode) tuples; returns (blob, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime, ti.uid, ti.gid = mode, 1_600_000_000, 0, 0
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tf.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


LAYERS = [
    [("etc", "dir", None, 0o755), ("etc/passwd", "file", b"root:x:0:0::/root:/bin/sh\n", 0o644),
     ("etc/deleteme", "file", b"bye", 0o600), ("opaque", "dir", None, 0o755),
     ("opaque/old", "file", b"old", 0o644), ("bin", "dir", None, 0o755),
     ("bin/tool", "file", os.urandom(200_000), 0o755), ("bin/alias", "sym", "tool", 0o777),
     ("bin/hard", "link", "bin/tool", 0o755)],
    [("etc/.wh.deleteme", "file", b"", 0o644), ("opaque/.wh..wh..opq", "file", b"", 0o644),
     ("opaque/new", "file", b"new", 0o644), ("etc/added", "file", b"added", 0o640),
     ("bin/tool", "file", b"#!/bin/sh\necho replaced\n", 0o755)],
]


def ingest(content, blob: bytes, md=None) -> str:
    d = "sha256:" + hashlib.sha256(blob).hexdigest()
    reqs = [cpb.WriteContentRequest(action=cpb.WRITE, ref=f"layer-{d}", total=len(blob),
                                    expected=d, data=blob),
            cpb.WriteContentRequest(action=cpb.COMMIT, ref=f"layer-{d}", total=len(blob),
                                    expected=d, offset=len(blob))]
    try:
        list(content.Write(iter(reqs), metadata=md or NS))
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    return d


def unpack(address: str, snapshotter: str, layers) -> tuple[list[str], str]:
    """Unpack as ctr does (everything under a lease, so a collection running meanwhile keeps
    it); returns the diff IDs the daemon computed and the top chain key."""
    from ctrd.api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc

    ch = grpc.insecure_channel("unix:" + address)
    content, snaps = cpb_grpc.ContentStub(ch), spb_grpc.SnapshotsStub(ch)
    diff = dpb_grpc.DiffStub(ch)
    lease_id = f"unpack-{os.urandom(4).hex()}"
    leases_pb2_grpc.LeasesStub(ch).Create(leases_pb2.CreateRequest(id=lease_id), metadata=NS)
    md = NS + (("containerd-lease", lease_id),)
    parent, ids = "", []
    for i, entries in enumerate(layers):
        blob, _ = layer(entries)
        d = ingest(content, blob, md)
        key = f"extract-{i}"
        mounts = snaps.Prepare(spb.PrepareSnapshotRequest(snapshotter=snapshotter, key=key,
                                                          parent=parent), metadata=md).mounts
        applied = diff.Apply(dpb.ApplyRequest(
            diff=descriptor_pb2.Descriptor(media_type=GZIP, digest=d, size=len(blob)),
            mounts=mounts), metadata=md).applied
        ids.append(applied.digest)
        name = f"layer-{i}"
        snaps.Commit(spb.CommitSnapshotRequest(snapshotter=snapshotter, name=name, key=key,
                                               labels=ROOT), metadata=md)
        parent = name
    ch.close()
    return ids, parent


def tree(address: str, snapshotter: str, top: str) -> dict[str, tuple]:
    """The file tree of a view of ``top``, mounted with the mounts the daemon returns."""
    ch = grpc.insecure_channel("unix:" + address)
    snaps = spb_grpc.SnapshotsStub(ch)
    mounts = snaps.View(spb.ViewSnapshotRequest(snapshotter=snapshotter, key="check",
                                                parent=top, labels=ROOT), metadata=NS).mounts
    from ctrd.snapshots.mount import mounted
    from ctrd.snapshots.snapshotter import Mount

    out = {}
    try:
        with mounted([Mount(m.type, m.source, list(m.options), m.target)
                      for m in mounts]) as root:
            for dirpath, dirs, files in os.walk(root):
                for name in dirs + files:
                    p = os.path.join(dirpath, name)
                    st = os.lstat(p)
                    rel = os.path.relpath(p, root)
                    body = (os.readlink(p) if stat.S_ISLNK(st.st_mode) else
                            hashlib.sha256(open(p, "rb").read()).hexdigest()
                            if stat.S_ISREG(st.st_mode) else "")
                    out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, body,
                                st.st_nlink if stat.S_ISREG(st.st_mode) else 0)
    finally:
        snaps.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key="check"),
                     metadata=NS)
        ch.close()
    return out


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_apply_matches_containerd(ctrd, containerd, snapshotter):
    expected = [layer(e)[1] for e in LAYERS]
    ours_ids, ours_top = unpack(ctrd.address, snapshotter, LAYERS)
    theirs_ids, theirs_top = unpack(containerd.address, snapshotter, LAYERS)
    assert ours_ids == theirs_ids == expected
    ours = tree(ctrd.address, snapshotter, ours_top)
    theirs = tree(containerd.address, snapshotter, theirs_top)
    assert ours == theirs
    assert "etc/deleteme" not in ours and "opaque/old" not in ours and "opaque/new" in ours


@pytest.mark.parametrize("evil", [
    # Symlinks resolve inside the root (containerd's RootPath): applied, but contained.
    lambda out: [("escape", "sym", str(out), 0o777), ("escape/pwned", "file", b"x", 0o644)],
    lambda out: [("up", "sym", "../../../../../../" + str(out), 0o777),
                 ("up/pwned", "file", b"x", 0o644)],
    # A hardlink to a file outside the root: refused.
    lambda out: [("hl", "link", str(out / "target"), 0o644)],
    lambda out: [("../../../../" + str(out) + "/pwned", "file", b"x", 0o644)],
])
def test_hostile_layers_never_write_outside(ctrd, tmp_root, evil):
    outside = tmp_root / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"keep")
    try:
        unpack(ctrd.address, "overlayfs", [evil(outside)])
    except grpc.RpcError as e:  # refused is fine; writing outside is not
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert sorted(p.name for p in outside.iterdir()) == ["target"]
    assert (outside / "target").read_bytes() == b"keep"
    assert os.stat(outside / "target").st_nlink == 1
    r = subprocess.run([CTR, "--address", ctrd.address, "version"], capture_output=True)
    assert r.returncode == 0


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_diff_then_apply_round_trips(ctrd, snapshotter):
    """What a container commit does: Diff(parent view, changed snapshot) makes a layer that,
    applied on the parent, reproduces the changed tree (additions, changes, deletions)."""
    from ctrd.snapshots.mount import mounted
    from ctrd.snapshots.snapshotter import Mount

    _, top = unpack(ctrd.address, snapshotter, LAYERS)
    ch = grpc.insecure_channel("unix:" + ctrd.address)
    snaps, diff = spb_grpc.SnapshotsStub(ch), dpb_grpc.DiffStub(ch)

    def conv(ms):
        return [Mount(m.type, m.source, list(m.options), m.target) for m in ms]

    work = snaps.Prepare(spb.PrepareSnapshotRequest(snapshotter=snapshotter, key="work",
                                                    parent=top, labels=ROOT),
                         metadata=NS).mounts
    with mounted(conv(work)) as root:
        os.makedirs(os.path.join(root, "new/dir"))
        with open(os.path.join(root, "new/dir/file"), "w") as f:
            f.write("fresh")
        with open(os.path.join(root, "etc/passwd"), "a") as f:
            f.write("user:x:1000:1000::/home/user:/bin/sh\n")
        os.unlink(os.path.join(root, "etc/added"))
        import shutil
        shutil.rmtree(os.path.join(root, "opaque"))
        os.chmod(os.path.join(root, "bin/tool"), 0o700)
    snaps.Commit(spb.CommitSnapshotRequest(snapshotter=snapshotter, name="committed",
                                           key="work", labels=ROOT), metadata=NS)
    lower = snaps.View(spb.ViewSnapshotRequest(snapshotter=snapshotter, key="lower-view",
                                               parent=top, labels=ROOT), metadata=NS).mounts
    upper = snaps.View(spb.ViewSnapshotRequest(snapshotter=snapshotter, key="upper-view",
                                               parent="committed", labels=ROOT),
                       metadata=NS).mounts
    layer_desc = diff.Diff(dpb.DiffRequest(left=lower, right=upper, ref="commit-1",
                                           labels=ROOT),
                           metadata=NS).diff
    assert layer_desc.media_type == GZIP and layer_desc.size > 0
    again = snaps.Prepare(spb.PrepareSnapshotRequest(snapshotter=snapshotter, key="again",
                                                     parent=top, labels=ROOT),
                          metadata=NS).mounts
    diff.Apply(dpb.ApplyRequest(diff=layer_desc, mounts=again), metadata=NS)
    snaps.Commit(spb.CommitSnapshotRequest(snapshotter=snapshotter, name="replayed",
                                           key="again", labels=ROOT), metadata=NS)
    for k in ("lower-view", "upper-view"):
        snaps.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=k), metadata=NS)
    ch.close()
    replayed = tree(ctrd.address, snapshotter, "replayed")
    assert replayed == tree(ctrd.address, snapshotter, "committed")
    assert "etc/added" not in replayed and "opaque" not in replayed
    assert replayed["bin/tool"][0] == "-rwx------" and "new/dir/file" in replayed
