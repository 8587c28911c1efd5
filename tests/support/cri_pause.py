"""Pause images in the test registry (``pause_ref``, ``broken_pause_ref``: the busybox test
layer with a sleep loop, or a missing program, as its entrypoint) and ``pause_factory``: ctrd
with the CRI plugin and a given ``sandbox_image``, whose teardown also fails the test on
anything left in ``k8s.io`` (``_k8s_objects``).

``pause_factory`` needs ``testnet`` (:mod:`support.cni_net`) in the test module.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import ctr
from support.cri import CRI, cri_config, teardown

CNI_BIN = "/usr/lib/cni"
PAUSE_REPO = "test/pause"
PAUSE_CMD = "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"


def _push_pause(registry, out: Path, tag: str, entrypoint: list[str]) -> str:
    """Push busybox with ``entrypoint`` as ``test/pause:<tag>``; its reference."""
    import images as ti

    layout = ti.Layout("pause", out / tag)
    ldesc, diff = ti._busybox_layer(layout).close()
    cfg = ti._config(ti.HOST_ARCH, [diff], ["tests/test_cri_pause.py: pause"])
    cfg["config"]["Entrypoint"] = entrypoint
    cfg["config"]["Cmd"] = None
    cdesc = layout.put_json(cfg, ti.MT_OCI_CONFIG)
    mdesc = layout.put_json({"schemaVersion": 2, "mediaType": ti.MT_OCI_MANIFEST,
                             "config": cdesc, "layers": [ldesc]}, ti.MT_OCI_MANIFEST)
    image = layout.finish(mdesc)
    for d, mt in sorted(image.blobs.items()):
        if mt != ti.MT_OCI_MANIFEST:
            registry._put_blob(PAUSE_REPO, d, image.blob_path(d))
    got = registry._put_manifest(PAUSE_REPO, tag, image.read_blob(image.digest),
                                 ti.MT_OCI_MANIFEST)
    assert got == image.digest
    return f"{registry.address}/{PAUSE_REPO}:{tag}"


@pytest.fixture(scope="module")
def pause_ref(registry, tmp_path_factory) -> str:
    """``<registry>/test/pause:latest``: busybox with a sleep loop as its entrypoint."""
    return _push_pause(registry, tmp_path_factory.mktemp("pause"), "latest",
                       ["/bin/sh", "-c", PAUSE_CMD])


@pytest.fixture(scope="module")
def broken_pause_ref(registry, tmp_path_factory) -> str:
    """``<registry>/test/pause:broken``: an entrypoint that does not exist."""
    return _push_pause(registry, tmp_path_factory.mktemp("pause"), "broken", ["/no/such"])


def _k8s_objects(address: str) -> list[str]:
    """Tasks, containers, snapshots (other than the images' committed layers) and leases
    ctrd holds in k8s.io."""
    out = []
    for kind, args in (("task", ["tasks", "ls", "-q"]), ("container", ["containers", "ls", "-q"]),
                       ("lease", ["leases", "ls", "-q"])):
        r = ctr(address, *args, namespace="k8s.io")
        assert r.returncode == 0, r.stderr
        out += [f"{kind} {x}" for x in r.stdout.split()]
    r = ctr(address, "snapshots", "ls", namespace="k8s.io")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[-1] != "Committed":
            out.append(f"snapshot {fields[0]}")
    return out


@pytest.fixture
def pause_factory(start_ctrd, tmp_root, registry, testnet):  # noqa: F811 - fixture
    """``pause_factory(sandbox_image="", env=None)``: ctrd with the CRI plugin on a bridge
    network, the busybox test image in k8s.io, ``sandbox_image`` as given. Teardown: every
    pod stopped and removed through the API, then the test fails if anything of ctrd's was
    left (process, mount, CNI lease, pod dir, and task/container/snapshot/lease in k8s.io)."""
    if not os.path.exists(os.path.join(CNI_BIN, "bridge")):
        pytest.skip("CNI plugins are not installed (apt-get install containernetworking-plugins)")
    made: list[CRI] = []

    def make(sandbox_image: str = "", env: dict | None = None) -> CRI:
        testnet.write([testnet.bridge_conf(ip_masq=False)])
        config = cri_config(testnet)
        if sandbox_image:
            head = '[plugins."io.containerd.grpc.v1.cri"]\n'
            config = config.replace(head, head + f'  sandbox_image = "{sandbox_image}"\n', 1)
        d = start_ctrd(config_text=config, env=env)
        r = ctr(d.address, "-n", "k8s.io", "images", "pull", "--plain-http",
                registry.ref("busybox"))
        assert r.returncode == 0, r.stderr
        c = CRI(d, start_ctrd, config)
        c.image = registry.ref("busybox")
        c.net = testnet
        made.append(c)
        return c

    try:
        yield make
    finally:
        teardown(made, tmp_root, extra=lambda c: _k8s_objects(c.daemon.address))
