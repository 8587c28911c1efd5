"""Idmapped mounts (ctrd.snapshots.idmap) and the overlay snapshotter's remapped snapshots
(containerd's ``containerd.io/snapshot/uidmapping`` labels -> ``uidmap=``/``gidmap=`` mount
options -> idmapped lowerdirs). Real mounts; needs root and a kernel with idmapped mounts.
"""

from __future__ import annotations

import os

import pytest

from ctrd.errdefs import InvalidArgument
from ctrd.snapshots import idmap
from ctrd.snapshots import mount as mountlib
from ctrd.snapshots.overlay import LABEL_GIDMAPPING, LABEL_UIDMAPPING, OverlaySnapshotter

LABELS = {LABEL_UIDMAPPING: "0:300000:65536", LABEL_GIDMAPPING: "0:310000:65536"}


@pytest.fixture(autouse=True)
def _need_idmap():
    from ctrd.cri import userns

    if os.geteuid() != 0 or not userns.supported():
        pytest.skip("needs root and idmapped mounts")


def test_parse_and_to_host():
    assert idmap.parse("0:100000:65536") == [(0, 100000, 65536)]
    assert idmap.parse("0:1:2,5:10:1") == [(0, 1, 2), (5, 10, 1)]
    assert idmap.format_map([(0, 1, 2), (5, 10, 1)]) == "0:1:2,5:10:1"
    for bad in ("", "0:1", "0:1:0", "a:1:2", "0:4294967295:2", "-1:0:1"):
        with pytest.raises(ValueError):
            idmap.parse(bad)
    assert idmap.to_host([(0, 100, 10)], 9) == 109
    assert idmap.to_host([(0, 100, 10)], 10) == -1


def _assert_no_mounts_under(path):
    assert not [m for m in mountlib.mountpoints() if m.startswith(str(path))]


def test_remapped_overlay_snapshot(tmp_path):
    snap = OverlaySnapshotter(str(tmp_path / "root"))
    try:
        m = snap.prepare("layer")
        with mountlib.mounted(m, dir=str(tmp_path)) as d:
            with open(os.path.join(d, "f"), "w") as f:
                f.write("x")
            os.chown(os.path.join(d, "f"), 0, 0)
        snap.commit("base", "layer")
        mounts = snap.prepare("ctr", "base", labels=LABELS)
        assert mounts[0].type == "overlay"
        assert "uidmap=0:300000:65536" in mounts[0].options
        assert "gidmap=0:310000:65536" in mounts[0].options
        assert snap.mounts("ctr") == mounts
        with mountlib.mounted(mounts, dir=str(tmp_path)) as d:
            # the lower's root-owned file shows as the mapped root's; the top is the
            # mapped root's (the snapshotter chowned the upper dir)
            st = os.stat(os.path.join(d, "f"))
            assert (st.st_uid, st.st_gid) == (300000, 310000)
            st = os.stat(d)
            assert (st.st_uid, st.st_gid) == (300000, 310000)
            # the idmapped clones are gone once the overlay is up
            assert not os.path.exists(d + ".idmap")
            assert sum(1 for p in mountlib.mountpoints() if p.startswith(str(tmp_path))) == 1
        _assert_no_mounts_under(tmp_path)
        # the layer itself is unchanged
        st = os.stat(tmp_path / "root" / "snapshots" / "1" / "fs" / "f")
        assert (st.st_uid, st.st_gid) == (0, 0)
        with pytest.raises(InvalidArgument):
            snap.prepare("bad", "base", labels={LABEL_UIDMAPPING: "1:300000:10"})
    finally:
        snap.close()


def test_clone_idmapped_and_detach(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("x")
    fd = idmap.userns_fd([(0, 400000, 1000)], [(0, 400000, 1000)])
    try:
        idmap.clone_idmapped(str(src), str(dst), fd)
    finally:
        os.close(fd)
    try:
        assert os.stat(dst / "f").st_uid == 400000
        assert os.stat(src / "f").st_uid == 0
    finally:
        idmap.detach(str(dst))
    _assert_no_mounts_under(tmp_path)
    assert not (dst / "f").exists()
