"""The real ``ctr`` 2.3.4 against a daemon, and what its Transfer progress printer shows.

    r = run(address, "images", "pull", "--plain-http", ref, namespace="t")
    frame = last_frame(r.stdout)   # the last tree ctr drew, timings blanked

ctr 2.3.4 redraws its whole progress tree after every named event; without a terminal every
frame is appended to stdout, each ending with the status line (``<status>\\telapsed: ...``).
Stdlib only.
"""

from __future__ import annotations

import os
import re
import subprocess

import containerd2
from support.cmd import ok  # noqa: F401 - ctr2.ok(run(...)) reads as one step

CTR = containerd2.CTR
COLOR = re.compile(r"\x1b\[[0-9;]*m")
TIMES = re.compile(r"elapsed: *[0-9.]+ ?s\ttotal: *[^\t]*\t\([^)]*\)")


def available() -> bool:
    return os.access(CTR, os.X_OK)


def run(address: str, *args: str, namespace: str = "t", timeout: float = 120,
        env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CTR), "--address", address, "-n", namespace, *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          input=input)


def errors(r: subprocess.CompletedProcess) -> str:
    """stderr less the daemon-independent deprecation warnings containerd's ctr logs."""
    return "\n".join(line for line in r.stderr.splitlines() if "DEPRECATION" not in line)


def frames(stdout: str) -> list[str]:
    out, cur = [], []
    for line in COLOR.sub("", stdout).splitlines():
        cur.append(line)
        if "\telapsed: " in line:
            out.append("\n".join(cur))
            cur = []
    return out


def last_frame(stdout: str) -> str:
    """The final progress tree, elapsed time, total and rate blanked."""
    fs = frames(stdout)
    assert fs, f"no progress frame in:\n{stdout}"
    return TIMES.sub("elapsed: -\ttotal: -\t(-)", fs[-1])


def tree(stdout: str) -> list[str]:
    """:func:`last_frame` as sorted lines, tree glyphs blanked: containerd fetches an index's
    manifests concurrently, so sibling order varies from run to run (depth still shows)."""
    frame = last_frame(stdout)
    for glyph in ("├──", "└──", "│  "):
        frame = frame.replace(glyph, "   ")
    return sorted(frame.splitlines())


def content_rows(stdout: str) -> list[tuple[str, ...]]:
    """``ctr content ls`` (tab separated) as sorted (digest, size, labels) rows."""
    rows = []
    for line in stdout.splitlines()[1:]:
        cells = [c for c in line.split("\t") if c != ""]
        if cells:
            rows.append((cells[0], cells[1], cells[3] if len(cells) > 3 else ""))
    return sorted(rows)
