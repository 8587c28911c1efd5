"""The overlay and native snapshotters through ctrd.snapshots.testsuite, and the mount
helpers. Needs root (real mounts); every mount is undone, even when a test fails."""

from __future__ import annotations

import os

import pytest

from ctrd.snapshots import mount as mountlib
from ctrd.snapshots.native import NativeSnapshotter
from ctrd.snapshots.overlay import OverlaySnapshotter, supported
from ctrd.snapshots.snapshotter import Mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="snapshotters mount: needs root")


def _mounts_under(path: str) -> list[str]:
    path = os.path.realpath(path)
    return [m for m in mountpoints() if m == path or m.startswith(path + "/")]


mountpoints = mountlib.mountpoints


@pytest.fixture(autouse=True)
def no_leftover_mounts(tmp_path):
    yield
    left = _mounts_under(str(tmp_path))
    for m in sorted(left, reverse=True):
        mountlib.unmount(m, retries=1)
    assert not left, f"mounts left behind: {left}"


@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter])
def test_chain_smoke(cls, tmp_path):
    if cls is OverlaySnapshotter and supported(str(tmp_path / "check")):
        pytest.skip(f"overlay unsupported: {supported(str(tmp_path / 'check'))}")
    s = cls(str(tmp_path / "root"))
    try:
        with mountlib.mounted(s.prepare("a", ""), dir=str(tmp_path)) as p:
            with open(os.path.join(p, "x"), "w") as f:
                f.write("1")
        s.commit("c", "a")
        with mountlib.mounted(s.view("v", "c"), dir=str(tmp_path)) as p:
            assert open(os.path.join(p, "x")).read() == "1"
    finally:
        s.close()


def test_compact_lowerdir():
    chdir, opts = mountlib.compact_lowerdir(
        ["index=off", "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs:/r/snapshots/10/fs"])
    assert chdir == "/r/snapshots/"
    assert opts == ["index=off", "lowerdir=3/fs:2/fs:10/fs"]
    assert mountlib.compact_lowerdir(["lowerdir=/a"]) == ("", ["lowerdir=/a"])


def test_parse_options():
    flags, data = mountlib.parse_options(["ro", "rbind", "nosuid", "lowerdir=/x", "rw"])
    assert flags == mountlib.MS_BIND | mountlib.MS_REC | mountlib.MS_NOSUID
    assert data == "lowerdir=/x"
