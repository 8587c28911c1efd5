"""The differ's unpack limits (ctrd.diff.limits): the rule on its numbers, the streaming
enforcement with small configured limits (unit and through every path that applies layers:
Diff.Apply for ``ctr images import`` and ``ctrctl import``, the daemon-side pull, Transfer),
the free-disk reserve, and real 2 GiB bombs (gzip and zstd, built streaming here) refused
through ``ctr images import`` and ``ctrctl import`` with nothing left behind."""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import CTR, ctr
from ctrd.diff import differ, limits
from ctrd.diff.compression import open_decompressed
from ctrd.diff.limits import DiskReserve, UnpackLimits, UnpackRefused
from ctrd.snapshots.snapshotter import Mount
from support.cmd import ctl, ok
from support.hostile import GZIP, ZSTD, bomb_layer, image, oci_archive, sha, small_layer
from support.hostile import static_registry  # noqa: F401 - fixture
from support.poll import wait_until

GiB, MiB = 1 << 30, 1 << 20
SECTION = '[plugins."io.containerd.differ.v1.walking"]'
SMALL = (f"version = 2\n{SECTION}\nmax_unpacked_bytes = {4 * MiB}\n"
         "max_expansion_ratio = 2\n")


# -- the rule ----------------------------------------------------------------------------------

def test_defaults_are_the_documented_rule():
    lim = UnpackLimits()
    assert (lim.max_unpacked_bytes, lim.max_expansion_ratio) == (GiB, 100.0)
    assert lim.allowed(2 * MiB) == GiB                 # the floor
    assert lim.allowed(20 * GiB) == 2000 * GiB         # 100x past it


@pytest.mark.parametrize("compressed, unpacked", [
    (int(10 * GiB / 1.1), 10 * GiB),    # a big real layer, compressed 1.1:1
    (40 * 1024, GiB),                   # a 1 GiB layer of zeros (zstd: ~40 KB)
    (2 * MiB, GiB),                     # the same in gzip
    (300 * MiB, 3 * GiB),               # 10:1, large
    (0, GiB),                           # an empty blob claim cannot lower the floor
])
def test_realistic_layers_accepted(compressed, unpacked):
    assert UnpackLimits().accepts(compressed, unpacked)


