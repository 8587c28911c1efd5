"""ctrd and containerd 2.3.4 side by side for the CRI comparisons: the pause image pushed to
the test registry (``pause_image``), containerd 2.3.4 on the test's network with it pinned
(``containerd234``), ctrd with the CRI tests' config in both sandbox modes (``ctrd_cri``),
and the pod config both get (``_pod_config``).

The fixtures need ``testnet`` (:mod:`support.cni_net`) in the test module.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

import containerd2
from support.cri import CRI, cri_config, teardown

CNI_BIN = "/usr/lib/cni"
PAUSE_REPO = "test/pause"
PAUSE_CMD = "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"


def _push_pause(registry, out: Path) -> str:
    """busybox with a sleep loop as its entrypoint, as ``test/pause:cmp``; its reference."""
    import images as ti

    layout = ti.Layout("pause", out)
    ldesc, diffid = ti._busybox_layer(layout).close()
    cfg = ti._config(ti.HOST_ARCH, [diffid], ["tests/test_cri_compare.py: pause"])
    cfg["config"]["Entrypoint"] = ["/bin/sh", "-c", PAUSE_CMD]
    cfg["config"]["Cmd"] = None
    cdesc = layout.put_json(cfg, ti.MT_OCI_CONFIG)
    mdesc = layout.put_json({"schemaVersion": 2, "mediaType": ti.MT_OCI_MANIFEST,
                             "config": cdesc, "layers": [ldesc]}, ti.MT_OCI_MANIFEST)
    image = layout.finish(mdesc)
    for d, mt in sorted(image.blobs.items()):
        if mt != ti.MT_OCI_MANIFEST:
            registry._put_blob(PAUSE_REPO, d, image.blob_path(d))
    registry._put_manifest(PAUSE_REPO, "cmp", image.read_blob(image.digest),
                           ti.MT_OCI_MANIFEST)
    return f"{registry.address}/{PAUSE_REPO}:cmp"


class Ref:
    """containerd 2.3.4 under the same CRI helper methods as ctrd's :class:`CRI`."""

    def __init__(self, d: containerd2.Containerd2) -> None:
        import grpc

        from cri_client import Deadlined
        from ctrd.api.cri.runtime.v1 import api_pb2, api_pb2_grpc

        self.d, self.pb = d, api_pb2
        self.channel = grpc.insecure_channel("unix:" + d.address)
        self.rt = Deadlined(api_pb2_grpc.RuntimeServiceStub(self.channel), 120.0)
        self.img = Deadlined(api_pb2_grpc.ImageServiceStub(self.channel), 120.0)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def pause_image(registry, tmp_path_factory) -> str:
    """The pause image's reference in the registry (both daemons pull it on the first pod)."""
    return _push_pause(registry, tmp_path_factory.mktemp("cmp-pause"))


@pytest.fixture
def containerd234(registry, testnet, pause_image):  # noqa: F811
    """containerd 2.3.4 on ``testnet`` with the pause image pinned; teardown: its pods
    removed through the CRI, the daemon stopped, mounts under its dir detached, dir removed."""
    base = Path(tempfile.mkdtemp(prefix="ctrd-cmp-c2-", dir="/tmp"))
    ref = None
    pause = pause_image
    try:
        d = containerd2.Containerd2.start(
            base / "d", cni_bin_dirs=[testnet.bin_dir, CNI_BIN], cni_conf_dir=testnet.conf_dir,
            sandbox_image=pause, plain_http=[registry.address])
        ref = Ref(d)
        ref.pause = pause
        yield ref
    finally:
        if ref is not None:
            try:
                pb = ref.pb
                for s in ref.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
                    ref.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id))
                    ref.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id))
            finally:
                ref.close()
                ref.d.stop()
        _detach_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _detach_under(base: Path) -> None:
    from taskutil import mounts_under

    for pid in _pids_under(base):  # shims of pods left by a failed test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for mp in sorted(mounts_under(base), reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def _pids_under(base: Path) -> list[int]:
    from taskutil import processes_under

    return list(processes_under(base))


@pytest.fixture(params=["no-pause", "pause"])
def ctrd_cri(request, start_ctrd, tmp_root, registry, testnet, pause_image):  # noqa: F811
    """ctrd with the CRI tests' config, pulling from the registry over plain http: in its
    default mode (no pause container) or with the pause image as ``sandbox_image``."""
    certs = tmp_root / "certs.d"
    containerd2.write_plain_http_hosts(certs, registry.address)
    testnet.write([testnet.bridge_conf(ip_masq=False)])
    config = cri_config(testnet, f'  [plugins."io.containerd.grpc.v1.cri".registry]\n'
                                 f'    config_path = "{certs}"\n')
    if request.param == "pause":
        head = '[plugins."io.containerd.grpc.v1.cri"]\n'
        config = config.replace(head, head + f'  sandbox_image = "{pause_image}"\n', 1)
    c = CRI(start_ctrd(config_text=config), start_ctrd, config)
    c.net = testnet
    c.mode = request.param
    try:
        yield c
    finally:
        teardown([c], tmp_root)


def _pod_config(pb, logdir: str):
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="cmp-pod", namespace="cmp-ns", uid="cmp-uid",
                                       attempt=1),
        hostname="cmp-host", log_directory=logdir,
        labels={"app": "cmp", "tier": "backend"},
        annotations={"note": "x", "example.com/owner": "tests"},
        # the kubelet's namespace options (it always sends them): PID per container
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER,
                                                 ipc=pb.POD))))
