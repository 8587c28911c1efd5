"""``ctr images import`` of containerd 2.3.4 (through the Transfer service, the archive on a
byte stream) against ctrd, side by side with containerd 2.3.4 importing the same archives
with the same flags: the same image records (names, targets, labels), the same snapshots,
ctr's progress shown. Hostile archives and a client that vanishes mid-import leave
nothing: no image, no ingest, no spool file, the daemon serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile

import pytest

import containerd2
from transfer_util import (build_archives, ctr2, image_rows,
                           need_containerd2, need_ctr2, ok, snapshot_keys,
                           start_containerd2)
from support.archives import _add, _big_archive, _sha
from support.poll import wait_until

pytestmark = pytest.mark.integration

CASES = {
    "default": ["{oci}"],
    "base-name": ["--base-name", "example.com/bb", "{oci}"],
    "digests": ["--digests", "{oci}"],
    "index-name": ["--digests", "--index-name", "idx", "{oci}"],
    "docker": ["{docker}"],
    "skip-digest-for-named": ["--digests", "--skip-digest-for-named", "{docker}"],
    "all-platforms": ["--all-platforms", "{multi}"],
    "platform": ["--platform", "linux/arm64", "{multi}"],
    "index": ["{multi}"],
    "labels-no-unpack": ["--label", "a=b", "--no-unpack", "{docker}"],
    # the client-side path (Content, Images, Leases, Diff, Snapshots services)
    "local-oci": ["--local", "{oci}"],
    "local-docker": ["--local", "--digests", "{docker}"],
}


@pytest.fixture
def archives(tmp_root):
    return build_archives(tmp_root / "archives")


@pytest.fixture
def c2(tmp_root):
    need_containerd2()
    d = start_containerd2(tmp_root)
    yield d
    d.stop()


def test_import_matches_containerd(ctrd, c2, archives):
    """Every flag set (each in its own namespace), one daemon pair: the records and
    snapshots of ctrd equal containerd 2.3.4's."""
    for case, args in CASES.items():
        argv = [a.format(**{k: str(v) for k, v in archives.items()}) for a in args]
        seen = []
        for address in (ctrd.address, c2.address):
            out = ok(ctr2(address, "images", "import", *argv, namespace=case))
            assert ("unpacking" if "--local" in argv else "saved") in out, (case, out)
            seen.append((image_rows(address, case), snapshot_keys(address, case)))
        assert seen[0][0] == seen[1][0], case
        assert seen[0][1] == seen[1][1], case
        assert seen[0][0], case


def test_import_from_stdin_then_run_checks(ctrd, archives):
    need_ctr2()
    with open(archives["oci"], "rb") as f:
        ok(ctr2(ctrd.address, "images", "import", "--base-name", "example.com/in", "-",
                stdin=f))
    out = ok(ctr2(ctrd.address, "images", "check"))
    assert "example.com/in:latest" in out and "complete" in out
    assert snapshot_keys(ctrd.address)  # unpacked for the host


