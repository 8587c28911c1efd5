"""The real ctr's snapshot commands against ctrd: what `ctr snapshots mounts` prints mounts on
the host, writes survive commit, and children see them, on overlayfs and native."""

from __future__ import annotations

import subprocess

import pytest

from conftest import ctr
from ctrd.snapshots.mount import unmount

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ctr_client")]


def sh_mount(address: str, snapshotter: str, target, key: str) -> None:
    r = ctr(address, "snapshots", "--snapshotter", snapshotter, "mounts", str(target), key)
    assert r.returncode == 0, r.stderr
    subprocess.run(["sh", "-e"], input=r.stdout, text=True, check=True)


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_mounts_printed_by_ctr_mount_and_writes_survive_commit(ctrd, tmp_root, snapshotter):
    mnt = tmp_root / "mnt"
    mnt.mkdir()

    def snap(*args):
        r = ctr(ctrd.address, "snapshots", "--snapshotter", snapshotter, *args)
        assert r.returncode == 0, r.stderr
        return r.stdout

    snap("prepare", "base")
    sh_mount(ctrd.address, snapshotter, mnt, "base")
    try:
        (mnt / "hello").write_text("from base")
    finally:
        unmount(str(mnt))
    snap("commit", "base-c", "base")
    snap("prepare", "child", "base-c")
    sh_mount(ctrd.address, snapshotter, mnt, "child")
    try:
        assert (mnt / "hello").read_text() == "from base"
        (mnt / "hello").unlink()
        (mnt / "child-file").write_text("child")
    finally:
        unmount(str(mnt))
    snap("commit", "child-c", "child")
    snap("view", "look", "child-c")
    sh_mount(ctrd.address, snapshotter, mnt, "look")
    try:
        assert sorted(p.name for p in mnt.iterdir()) == ["child-file"]
        with pytest.raises(OSError):
            (mnt / "ro").write_text("views are read-only")
    finally:
        unmount(str(mnt))
    r = ctr(ctrd.address, "snapshots", "--snapshotter", snapshotter, "rm", "base-c")
    assert r.returncode == 1 and "cannot remove snapshot with child" in r.stderr
    assert "child-c" in snap("tree")
    info = snap("info", "child-c")
    assert '"Kind": "Committed"' in info and '"Parent": "base-c"' in info
    snap("rm", "look", "child-c", "base-c")
    assert snap("ls").splitlines()[1:] == []
