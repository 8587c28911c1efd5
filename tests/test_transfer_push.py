"""``ctr`` 2.3.4 ``images push`` through the Transfer service, against ctrd and containerd
2.3.4 side by side: the same progress tree (blobs mounted from their distribution source are
"already exists", a manifest the registry has is not put again), the image in the registry
afterwards; pushing to another registry with basic auth (credentials over the auth stream)
uploads every blob.
"""

from __future__ import annotations

import pytest

import containerd2
import ctr2
from support.transfer import auth_registry, c2, pull  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not ctr2.available() or not containerd2.available(),
                                 reason=f"containerd 2.3.4 binaries absent ({ctr2.CTR})")]


def push(address: str, ref: str, *args: str):
    return ctr2.run(address, "images", "push", "--plain-http", *args, ref)


def pushed_as(address: str, registry, name: str, target: str) -> str:
    src = registry.ref(name)
    ctr2.ok(pull(address, src))
    ctr2.ok(ctr2.run(address, "images", "tag", src, target))
    r = push(address, target)
    ctr2.ok(r)
    return ctr2.last_frame(r.stdout).replace(target, "<target>")


def test_push_as_containerd(c2, ctrd, registry):  # noqa: F811
    ours = pushed_as(ctrd.address, registry, "busybox", f"{registry.address}/push/ctrd:v1")
    theirs = pushed_as(c2.address, registry, "busybox", f"{registry.address}/push/cd23:v1")
    assert ours == theirs
    assert "Completed push to OCI Registry (<target>)" in ours
    # the registry serves the image under the new name, same digest
    status, headers, _ = registry.request(
        "HEAD", "/v2/push/ctrd/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200 and headers["Docker-Content-Digest"] == registry.digest("busybox")
    # pushed again: the manifest "already exists" too
    again = push(ctrd.address, f"{registry.address}/push/ctrd:v1")
    ctr2.ok(again)
    assert ctr2.last_frame(again.stdout).count("already exists") == 3


def test_push_errors(c2, ctrd, registry):  # noqa: F811
    missing = f"{registry.address}/push/none:v1"
    ours, theirs = push(ctrd.address, missing), push(c2.address, missing)
    assert ours.returncode == theirs.returncode == 1
    assert ctr2.errors(ours) == ctr2.errors(theirs) == f'ctr: image "{missing}": not found'


def test_push_to_a_registry_with_basic_auth(ctrd, registry, auth_registry):  # noqa: F811
    from support.registry_auth import PASSWORD, USER

    src = registry.ref("busybox")
    ctr2.ok(pull(ctrd.address, src))
    target = f"{auth_registry.address}/pushed/busybox:v1"
    ctr2.ok(ctr2.run(ctrd.address, "images", "tag", src, target))
    r = push(ctrd.address, target)
    assert r.returncode == 1 and "no credentials" in r.stderr
    r = push(ctrd.address, target, "--user", f"{USER}:{PASSWORD}")
    frame = ctr2.last_frame(ctr2.ok(r))
    # the label names the source by hostname only (containerd's key): both registries are
    # 127.0.0.1, and this one holds test/busybox, so the blobs are mounted from there
    assert "Completed push to OCI Registry" in frame and "complete" in frame
    status, headers, _ = auth_registry.request(
        "HEAD", "/v2/pushed/busybox/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200 and headers["Docker-Content-Digest"] == registry.digest("busybox")
