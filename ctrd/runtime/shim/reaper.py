"""Reaping: the shim is a child subreaper, so a container's init (whose parent, the OCI
runtime, exits right after ``create``) becomes the shim's child and its exit status reaches
the shim.

Exit codes of the runtime CLI itself are never stolen: the shim runs runtime commands
synchronously and waits for each by its pid (:mod:`ctrd.runtime.shim.runtime`) before control
returns to the loop, and this reaper's ``waitpid(-1)`` runs only as a loop callback. That is
the guarantee containerd's reaper ``Monitor`` gives with locks, here by construction.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from ctrd.runtime.shim.loop import Loop

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(e)}")


def exit_status(wait_status: int) -> int:
    """A wait status as containerd reports it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Reaper:
    """Calls ``on_exit(pid, status)`` for every child that exits (from the loop)."""

    def __init__(self, loop: Loop, on_exit: Callable[[int, int], None]) -> None:
        self.on_exit = on_exit
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        # Children that exited before the handler was installed.
        loop.call_soon(self.reap)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.on_exit(pid, exit_status(status))
