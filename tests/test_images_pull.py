"""The real ``ctr images`` against a local registry holding the test images of
:mod:`images`: pull (OCI, Docker schema 2, multi-arch index, a fat image and its zstd twin),
mount and compare the trees of containerd and ctrd, export -> rm --sync -> import, and that
``rm --sync`` of every image leaves no content behind.

containerd 1.6 runs every test now (it validates the images and the registry fixture); the
ctrd runs are skipped, with the reason, while ctrd has no Images service."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

import images
from conftest import CTR, ctr

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

ALL = list(images.REFS)


def require_images_service(daemon) -> None:
    """Skip (at run time) if the daemon does not serve containerd.services.images.v1."""
    r = ctr(daemon.address, "images", "ls")
    if r.returncode != 0:
        err = r.stderr.lower()
        if "unknown service" in err or "unimplemented" in err or "not implemented" in err:
            pytest.skip(f"daemon has no Images service yet: {r.stderr.strip()}")
        raise AssertionError(f"ctr images ls failed: {r.stderr}")


@pytest.fixture(params=["containerd", "ctrd"])
def daemon(request):
    d = request.getfixturevalue(request.param)
    if request.param == "ctrd":
        require_images_service(d)
    return d


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def pull(daemon, registry, name: str, *args: str) -> None:
    ok(ctr(daemon.address, "images", "pull", "--plain-http", *args, registry.ref(name),
           timeout=300))


def image_digests(daemon) -> dict[str, str]:
    """ref -> target digest, from ``ctr images ls``."""
    out = ok(ctr(daemon.address, "images", "ls"))
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return {row[0]: row[2] for row in rows}


def content_digests(daemon) -> set[str]:
    out = ok(ctr(daemon.address, "content", "ls", "-q"))
    return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("name", ALL)
def test_pull(daemon, registry, name):
    pull(daemon, registry, name)
    image = registry.pushed[name]
    assert image_digests(daemon)[registry.ref(name)] == image.digest
    have = content_digests(daemon)
    missing = {d for d in image.blobs if d not in have}
    if name == "busybox-multi":
        # Only the host platform is fetched: the other arch's manifest, config, layer are not.
        assert len(missing) == 3, missing
    else:
        assert not missing
