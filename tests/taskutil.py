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

from conftest import ctr


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
