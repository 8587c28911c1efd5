"""containerd 2.3.4 for the Transfer-service tests (``c2``, module-scoped), ``pull`` through
``ctr`` 2.3.4, and ``auth_registry``: a basic-auth registry holding busybox
(:class:`support.registry_auth.AuthRegistry`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

import containerd2
import ctr2

@pytest.fixture(scope="module")
def c2():
    """containerd 2.3.4 on temp paths (namespace "t": its CRI plugin stays out of the way)."""
    base = Path(tempfile.mkdtemp(prefix="ctrd-c2-", dir="/tmp"))
    (base / "cni").mkdir()
    d = None
    try:
        d = containerd2.Containerd2.start(base / "c", cni_bin_dirs=[str(base / "cni")],
                                          cni_conf_dir=str(base / "cni"), debug=False)
        yield d
    finally:
        if d is not None:
            d.stop()
        shutil.rmtree(base, ignore_errors=True)


def pull(address: str, ref: str, *args: str, namespace: str = "t"):
    return ctr2.run(address, "images", "pull", "--plain-http", *args, ref, namespace=namespace)


@pytest.fixture(scope="module")
def auth_registry(registry):
    """docker-registry with htpasswd basic auth holding busybox (support/registry_auth.py)."""
    import crypt

    from support.registry_auth import AuthRegistry

    if not hasattr(crypt, "METHOD_BLOWFISH") or crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("no bcrypt in crypt(3) for an htpasswd file")
    base = Path(tempfile.mkdtemp(prefix="ctrd-authreg-", dir="/tmp"))
    reg = None
    try:
        reg = AuthRegistry.start_auth(base / "registry")
        reg.push(registry.pushed["busybox"])
        yield reg
    finally:
        if reg is not None:
            reg.stop()
        shutil.rmtree(base, ignore_errors=True)
