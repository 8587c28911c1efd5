"""The overlay and native snapshotters through ctrd.snapshots.testsuite, and the mount
helpers. Needs root (real mounts); every mount is undone, even when a test fails."""

from __future__ import annotations

import os

import pytest

from ctrd.snapshots import mount as mountlib
from ctrd.snapshots.native import NativeSnapshotter
from ctrd.snapshots.overlay import OverlaySnapshotter, supported
from ctrd.snapshots.snapshotter import Mount
from ctrd.snapshots.testsuite import SnapshotSuite

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


def _overlay_unsupported() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="ctrd-overlay-check-")
    try:
        return supported(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


_OVERLAY_UNSUPPORTED = _overlay_unsupported()


class TestOverlay(SnapshotSuite):
    pytestmark = pytest.mark.skipif(bool(_OVERLAY_UNSUPPORTED),
                                    reason=f"overlay unsupported: {_OVERLAY_UNSUPPORTED}")
    make_snapshotter = staticmethod(lambda root: OverlaySnapshotter(str(root)))


class TestOverlayAsyncRemove(SnapshotSuite):
    pytestmark = TestOverlay.pytestmark
    make_snapshotter = staticmethod(
        lambda root: OverlaySnapshotter(str(root), async_remove=True))


class TestNative(SnapshotSuite):
    make_snapshotter = staticmethod(lambda root: NativeSnapshotter(str(root)))


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


def test_mounted_cleans_up_on_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    seen = []
    with pytest.raises(RuntimeError):
        with mountlib.mounted([Mount("bind", str(src), ["rbind", "ro"])],
                              dir=str(tmp_path)) as p:
            seen.append(p)
            assert open(os.path.join(p, "f")).read() == "x"
            with pytest.raises(OSError):
                open(os.path.join(p, "g"), "w")
            raise RuntimeError("boom")
    assert not os.path.exists(seen[0])
    assert not _mounts_under(str(tmp_path))


def test_mount_failure_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        with mountlib.mounted([Mount("bind", str(tmp_path / "missing"), ["rbind"])],
                              dir=str(tmp_path)):
            pass
    assert os.listdir(tmp_path) == []


def test_overlay_many_lowerdirs(tmp_path):
    """200 lowerdirs with long absolute paths (> a page of options) mount through the
    relative-path child; our cwd is unchanged."""
    if _OVERLAY_UNSUPPORTED:
        pytest.skip(f"overlay unsupported: {_OVERLAY_UNSUPPORTED}")
    base = tmp_path / ("long-directory-name-" * 3) / "snapshots"
    lowers = []
    for i in range(200):
        d = base / str(i) / "fs"
        d.mkdir(parents=True)
        (d / f"f{i}").write_text(str(i))
        lowers.append(str(d))
    opt = "lowerdir=" + ":".join(reversed(lowers))
    assert len(opt) > mountlib.PAGE_SIZE
    cwd = os.getcwd()
    with mountlib.mounted([Mount("overlay", "overlay", [opt])], dir=str(tmp_path)) as p:
        assert len(os.listdir(p)) == 200
        assert open(os.path.join(p, "f7")).read() == "7"
    assert os.getcwd() == cwd


def test_unmount_not_mounted(tmp_path):
    mountlib.unmount(str(tmp_path))
    mountlib.unmount(str(tmp_path / "missing"))
    mountlib.unmount_all(str(tmp_path))


def test_zz_no_mounts_left_under_tmp():
    """Runs last: nothing this module mounted is left anywhere under /tmp."""
    left = [m for m in mountpoints() if m.startswith("/tmp/") and
            ("ctrd-mount-" in m or "pytest-of-" in m)]
    assert not left, left
