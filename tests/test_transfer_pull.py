"""``ctr`` 2.3.4 ``images pull`` through containerd 2.x's Transfer service, against ctrd and,
side by side, against containerd 2.3.4: the same progress tree, the same content (digests,
sizes, labels), the same image records; credentials through the auth stream (a registry with
basic auth); errors as containerd words them.

Real parts only: the real ctr 2.3.4 binary, a real ctrd daemon, containerd 2.3.4, Debian's
docker-registry holding the offline-built test images (tests/images.py).
"""

from __future__ import annotations

import pytest

import containerd2
import ctr2
from support.transfer import auth_registry, c2, pull  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not ctr2.available() or not containerd2.available(),
                                 reason=f"containerd 2.3.4 binaries absent ({ctr2.CTR})")]


def state(address: str, namespace: str = "t") -> tuple[list, str]:
    content = ctr2.content_rows(ctr2.ok(ctr2.run(address, "content", "ls",
                                                 namespace=namespace)))
    imgs = ctr2.ok(ctr2.run(address, "images", "ls", namespace=namespace))
    return content, imgs


@pytest.mark.parametrize("name", ["busybox", "busybox-multi"])
def test_pull_as_containerd(c2, ctrd, registry, name):
    ref = registry.ref(name)
    ours, theirs = pull(ctrd.address, ref), pull(c2.address, ref, namespace=f"t-{name}")
    ctr2.ok(ours), ctr2.ok(theirs)
    assert ctr2.tree(ours.stdout) == ctr2.tree(theirs.stdout)
    if name == "busybox":  # one child per node: the order is fixed
        assert ctr2.last_frame(ours.stdout) == ctr2.last_frame(theirs.stdout)
    assert "Resolving from OCI Registry" not in ctr2.last_frame(ours.stdout)
    assert f"Completed pull from OCI Registry ({ref})" in ctr2.last_frame(ours.stdout)
    assert state(ctrd.address) == state(c2.address, f"t-{name}")
    # the image is unpacked: its chain is a committed snapshot
    snaps = ctr2.ok(ctr2.run(ctrd.address, "snapshots", "ls"))
    assert "Committed" in snaps
    # pulled again: everything "already exists", as containerd shows it
    again, again2 = pull(ctrd.address, ref), pull(c2.address, ref, namespace=f"t-{name}")
    ctr2.ok(again), ctr2.ok(again2)
    assert "already exists" in ctr2.last_frame(again.stdout)
    assert ctr2.tree(again.stdout) == ctr2.tree(again2.stdout)


def test_pull_options_as_containerd(c2, ctrd, registry):
    """--skip-metadata (only the host's manifest), --label, --platform of another arch."""
    ref = registry.ref("busybox-multi")
    for args in (["--skip-metadata", "--label", "team=a"], ["--platform", "linux/arm64"]):
        ns = "o" + str(len(args))
        ours = pull(ctrd.address, ref, *args, namespace=ns)
        theirs = pull(c2.address, ref, *args, namespace=ns)
        ctr2.ok(ours), ctr2.ok(theirs)
        assert ctr2.tree(ours.stdout) == ctr2.tree(theirs.stdout), args
        assert state(ctrd.address, ns) == state(c2.address, ns), args
    assert "team=a" in state(ctrd.address, "o3")[1]


def test_pull_errors_as_containerd(c2, ctrd, registry):
    missing = registry.ref("busybox").rsplit(":", 1)[0] + ":nope"
    ours, theirs = pull(ctrd.address, missing), pull(c2.address, missing)
    assert ours.returncode == theirs.returncode == 1
    assert ctr2.errors(ours) == ctr2.errors(theirs) == \
        f"ctr: failed to resolve image: {missing}: not found"
    # nothing listening: a clear failure naming the registry
    r = pull(ctrd.address, "127.0.0.1:1/test/busybox:latest")
    assert r.returncode == 1 and "ctr: failed to resolve image: " in r.stderr
    assert "127.0.0.1:1" in r.stderr and "refused" in r.stderr
    assert ctr2.ok(ctr2.run(ctrd.address, "images", "ls", "-q")) == ""
    assert ctr2.ok(ctr2.run(ctrd.address, "content", "ls", "-q")) == ""


def test_pull_with_basic_auth(ctrd, auth_registry):
    ref = auth_registry.ref("busybox")
    from support.registry_auth import PASSWORD, USER

    r = pull(ctrd.address, ref)
    assert r.returncode == 1
    assert "requires basic authentication and no credentials" in r.stderr
    r = pull(ctrd.address, ref, "--user", f"{USER}:wrong")
    assert r.returncode == 1 and "401" in r.stderr
    r = pull(ctrd.address, ref, "--user", f"{USER}:{PASSWORD}")
    ctr2.ok(r)
    assert f"Completed pull from OCI Registry ({ref})" in ctr2.last_frame(r.stdout)
    assert ref in ctr2.ok(ctr2.run(ctrd.address, "images", "ls", "-q"))