@pytest.mark.parametrize("compressed, unpacked", [
    (2 * MiB, 2 * GiB),                 # gzip of 2 GiB of zeros
    (70 * 1024, 2 * GiB),               # zstd of the same
    (GiB // 200, GiB + 1),              # just past the floor, 200:1
    (20 * MiB, 2001 * MiB + GiB),       # past 100x above the floor
])
def test_bombs_refused_by_the_rule(compressed, unpacked):
    assert not UnpackLimits().accepts(compressed, unpacked)


def test_zero_turns_the_limit_off():
    assert UnpackLimits(max_unpacked_bytes=0).allowed(1) is None
    assert UnpackLimits(max_unpacked_bytes=0).accepts(1, 1 << 50)


# -- streaming enforcement, in process ---------------------------------------------------------

class _Blob:
    """A content ReaderAt over bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def read_at(self, offset: int, n: int) -> bytes:
        return self.data[offset:offset + n]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mt", [GZIP, ZSTD])
def test_stream_hands_on_no_byte_past_the_limit(mt):
    layer = bomb_layer(64 * MiB, mt)
    lim = UnpackLimits(max_unpacked_bytes=5 * MiB + 123, max_expansion_ratio=0)
    s = open_decompressed(io.BytesIO(layer.blob), mt, max_size=lim.allowed(len(layer.blob)),
                          refuse=lambda: lim.refused("sha256:x", len(layer.blob)))
    passed = 0
    with pytest.raises(UnpackRefused):
        while chunk := s.read(1 << 20):
            passed += len(chunk)
    assert 4 * MiB < passed <= 5 * MiB + 123


@pytest.mark.parametrize("mt", [GZIP, ZSTD])
def test_apply_refused_names_layer_limit_and_keys(tmp_path, mt):
    layer = bomb_layer(32 * MiB, mt)
    lim = UnpackLimits(max_unpacked_bytes=4 * MiB, max_expansion_ratio=2, min_free_bytes=0)
    target = tmp_path / "snap"
    target.mkdir()
    digest = sha(layer.blob)
    with pytest.raises(UnpackRefused) as e:
        differ.apply_to_mounts(_Blob(layer.blob), mt, [Mount("bind", str(target), ["rbind"])],
                               layer=digest, limits=lim)
    msg = str(e.value)
    for part in (digest, f"{4 * MiB} bytes", "max_unpacked_bytes = 4194304",
                 "max_expansion_ratio = 2", 'plugins."io.containerd.differ.v1.walking"'):
        assert part in msg, msg
    assert os.listdir(target) == []  # the half-written file is gone


def test_refused_layer_removes_the_files_it_wrote(tmp_path):
    files = {f"f{i}": os.urandom(MiB) for i in range(3)} | {"zz": bytes(16 * MiB)}
    layer = small_layer(files)
    lim = UnpackLimits(max_unpacked_bytes=4 * MiB, max_expansion_ratio=1, min_free_bytes=0)
    with pytest.raises(UnpackRefused):
        differ.apply_to_mounts(_Blob(layer.blob), GZIP,
                               [Mount("bind", str(tmp_path), ["rbind"])], layer="sha256:l",
                               limits=lim)
    assert os.listdir(tmp_path) == []


def test_realistic_layer_passes_default_limits(tmp_path):
    layer = small_layer({"a": os.urandom(3 * MiB), "b": bytes(8 * MiB)})
    got = differ.apply_to_mounts(_Blob(layer.blob), GZIP,
                                 [Mount("bind", str(tmp_path), ["rbind"])],
                                 layer="sha256:l", limits=UnpackLimits())
    assert got.diff_id == layer.diff_id
    assert (tmp_path / "b").stat().st_size == 8 * MiB


def test_free_disk_reserve_before_the_first_byte(tmp_path):
    layer = small_layer({"a": b"a"})
    lim = UnpackLimits(min_free_bytes=1 << 62)
    with pytest.raises(DiskReserve, match="min_free_bytes") as e:
        differ.apply_to_mounts(_Blob(layer.blob), GZIP,
                               [Mount("bind", str(tmp_path), ["rbind"])], layer="sha256:l",
                               limits=lim)
    assert "sha256:l" in str(e.value)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_tmpfs():
    d = tempfile.mkdtemp(prefix="ctrd-limits-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", d], check=True)
    try:
        yield Path(d)
    finally:
        subprocess.run(["umount", d], check=True)
        os.rmdir(d)


def test_free_disk_reserve_while_streaming(small_tmpfs, monkeypatch):
    """The reserve is checked as the layer streams (every FREE_CHECK_EVERY bytes): a layer
    that would leave less than min_free_bytes stops there, and its file is gone."""
    monkeypatch.setattr(differ, "FREE_CHECK_EVERY", 2 * MiB)
    layer = bomb_layer(48 * MiB)
    lim = UnpackLimits(min_free_bytes=32 * MiB)
    with pytest.raises(DiskReserve, match="less than min_free_bytes"):
        differ.apply_to_mounts(_Blob(layer.blob), GZIP,
                               [Mount("bind", str(small_tmpfs), ["rbind"])], layer="sha256:l",
                               limits=lim)
    assert os.listdir(small_tmpfs) == []
    st = os.statvfs(small_tmpfs)
    assert st.f_bavail * st.f_frsize > 60 * MiB  # the blocks came back


def test_daemon_limits_installed_by_the_plugin_config():
    from ctrd.plugins.builtin import DifferConfig, _init_walking_differ

    class _Meta:
        exports: dict = {}

    class _IC:
        config = DifferConfig(max_unpacked_bytes=5, max_expansion_ratio=3, min_free_bytes=7)
        meta = _Meta()

    before = limits.current()
    try:
        _init_walking_differ(_IC())
        assert limits.current() == UnpackLimits(5, 3.0, 7)
    finally:
        limits.configure(before)


# -- through the daemon ------------------------------------------------------------------------

needs_ctr = pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")


def _snapshots(d, ns: str = "default") -> list[str]:
    return ok(ctr(d.address, "snapshots", "ls", namespace=ns)).splitlines()[1:]


def _nothing_left(d, ns: str = "default") -> None:
    """No image, snapshot, lease or ingest in ``ns``; after a GC no content, and the
    snapshotter's disk back to almost nothing (removal is asynchronous: GC reclaims)."""
    def listed(*args: str) -> list[str]:
        return ok(ctr(d.address, *args, namespace=ns)).splitlines()

    assert listed("images", "ls", "-q") == []
    assert _snapshots(d, ns) == []
    assert listed("leases", "ls", "-q") == []
    assert listed("content", "active")[1:] == []
    ok(ctl(d, "gc"))
    assert listed("content", "ls", "-q") == []
    snaps = Path(d.root) / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"

    def collected() -> bool:
        ok(ctl(d, "gc"))
        used = sum(f.lstat().st_size for f in snaps.rglob("*") if f.is_file()) \
            if snaps.exists() else 0
        return used < 8 * MiB

    assert wait_until(collected, 60, what="snapshot disk given back", interval=0.5) is True


def _bomb_archive(tmp_path: Path, size: int, mt: str, name: str) -> tuple[Path, str]:
    layer = bomb_layer(size, mt)
    return oci_archive(tmp_path / "bomb.tar", image([layer]), name), sha(layer.blob)


@pytest.mark.integration
@pytest.mark.parametrize("mt", [GZIP, ZSTD])
def test_configured_limits_through_ctrctl_import(start_ctrd, tmp_path, mt):
    d = start_ctrd(config_text=SMALL)
    path, digest = _bomb_archive(tmp_path, 16 * MiB, mt, "example.com/bomb:small")
    r = ctl(d, "import", str(path))
    assert r.returncode == 1, r.stdout
    for part in (digest, "max_unpacked_bytes = 4194304", "max_expansion_ratio = 2",
                 "io.containerd.differ.v1.walking"):
        assert part in r.stderr, r.stderr
    _nothing_left(d)
    # Within the limits, the same daemon imports.
    good = small_layer({"etc/hello": b"hello\n"}, mt)
    ok(ctl(d, "import", str(oci_archive(tmp_path / "good.tar", image([good]),
                                        "example.com/good:1"))))
    assert ok(ctr(d.address, "images", "ls", "-q")).split() == ["example.com/good:1"]


@pytest.mark.integration
@needs_ctr
def test_configured_limits_through_ctr_import(start_ctrd, tmp_path):
    """Debian's ctr unpacks client-side through ctrd's Diff.Apply: refused there. ctr keeps
    the image record it created before unpacking (its own behaviour); no snapshot stays."""
    d = start_ctrd(config_text=SMALL)
    path, digest = _bomb_archive(tmp_path, 16 * MiB, GZIP, "example.com/bomb:ctr")
    r = ctr(d.address, "images", "import", str(path), timeout=300)
    assert r.returncode != 0, r.stdout
    assert digest in r.stderr and "max_unpacked_bytes" in r.stderr, r.stderr
    assert _snapshots(d) == []


@pytest.mark.integration
def test_configured_limits_through_daemon_pull(start_ctrd, static_registry):
    d = start_ctrd(config_text=SMALL)
    layer = bomb_layer(16 * MiB)
    ref = static_registry.add("test/bomb", "1", image([layer]))
    r = ctl(d, "pull", "--plain-http", ref, timeout=120)
    assert r.returncode == 1, r.stdout
    assert sha(layer.blob) in r.stderr and "max_unpacked_bytes" in r.stderr, r.stderr
    _nothing_left(d)


@pytest.mark.integration
def test_configured_limits_through_cri_pull(start_ctrd, static_registry):
    from cri_client import CRIClient, rpc_error

    d = start_ctrd(config_text=SMALL)
    layer = bomb_layer(16 * MiB)
    ref = static_registry.add("test/bomb", "cri", image([layer]))
    with CRIClient(d.address) as c:
        err = rpc_error(c.pull, ref)
        assert sha(layer.blob) in err.details() and "max_unpacked_bytes" in err.details()
        assert [i for i in c.list_images() if ref in i.repo_tags] == []
    _nothing_left(d, "k8s.io")


@pytest.mark.integration
def test_configured_limits_through_transfer_import(start_ctrd, tmp_path):
    from transfer_util import ctr2, need_ctr2

    need_ctr2()
    d = start_ctrd(config_text=SMALL)
    path, digest = _bomb_archive(tmp_path, 16 * MiB, ZSTD, "example.com/bomb:xfer")
    r = ctr2(d.address, "images", "import", str(path), namespace="default")
    assert r.returncode != 0, r.stdout
    assert digest in r.stderr and "max_unpacked_bytes" in r.stderr, r.stderr
    _nothing_left(d)


@pytest.mark.integration
def test_configured_limits_through_transfer_pull(start_ctrd, static_registry):
    from transfer_util import ctr2, need_ctr2

    need_ctr2()
    d = start_ctrd(config_text=SMALL)
    layer = bomb_layer(16 * MiB, ZSTD)
    ref = static_registry.add("test/bomb", "xfer", image([layer]))
    r = ctr2(d.address, "images", "pull", "--plain-http", ref, namespace="default")
    assert r.returncode != 0, r.stdout
    assert sha(layer.blob) in r.stderr and "max_unpacked_bytes" in r.stderr, r.stderr
    _nothing_left(d)


# -- the real 2 GiB bombs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """2 GiB of zeros as a gzip and a zstd layer (a few MB and less), as OCI archives."""
    base = tmp_path_factory.mktemp("bombs")
    out = {}
    for mt in (GZIP, ZSTD):
        layer = bomb_layer(2 * GiB, mt)
        assert len(layer.blob) < 4 * MiB
        kind = mt.rsplit("+", 1)[1]
        out[kind] = (oci_archive(base / f"{kind}.tar", image([layer]),
                                 f"example.com/bomb:{kind}"), sha(layer.blob))
    return out


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_2gib_bomb_refused_through_ctrctl_import(ctrd, bombs, kind):
    path, digest = bombs[kind]
    r = ctl(ctrd, "import", str(path), timeout=600)
    assert r.returncode == 1, r.stdout
    assert digest in r.stderr and f"more than {GiB} bytes" in r.stderr, r.stderr
    assert "max_unpacked_bytes = 1073741824" in r.stderr, r.stderr
    _nothing_left(ctrd)


@pytest.mark.integration
@needs_ctr
@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_2gib_bomb_refused_through_ctr_import(ctrd, bombs, kind):
    path, digest = bombs[kind]
    r = ctr(ctrd.address, "images", "import", str(path), timeout=600)
    assert r.returncode != 0, r.stdout
    assert digest in r.stderr and "max_unpacked_bytes" in r.stderr, r.stderr
    # ctr created the image before unpacking (ctr's behaviour); drop it and check the rest.
    ctr(ctrd.address, "images", "rm", f"example.com/bomb:{kind}")
    _nothing_left(ctrd)
