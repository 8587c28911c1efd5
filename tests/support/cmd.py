"""Running ctrctl and checking a command's exit status: the one ``ok()`` and ``ctl()`` of the
suite.

``ok(r)`` fails the test unless the finished command ``r`` exited 0 (the message carries its
argv, exit status, stdout and stderr) and returns its stdout. ``ctl(daemon, *args)`` runs
ctrctl (``CTRCTL``: the venv's console script, else ``python -m ctrd.cli.ctrctl``) against
``daemon`` (anything with an ``address``, or the address itself), without the ctrctl variables
of the environment the suite runs in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ctr

_BIN = Path(sys.executable).parent
# argv of ctrctl: the console script beside the interpreter, else the module
CTRCTL = ([str(_BIN / "ctrctl")] if (_BIN / "ctrctl").exists()
          else [sys.executable, "-m", "ctrd.cli.ctrctl"])
# what a developer's shell may export for ctrctl: a test says its daemon and namespace itself
_OURS = ("CTRD_ADDRESS", "CONTAINERD_NAMESPACE", "CONTAINERD_SNAPSHOTTER")


def clean_env(extra: dict | None = None, **more: str) -> dict[str, str]:
    """This process's environment less ctrctl's own variables, plus ``extra`` and ``more``."""
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    env.update(extra or {}, **more)
    return env


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, (f"{r.args!r}: rc={r.returncode}\nstdout:\n{r.stdout}\n"
                               f"stderr:\n{r.stderr}")
    return r.stdout


def ctl(daemon, *args: str, timeout: float = 300, env: dict | None = None,
        input: str | bytes | None = None, **run) -> subprocess.CompletedProcess:
    """``ctrctl --address <daemon> *args``, its output captured (text unless ``input`` is
    bytes), in :func:`clean_env` with ``env`` added; stdin is ``input``, else /dev/null
    (``stdin=`` overrides). ``run`` goes on to :func:`subprocess.run`."""
    address = daemon if isinstance(daemon, str) else daemon.address
    if input is None:
        run.setdefault("stdin", subprocess.DEVNULL)
    run.setdefault("text", not isinstance(input, bytes))
    return subprocess.run(CTRCTL + ["--address", address, *args], capture_output=True,
                          timeout=timeout, env=clean_env(env), input=input, **run)


def names(daemon) -> list[str]:
    """The image names in ctrctl's ``images ls -q``."""
    return ok(ctl(daemon, "images", "ls", "-q")).split()


def content_digests(daemon) -> set[str]:
    """The digests in ctr's ``content ls -q``."""
    return set(ok(ctr(daemon.address, "content", "ls", "-q")).split())
