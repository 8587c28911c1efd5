"""What a cgroup v2 host's files hold for an OCI ``linux.resources``: the file names and values
runc writes (containerd leaves the conversion to the OCI runtime; containerd 2.3.4's copy of
the cgroups library, ``cgroup2.ToResources`` and the ``Values()`` of v3.1.3, converts the same
way). Test helpers: on a v1 host they say what a v2 host would get; on a v2 host they are the
expected contents of the real files.

Conversions (github.com/containerd/cgroups/v3 v3.1.3 cgroup2/utils.go, runc libcontainer):
- ``cpu.shares`` -> ``cpu.weight``: runc <= 1.3 and the cgroups library before v3.1 map it
  linearly, ``1 + ((shares - 2) * 9999) / 262142``; opencontainers/cgroups v0.0.5 (runc 1.4,
  cgroups v3.1.3) use a quadratic fit in log2 that keeps 1024 -> 100. Both are given.
- ``cpu.quota``/``cpu.period`` -> ``cpu.max`` = ``"<quota or max> <period>"``;
- ``memory.limit`` -> ``memory.max``; ``memory.swap`` (OCI: memory + swap) -> ``memory.swap.max``
  = swap - limit (so swap = limit means no swap at all); ``memory.reservation`` ->
  ``memory.low``;
- ``pids.limit`` -> ``pids.max``; ``hugepageLimits`` -> ``hugetlb.<size>.max``;
- ``unified`` keys are written as they are, last (they win).
"""

from __future__ import annotations

import math
from pathlib import Path


def weight_linear(shares: int) -> int:
    """runc 1.1's (and containerd/cgroups' before v3.1) shares -> weight."""
    return 1 + ((shares - 2) * 9999) // 262142


def weight_quadratic(shares: int) -> int:
    """containerd/cgroups v3.1.3's (opencontainers/cgroups v0.0.5's) shares -> weight."""
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    lg = math.log2(shares)
    return math.ceil(10 ** ((lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0))


def weights(shares: int) -> set[str]:
    """The cpu.weight values an OCI runtime may write for ``shares`` (either conversion)."""
    return {str(weight_linear(shares)), str(weight_quadratic(shares))}


def v2_files(res: dict, linear: bool = True) -> dict[str, str]:
    """The v2 files (name -> content) set for OCI ``linux.resources`` ``res``."""
    out: dict[str, str] = {}
    cpu = res.get("cpu") or {}
    if cpu.get("shares"):
        w = weight_linear if linear else weight_quadratic
        out["cpu.weight"] = str(w(cpu["shares"]))
    if cpu.get("period"):
        quota = cpu.get("quota")
        out["cpu.max"] = f"{quota if quota and quota > 0 else 'max'} {cpu['period']}"
    for key, name in (("cpus", "cpuset.cpus"), ("mems", "cpuset.mems")):
        if cpu.get(key):
            out[name] = cpu[key]
    mem = res.get("memory") or {}
    if "swap" in mem:
        swap = mem["swap"]
        out["memory.swap.max"] = "max" if swap == -1 else str(swap - mem.get("limit", 0))
    if mem.get("limit"):
        out["memory.max"] = str(mem["limit"])
    if mem.get("reservation"):
        out["memory.low"] = str(mem["reservation"])
    pids = res.get("pids") or {}
    if pids.get("limit"):
        out["pids.max"] = "max" if pids["limit"] <= 0 else str(pids["limit"])
    for h in res.get("hugepageLimits") or []:
        out[f"hugetlb.{h['pageSize']}.max"] = str(h["limit"])
    out.update(res.get("unified") or {})
    return out


def write_tree(d: Path, files: dict[str, str], controllers: str = "cpu memory pids io hugetlb"
               ) -> Path:
    """A v2 cgroup directory as the kernel shows it, with ``files`` written over the files of
    an idle cgroup (no limits: ``max``)."""
    d.mkdir(parents=True, exist_ok=True)
    base = {
        "cgroup.controllers": controllers + "\n",
        "cgroup.events": "populated 1\nfrozen 0\n",
        "cpu.stat": "usage_usec 7000\nuser_usec 4000\nsystem_usec 3000\nnr_periods 0\n"
                    "nr_throttled 0\nthrottled_usec 0\n",
        "cpu.weight": "100\n", "cpu.max": "max 100000\n",
        "memory.stat": "anon 8192\nfile 4096\ninactive_file 2048\npgfault 30\npgmajfault 2\n",
        "memory.current": "30000\n", "memory.max": "max\n", "memory.low": "0\n",
        "memory.swap.current": "0\n", "memory.swap.max": "max\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "pids.current": "1\n", "pids.max": "max\n",
        "io.stat": "",
    }
    base.update({k: v if v.endswith("\n") else v + "\n" for k, v in files.items()})
    for name, text in base.items():
        (d / name).write_text(text)
    return d