def test_compress_blobs_gzips_docker_layers(ctrd, archives):
    need_ctr2()
    ok(ctr2(ctrd.address, "images", "import", "--compress-blobs", str(archives["docker"])))
    target = ok(ctr2(ctrd.address, "images", "ls")).splitlines()[1].split()[2]
    man = json.loads(ok(ctr2(ctrd.address, "content", "get", target)))
    assert {x["mediaType"] for x in man["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"}
    assert "complete" in ok(ctr2(ctrd.address, "images", "check"))


def _hostile(path, case: str):
    from support.archives import _layout, _minimal_image

    config, man, index = _minimal_image()
    with tarfile.open(path, "w") as t:
        if case == "traversal":
            _add(t, "../../etc/evil", b"x")
        elif case == "absolute":
            _add(t, "/etc/evil", b"x")
        elif case == "big-index":
            _add(t, "index.json", b" " * ((4 << 20) + 1))
        elif case == "bad-json":
            _add(t, "manifest.json", b"[{not json")
        elif case == "bomb":
            for i in range(10_001):
                _add(t, f"blobs/sha256/{i:064x}")
        elif case == "wrong-digest":
            for name, data in _layout([config, man], index):
                _add(t, name, data + b" " if name.endswith(_sha(config)) else data)
        elif case == "missing-blob":
            for name, data in _layout([man], index):
                _add(t, name, data)
    if case == "huge-entry":  # a header claiming 1 TiB, then the archive ends
        with open(path, "wb") as f:
            ti = tarfile.TarInfo("blobs/sha256/" + "b" * 64)
            ti.size = 1 << 40
            f.write(ti.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 4096)
    if case == "not-a-tar":
        path.write_bytes(os.urandom(4096))
    return path


HOSTILE = {"traversal": "traversal", "absolute": "not a relative path",
           "big-index": "limit", "bad-json": "not valid JSON", "bomb": "tar bomb",
           "wrong-digest": "digest", "missing-blob": "missing", "huge-entry": "truncated",
           "not-a-tar": "tar"}


def _nothing_left(d) -> None:
    assert ok(ctr2(d.address, "images", "ls", "-q")).split() == []
    assert wait_until(lambda: len(ok(ctr2(d.address, "content", "active"))
                                  .splitlines()) <= 1, 30, what="ingests") is True
    spool = d.root / "io.containerd.transfer.v1.local"
    assert wait_until(lambda: not spool.exists() or not os.listdir(spool), 30, what="spool")
    assert wait_until(lambda: len(ok(ctr2(d.address, "content", "ls")).splitlines()) <= 1,
                      30, what="content collected")


def test_hostile_archives_through_transfer(ctrd, archives, tmp_root):
    need_ctr2()
    for case, expected in HOSTILE.items():
        path = _hostile(tmp_root / f"{case}.tar", case)
        r = ctr2(ctrd.address, "images", "import", str(path))
        assert r.returncode != 0, (case, r.stdout, r.stderr)
        assert expected in r.stderr, (case, r.stderr)
        _nothing_left(ctrd)
    # the daemon still imports a good archive
    ok(ctr2(ctrd.address, "images", "import", str(archives["docker"])))
    assert ok(ctr2(ctrd.address, "images", "ls", "-q")).split() == ["example.com/hand/made:1"]


def test_client_vanishing_mid_import_leaves_nothing(ctrd, archives):
    need_ctr2()
    data = archives["oci"].read_bytes()
    proc = subprocess.Popen([str(containerd2.CTR), "--address", ctrd.address, "-n", "xfer",
                             "images", "import", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write(data[:len(data) // 2])
        proc.stdin.flush()
        spool = ctrd.root / "io.containerd.transfer.v1.local"
        # the daemon is receiving: its spool file exists
        assert wait_until(lambda: spool.exists() and os.listdir(spool), 30, what="spooling")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
    _nothing_left(ctrd)
    assert "Transfer" in ctrd.read_log()
    with open(archives["oci"], "rb") as f:  # and it still serves
        ok(ctr2(ctrd.address, "images", "import", "-", stdin=f))
    assert len(ok(ctr2(ctrd.address, "images", "ls", "-q")).split()) == 1


def test_client_vanishing_while_the_daemon_imports(ctrd, tmp_root):
    """ctr sent the whole archive and is killed while the daemon stores it: the import
    stops, no record is created, no ingest or prepared snapshot is left, the spool goes."""
    need_ctr2()
    path = tmp_root / "big.tar"
    _big_archive(path)
    total = path.stat().st_size
    spool = ctrd.root / "io.containerd.transfer.v1.local"

    def spooled() -> bool:
        try:
            return any(os.path.getsize(spool / n) == total for n in os.listdir(spool))
        except OSError:
            return False

    proc = subprocess.Popen([str(containerd2.CTR), "--address", ctrd.address, "-n", "xfer",
                             "images", "import", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(spooled, 120, what="the whole archive spooled")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _no_import_left(ctrd)
    assert "example.com/big:1" not in ok(ctr2(ctrd.address, "images", "ls", "-q"))
    ok(ctr2(ctrd.address, "images", "import", str(path)))  # it still serves, and imports
    assert ok(ctr2(ctrd.address, "images", "ls", "-q")).split() == ["example.com/big:1"]


def _no_import_left(d) -> None:
    spool = d.root / "io.containerd.transfer.v1.local"
    assert wait_until(lambda: not spool.exists() or not os.listdir(spool), 120, what="spool")
    assert ok(ctr2(d.address, "images", "ls", "-q")).split() == []
    assert wait_until(lambda: len(ok(ctr2(d.address, "content", "active"))
                                  .splitlines()) <= 1, 30, what="ingests") is True
    assert "Active" not in ok(ctr2(d.address, "snapshots", "ls"))


def test_compressed_archives(ctrd, archives, tmp_root):
    """gzip and zstd archives import as containerd's DecompressStream reads them; a corrupt
    zstd stream is a clear error."""
    import gzip

    import zstandard

    need_ctr2()
    gz = tmp_root / "docker.tar.gz"
    gz.write_bytes(gzip.compress(archives["docker"].read_bytes()))
    zst = tmp_root / "oci.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(archives["oci"].read_bytes()))
    for path in (gz, zst):
        ok(ctr2(ctrd.address, "images", "import", str(path)))
    assert len(ok(ctr2(ctrd.address, "images", "ls", "-q")).split()) == 2
    bad = tmp_root / "bad.tar.zst"
    bad.write_bytes(zst.read_bytes()[:200] + os.urandom(2000))
    r = ctr2(ctrd.address, "images", "import", "--base-name", "bad.example/x", str(bad))
    assert r.returncode != 0 and "invalid argument" in r.stderr, r.stderr
    assert not any(n.startswith("bad.example") for n in
                   ok(ctr2(ctrd.address, "images", "ls", "-q")).split())


def test_spools_left_by_a_dead_daemon_go_at_start(start_ctrd, archives):
    need_ctr2()
    d = start_ctrd()
    spool = d.root / "io.containerd.transfer.v1.local"
    spool.mkdir(mode=0o700, exist_ok=True)
    (spool / "import-left.tar").write_bytes(b"half an archive")
    (spool / "keep.txt").write_bytes(b"not a spool")
    d.proc.kill()
    d.proc.wait()
    d2 = start_ctrd(root=d.root, name="again")
    assert sorted(os.listdir(spool)) == ["keep.txt"]
    ok(ctr2(d2.address, "images", "import", str(archives["docker"])))
    assert sorted(os.listdir(spool)) == ["keep.txt"]
