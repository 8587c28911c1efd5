"""A pod under a cgroup parent of the test's own, with one container with a memory limit
(``_run``), and that parent's name (``cgroup_parent``, whose directories are removed at the
end): what the CRI stats tests read.
"""

from __future__ import annotations

import time

import pytest

from support.cri import pod_config

def _run(cri, name: str, uid: str, cmd: list[str], parent: str):  # noqa: F811
    pb = cri.pb
    sconf = pod_config(pb, name, uid, linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent))
    sid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sconf)).pod_sandbox_id
    cconf = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="main"),
                               image=pb.ImageSpec(image=cri.image), command=cmd,
                               labels={"stats": "yes"},
                               linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
                                   memory_limit_in_bytes=64 << 20)))
    cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=cconf, sandbox_config=sconf)).container_id
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    return sid, cid


@pytest.fixture
def cgroup_parent():
    """A pod cgroup parent name; its directories (runc makes them) are removed at the end."""
    import os
    import subprocess

    parent = f"/ctrd-test-stats-{time.time_ns()}"
    yield parent
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if root.endswith(parent):
            for sub in sorted(dirs, reverse=True):
                subprocess.run(["rmdir", os.path.join(root, sub)], capture_output=True)
            subprocess.run(["rmdir", root], capture_output=True)
        if root.count("/") > 4:
            dirs[:] = []
