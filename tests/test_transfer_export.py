"""``ctr images export`` of containerd 2.3.4 (Transfer: the archive streamed back to ctr)
against ctrd, compared with containerd 2.3.4 exporting the same images with the same flags:
the same tar entries (names, types, modes, sizes) and the same index.json and
manifest.json bytes; then the export imports again, into ctrd and into containerd."""

from __future__ import annotations

import pytest

from transfer_util import (build_archives, ctr2, image_rows, member_bytes, members,
                           need_containerd2, need_ctr2, ok, start_containerd2)

pytestmark = pytest.mark.integration

IMAGES = ["example.com/m:multi", "example.com/hand/made:1"]
FLAGS = {"default": [], "skip-manifest-json": ["--skip-manifest-json"],
         "all-platforms": ["--all-platforms"], "platform": ["--platform", "linux/arm64"],
         "skip-non-distributable": ["--skip-non-distributable"],
         "local": ["--local"]}  # the client-side path (Content and Images services)


@pytest.fixture
def archives(tmp_root):
    return build_archives(tmp_root / "archives")


def _entries(doc: bytes | None):
    import json

    return None if doc is None else sorted(json.dumps(e, sort_keys=True)
                                           for e in json.loads(doc))


def _whole(path) -> bool:
    import tarfile

    with open(path, "rb") as f:  # a tar ends with two zero blocks
        f.seek(max(0, path.stat().st_size - 1024))
        if f.read() != b"\0" * 1024:
            return False
    try:
        members(path)
        return True
    except tarfile.ReadError:
        return False


def _load(address: str, archives) -> None:
    ok(ctr2(address, "images", "import", "--all-platforms", "--base-name", "example.com/m",
            str(archives["multi"])))
    ok(ctr2(address, "images", "import", str(archives["docker"])))


def test_export_matches_containerd(ctrd, archives, tmp_root):
    need_containerd2()
    c2 = start_containerd2(tmp_root)
    try:
        for address in (ctrd.address, c2.address):
            _load(address, archives)
        for case, flags in FLAGS.items():
            out = []
            for name, address in (("ctrd", ctrd.address), ("c2", c2.address)):
                path = tmp_root / f"{case}-{name}.tar"
                # containerd answers the Transfer call without waiting for ctr to have
                # written the last bytes, and ctr may exit first: its file is then short
                # now and then (ctrd waits for ctr's last window update). Try again then.
                for _ in range(1 if name == "ctrd" else 5):
                    ok(ctr2(address, "images", "export", *flags, str(path), *IMAGES))
                    if _whole(path):
                        break
                out.append(path)
            assert _whole(out[0]), case  # ctrd's: whole the first time
            assert members(out[0]) == members(out[1]), case
            for doc in ("index.json", "oci-layout"):
                assert member_bytes(out[0], doc) == member_bytes(out[1], doc), (case, doc)
            # containerd writes manifest.json's entries in Go map order (random)
            mj = [member_bytes(p, "manifest.json") for p in out]
            assert _entries(mj[0]) == _entries(mj[1]), case
        # a missing image: the same error
        errs = [ctr2(a, "images", "export", str(tmp_root / "x.tar"), "example.com/none:1")
                for a in (ctrd.address, c2.address)]
        assert [e.returncode != 0 for e in errs] == [True, True]
        assert "not found" in errs[0].stderr and "not found" in errs[1].stderr
        # containerd imports what ctrd exported, and names it the same
        ok(ctr2(c2.address, "images", "import", "--all-platforms",
                str(tmp_root / "all-platforms-ctrd.tar"), namespace="back"))
        ok(ctr2(ctrd.address, "images", "import", "--all-platforms",
                str(tmp_root / "all-platforms-ctrd.tar"), namespace="back"))
        assert image_rows(c2.address, "back") == image_rows(ctrd.address, "back")
    finally:
        c2.stop()


def test_export_to_stdout_and_reimport(ctrd, archives, tmp_root):
    need_ctr2()
    _load(ctrd.address, archives)
    before = image_rows(ctrd.address)
    path = tmp_root / "stdout.tar"
    with open(path, "wb") as f:
        import subprocess

        import containerd2

        r = subprocess.run([str(containerd2.CTR), "--address", ctrd.address, "-n", "xfer",
                            "images", "export", "--all-platforms", "-", *IMAGES], stdout=f,
                           stderr=subprocess.PIPE, timeout=180)
    assert r.returncode == 0, r.stderr
    ok(ctr2(ctrd.address, "images", "rm", "--sync", *IMAGES))
    ok(ctr2(ctrd.address, "images", "import", "--all-platforms", str(path)))
    assert image_rows(ctrd.address) == before
    assert "complete" in ok(ctr2(ctrd.address, "images", "check"))


def test_client_vanishing_mid_export(ctrd, tmp_root):
    """ctr killed while the archive streams to it: the daemon's writer stops (no thread
    left blocked on the client's window), and the next export is whole."""
    import os
    import signal
    import subprocess
    import tarfile

    import containerd2
    from support.archives import _big_archive
    from support.poll import wait_until

    need_ctr2()
    path = tmp_root / "big.tar"
    _big_archive(path)
    ok(ctr2(ctrd.address, "images", "import", str(path)))
    proc = subprocess.Popen([str(containerd2.CTR), "--address", ctrd.address, "-n", "xfer",
                             "images", "export", "-", "example.com/big:1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert len(proc.stdout.read(256 * 1024)) == 256 * 1024  # it is streaming
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    # the export call ends in the daemon (its log says how long it took)
    assert wait_until(lambda: "Transfer/Transfer" in ctrd.read_log()
                      and ctrd.read_log().count("Transfer/Transfer took") >= 2, 30, what="ended")
    assert "never retrieved" not in ctrd.read_log()
    out = tmp_root / "again.tar"
    ok(ctr2(ctrd.address, "images", "export", str(out), "example.com/big:1"))
    with tarfile.open(out) as t:
        sizes = {m.name: m.size for m in t.getmembers()}
    assert sum(sizes.values()) > 96 << 20 and "index.json" in sizes
    assert os.path.getsize(out) >= sum(sizes.values())
