"""Platforms: an import or pull that cannot unpack for the platform asked (an index with no
manifest for it) fails and creates no image record: ctrctl import and pull, CRI PullImage,
Transfer import and pull with unpack. ``--no-unpack`` still imports (nothing to unpack), and
Debian's ``ctr images import`` keeps its own behaviour (client-side: not ctrd's to change)."""

from __future__ import annotations

import pytest

from conftest import ctr
from support.cmd import ctl, ok
from support.hostile import foreign_arch, image, oci_archive, small_layer
from support.hostile import static_registry  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _foreign():
    """An index whose only manifest is for another architecture."""
    return image([small_layer({"etc/hello": b"hello\n"})], arch=foreign_arch(), in_index=True)


def _no_image(d, ns: str = "default") -> None:
    assert ok(ctr(d.address, "images", "ls", "-q", namespace=ns)).split() == []
    assert ok(ctr(d.address, "snapshots", "ls", namespace=ns)).splitlines()[1:] == []
    assert ok(ctr(d.address, "leases", "ls", "-q", namespace=ns)).split() == []


def test_ctrctl_import_without_a_manifest_for_the_platform_fails(ctrd, tmp_path):
    path = oci_archive(tmp_path / "foreign.tar", _foreign(), "example.com/foreign:1")
    r = ctl(ctrd, "import", str(path))
    assert r.returncode == 1, r.stdout
    assert "no match for platform" in r.stderr, r.stderr
    _no_image(ctrd)
    ok(ctl(ctrd, "gc"))
    assert ok(ctr(ctrd.address, "content", "ls", "-q")).split() == []
    # Without unpack there is nothing to match: the import is what was asked.
    ok(ctl(ctrd, "import", "--no-unpack", str(path)))
    assert ok(ctr(ctrd.address, "images", "ls", "-q")).split() == ["example.com/foreign:1"]


def test_ctrctl_import_for_the_platform_asked(ctrd, tmp_path):
    """--platform names the foreign platform: its manifest is there, so it imports."""
    path = oci_archive(tmp_path / "foreign.tar", _foreign(), "example.com/foreign:2")
    ok(ctl(ctrd, "import", "--platform", f"linux/{foreign_arch()}", str(path)))
    assert ok(ctr(ctrd.address, "images", "ls", "-q")).split() == ["example.com/foreign:2"]


def test_ctrctl_pull_without_a_manifest_for_the_platform_fails(ctrd, static_registry):
    ref = static_registry.add("test/foreign", "1", _foreign())
    r = ctl(ctrd, "pull", "--plain-http", ref, timeout=120)
    assert r.returncode == 1, r.stdout
    assert "no match for platform" in r.stderr, r.stderr
    _no_image(ctrd)


def test_cri_pull_without_a_manifest_for_the_platform_fails(ctrd, static_registry):
    from cri_client import CRIClient, rpc_error

    ref = static_registry.add("test/foreign", "cri", _foreign())
    with CRIClient(ctrd.address) as c:
        err = rpc_error(c.pull, ref)
        assert "no match for platform" in err.details(), err.details()
        assert [i for i in c.list_images() if ref in i.repo_tags] == []
    _no_image(ctrd, "k8s.io")


def test_transfer_import_without_a_manifest_for_the_platform_fails(ctrd, tmp_path):
    from transfer_util import ctr2, need_ctr2

    need_ctr2()
    path = oci_archive(tmp_path / "foreign.tar", _foreign(), "example.com/foreign:x")
    r = ctr2(ctrd.address, "images", "import", str(path), namespace="default")
    assert r.returncode != 0, r.stdout
    assert "no match for platform" in r.stderr, r.stderr
    _no_image(ctrd)
    ok(ctr2(ctrd.address, "images", "import", "--no-unpack", str(path), namespace="default"))
    assert "example.com/foreign:x" in ok(ctr(ctrd.address, "images", "ls", "-q")).split()


def test_transfer_pull_without_a_manifest_for_the_platform_fails(ctrd, static_registry):
    from transfer_util import ctr2, need_ctr2

    need_ctr2()
    ref = static_registry.add("test/foreign", "xfer", _foreign())
    r = ctr2(ctrd.address, "images", "pull", "--plain-http", ref, namespace="default")
    assert r.returncode != 0, r.stdout
    assert "no match for platform" in r.stderr, r.stderr
    _no_image(ctrd)
