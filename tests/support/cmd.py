"""Running ctrctl and checking a command's exit status: the one ``ok()`` and ``ctl()`` of the
suite.

``ok(r)`` fails the test unless the finished command ``r`` exited 0 (the message carries its
argv, exit status, stdout and stderr) and returns its stdout. ``ctl(daemon, *args)`` runs
ctrctl (the venv's console script, else ``python -m ctrd.cli.ctrctl``) against ``daemon``
(anything with an ``address``, or the address itself).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ctr

CTRCTL = Path(sys.executable).parent / "ctrctl"


def ctrctl_cmd() -> list[str]:
    """argv of ctrctl: the console script beside the interpreter, else the module."""
    return [str(CTRCTL)] if CTRCTL.exists() else [sys.executable, "-m", "ctrd.cli.ctrctl"]


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, (f"{r.args!r}: rc={r.returncode}\nstdout:\n{r.stdout}\n"
                               f"stderr:\n{r.stderr}")
    return r.stdout


def ctl(daemon, *args: str, timeout: float = 300, **run) -> subprocess.CompletedProcess:
    """``ctrctl --address <daemon> *args``, its output captured as text; ``run`` goes on to
    :func:`subprocess.run` (``input``, ``env``, ``stdin``...)."""
    address = daemon if isinstance(daemon, str) else daemon.address
    return subprocess.run(ctrctl_cmd() + ["--address", address, *args], capture_output=True,
                          text=True, timeout=timeout, **run)


def names(daemon) -> list[str]:
    """The image names in ctrctl's ``images ls -q``."""
    return ok(ctl(daemon, "images", "ls", "-q")).split()


def content_digests(daemon) -> set[str]:
    """The digests in ctr's ``content ls -q``."""
    return set(ok(ctr(daemon.address, "content", "ls", "-q")).split())
