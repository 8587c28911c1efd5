"""Test plumbing for tasks: what a test leaves behind, and removing it.

A daemon's shims outlive it by design (containers survive daemon restarts), so a test that
stops its daemon must remove its tasks first. :func:`reap` is the safety net for failures:
it kills every process whose command line or working directory names ``base`` (shims are
started with ``-address <base>/...`` and run in bundles under it), deletes the runc state of
their containers, and unmounts everything under ``base``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import containerd2
from conftest import ctr

GO_SHIM_CONFIG = """version = 2
[plugins."io.containerd.runtime.v2.task".shims."io.containerd.runc.v2"]
binary = "containerd-shim-runc-v2"
"""

GO_SHIM2_CONFIG = f"""version = 3
[plugins."io.containerd.runtime.v2.task".shims."io.containerd.runc.v2"]
binary = "{containerd2.BIN_DIR / 'containerd-shim-runc-v2'}"
"""

# Who serves io.containerd.runc.v2 in ctrd: its own shim (the default) or containerd's Go
# shims (mapped in the config): Debian's 1.6 (shim API 2, options Any on stdin) and 2.3.4's
# (the bootstrap protocol, task API v3 only), so the daemon side is also checked against
# both generations of the reference.
SHIM_KINDS = ["ctrd-shim", "go-shim", "go-shim-2.3.4"]


def processes_under(base: Path) -> list[int]:
    """Pids of processes whose argv or cwd mention ``base``."""
    needle = str(base).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            cwd = os.readlink(f"/proc/{name}/cwd").encode()
        except OSError:
            continue
        if needle in cmd or cwd.startswith(needle):
            found.append(int(name))
    return found


def mounts_under(base: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split(" ")[4]
            if point.startswith(str(base)):
                out.append(point)
    return out


def remove_all_tasks(address: str, namespace: str = "default") -> None:
    """Kill and delete every task and container of ``namespace`` through the API."""
    r = ctr(address, "tasks", "ls", "-q", namespace=namespace)
    for tid in r.stdout.split():
        ctr(address, "tasks", "kill", "-s", "SIGKILL", "--all", tid, namespace=namespace)
    for tid in r.stdout.split():
        for _ in range(50):
            if ctr(address, "tasks", "rm", "-f", tid, namespace=namespace).returncode == 0:
                break
            time.sleep(0.1)
    r = ctr(address, "containers", "ls", "-q", namespace=namespace)
    for cid in r.stdout.split():
        ctr(address, "containers", "rm", cid, namespace=namespace)


RUNC_ROOTS = ("/run/containerd/runc", "/run/ctrd/runc", "/run/runc")


def runc_containers_under(base: Path) -> list[tuple[str, str]]:
    """(runc root, container id) of runc containers whose bundle is under ``base``."""
    import json

    out = []
    for parent in RUNC_ROOTS:
        roots = [parent] + ([os.path.join(parent, d) for d in os.listdir(parent)]
                            if os.path.isdir(parent) else [])
        for root in roots:
            if not os.path.isdir(root):
                continue
            r = subprocess.run(["runc", "--root", root, "list", "-f", "json"],
                               capture_output=True, text=True)
            for c in json.loads(r.stdout or "null") or []:
                if c.get("bundle", "").startswith(str(base)):
                    out.append((root, c["id"]))
    return out


def reap(base: Path) -> list[str]:
    """Kill what runs under ``base`` and unmount it; what had to be reaped (for asserts)."""
    reaped = []
    for root, cid in runc_containers_under(base):
        subprocess.run(["runc", "--root", root, "delete", "-f", cid], capture_output=True)
        reaped.append(f"runc container {cid}")
    for pid in processes_under(base):
        try:
            os.kill(pid, signal.SIGKILL)
            reaped.append(f"pid {pid}")
        except ProcessLookupError:
            pass
    for point in sorted(mounts_under(base), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
        reaped.append(f"mount {point}")
    return reaped


def _have(binary: str) -> bool:
    from ctrd import errdefs
    from ctrd.runtime.shimclient import resolve_binary

    try:
        resolve_binary(binary)
        return True
    except errdefs.NotFound:
        return False


def task_daemon(kind: str, start_ctrd, tmp_root: Path, registry, name: str = "ctrd"):
    """Generator for a fixture: ctrd with ``kind``'s shim and the busybox test image pulled
    (``d.image``). On teardown every task and container is removed through the API, then the
    test fails if any shim, mount, runc container or bundle was left (and reaps them)."""
    if kind == "ctrd-shim" and not _have("containerd-shim-ctrd-v2"):
        pytest.skip("containerd-shim-ctrd-v2 is not installed (pip install -e .)")
    if kind == "go-shim" and not _have("containerd-shim-runc-v2"):
        pytest.skip("containerd-shim-runc-v2 is not installed (apt-get install containerd)")
    if kind == "go-shim-2.3.4" and not containerd2.available():
        pytest.skip(f"containerd 2.3.4's shim is not in {containerd2.BIN_DIR}")
    config = {"go-shim": GO_SHIM_CONFIG, "go-shim-2.3.4": GO_SHIM2_CONFIG}.get(kind)
    d = start_ctrd(config_text=config, name=name)
    d.config_text = config
    r = ctr(d.address, "images", "pull", "--plain-http", registry.ref("busybox"))
    assert r.returncode == 0, r.stderr
    d.image = registry.ref("busybox")
    holder = [d]
    d.holder = holder
    try:
        yield d
    finally:
        d = holder[0]  # a test that restarts the daemon puts the new one here
        remove_all_tasks(d.address)
        leftovers = [f"shim/process {p}" for p in processes_under(tmp_root)
                     if p != d.proc.pid]
        leftovers += [f"mount {m}" for m in mounts_under(tmp_root)]
        leftovers += [f"runc {c}" for _, c in runc_containers_under(tmp_root)]
        d.stop()
        reap(tmp_root)
        bundles = d.state / "io.containerd.runtime.v2.task"
        left = [p.name for p in bundles.glob("*/*")] if bundles.exists() else []
        assert not left, f"bundles left: {left}"
        assert not leftovers, leftovers
