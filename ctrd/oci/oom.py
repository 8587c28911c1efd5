"""The OOM score adjustment a container may ask for.

The kernel lets a process lower its ``oom_score_adj`` (or set a lower one on a child) only
with CAP_SYS_RESOURCE; without it, runc fails to start a container whose spec asks for a
score below the caller's own. containerd's CRI plugin (``restrict_oom_score_adj``) clamps
the requested value to the current process's score in that case; :func:`restrict` does the
same, but only when lowering is actually not permitted (the capability is missing), so a
privileged caller gets what it asked for.
"""

from __future__ import annotations

from ctrd.errdefs import InvalidArgument

OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000
CAP_SYS_RESOURCE = 24  # bit number in the capability sets (linux/capability.h)


def current_score(proc: str = "/proc/self") -> int:
    """This process's ``oom_score_adj``."""
    with open(f"{proc}/oom_score_adj") as f:
        return int(f.read().strip())


def effective_caps(proc: str = "/proc/self") -> int:
    """This process's effective capability set (``CapEff`` of ``/proc/self/status``)."""
    with open(f"{proc}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split(":", 1)[1].strip(), 16)
    return 0


def can_lower(proc: str = "/proc/self") -> bool:
    """Whether this process may lower OOM score adjustments (has CAP_SYS_RESOURCE)."""
    return bool(effective_caps(proc) >> CAP_SYS_RESOURCE & 1)


def restrict(preferred: int, current: int | None = None, privileged: bool | None = None) -> int:
    """The score to put in a spec for a request of ``preferred``: ``preferred`` itself, or
    ``current`` (default: this process's score) if ``preferred`` is lower and lowering is
    not permitted (``privileged`` default: CAP_SYS_RESOURCE in this process's CapEff).

    Raises InvalidArgument outside the kernel's range [-1000, 1000].
    """
    if isinstance(preferred, bool) or not isinstance(preferred, int) or \
            not OOM_SCORE_ADJ_MIN <= preferred <= OOM_SCORE_ADJ_MAX:
        raise InvalidArgument(f"oom_score_adj {preferred!r} is out of range: it must be "
                              f"between {OOM_SCORE_ADJ_MIN} and {OOM_SCORE_ADJ_MAX}")
    if privileged is None:
        privileged = can_lower()
    if privileged:
        return preferred
    if current is None:
        current = current_score()
    return max(preferred, current)
