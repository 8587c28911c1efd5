"""Helpers for tests of ctrd's shim (containerd-shim-ctrd-v2): finding its processes, its
mounts and sockets, and checking that nothing is left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

SHIM = "containerd-shim-ctrd-v2"
RUNTIME = "io.containerd.ctrd.v2"
SOCKET_DIR = Path("/run/ctrd/s")


def shim_pids(marker: str = "") -> list[int]:
    """Pids of live ctrd shims (whose command line also contains ``marker``)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if SHIM in cmd and marker in cmd and state != "Z":
            out.append(int(d))
    return out


def mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def sockets() -> set[str]:
    try:
        return set(os.listdir(SOCKET_DIR))
    except FileNotFoundError:
        return set()


def wait_until(cond, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def rss_pss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        fields[k] = int(v.split()[0])
    return fields["Rss"], fields["Pss"]
