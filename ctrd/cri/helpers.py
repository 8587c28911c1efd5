"""What the CRI modules share (containerd's internal/cri/server/helpers.go): the namespace CRI
objects live in, ids and times, the generated runtime.v1 messages (imported on first use: the
daemon starts without them), and small functions over names, mounts, signals and cgroups."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ctrd.cri import store as st

NAMESPACE = "k8s.io"  # where CRI objects live (ctrd.cri.images.NAMESPACE)

log = logging.getLogger("ctrd.cri")

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
REOPEN_LOG_ANNOTATION = "io.ctrd.cri.reopen-log"
EXEC_OUTPUT_LIMIT = 16 << 20  # bytes per stream kept by ExecSync
LOAD_TIMEOUT = 10.0  # containerd's loadContainerTimeout, per container at start

_PB = None


def cri_pb():
    """The runtime.v1 messages module (``api_pb2``), imported on first use."""
    global _PB
    if _PB is None:
        from ctrd.api.cri.runtime.v1 import api_pb2

        _PB = api_pb2
    return _PB


def now_ns() -> int:
    return time.time_ns()


def new_id() -> str:
    # secrets.token_hex does exactly this; the secrets module (hmac, hashlib, random) is
    # not worth importing at every daemon start for it.
    return os.urandom(32).hex()


def rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def filter_labels(labels) -> dict[str, str]:
    return {k: v for k, v in dict(labels).items() if k != st.KIND_LABEL}


def mount_pb(m) -> Any:
    from ctrd.api.containerd.types import mount_pb2

    return mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options))


def listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except FileNotFoundError:
        return []


def exit_reason(code: int, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if code == 0 else "Error"
STATE_NAMES = {st.CREATED: "CONTAINER_CREATED", st.RUNNING: "CONTAINER_RUNNING",
                st.EXITED: "CONTAINER_EXITED", st.UNKNOWN: "CONTAINER_UNKNOWN"}


def memory_cgroup_of(pid: int, mountpoint: str = "/sys/fs/cgroup") -> str:
    """The directory of ``pid``'s memory cgroup: the v1 memory controller's, else the v2
    unified one; "" when it cannot be read (the process is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    v2 = ""
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return os.path.join(mountpoint, "memory", path.lstrip("/"))
        if hid == "0" and controllers == "":
            v2 = path
    if v2:
        # pure v2 is mounted at the mountpoint; a hybrid host has it under unified/
        hybrid = not os.path.exists(os.path.join(mountpoint, "cgroup.controllers"))
        base = os.path.join(mountpoint, "unified") if hybrid else mountpoint
        return os.path.join(base, v2.lstrip("/"))
    return ""


def cgroup_oom_kills(cgroup_dir: str) -> int:
    """How many processes the kernel's OOM killer killed in ``cgroup_dir``: ``oom_kill`` of
    memory.oom_control (v1) or memory.events (v2); 0 when unknown."""
    for name in ("memory.oom_control", "memory.events"):
        try:
            with open(os.path.join(cgroup_dir, name)) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0
STREAM_BATCH = 500  # items per message of the Stream* list calls (as StreamImages)


def batches(items: list, size: int = STREAM_BATCH):
    """``items`` in slices of ``size``; one empty slice for no items (a Stream* call always
    answers at least one message, so a client tells "none" from "nothing yet")."""
    for i in range(0, max(len(items), 1), size):
        yield items[i:i + size]
