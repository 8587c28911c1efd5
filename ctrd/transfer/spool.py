"""Spool files: an import's archive on disk while ctrd's importer reads it (twice), in the
transfer plugin's root dir (mode 0700). Each is removed when its import ends; one left by a
daemon that died mid-import is removed at the next start (:func:`remove_stale`, called
before any transfer can run)."""

from __future__ import annotations

import os
import tempfile

PREFIX, SUFFIX = "import-", ".tar"


def create(work_dir: str):
    """A new spool file (binary, open for writing; ``.name`` is its path)."""
    if work_dir:
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
    return tempfile.NamedTemporaryFile(prefix=PREFIX, suffix=SUFFIX, dir=work_dir or None,
                                       delete=False)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_stale(work_dir: str) -> int:
    """Remove every spool file in ``work_dir``; returns how many there were."""
    try:
        names = os.listdir(work_dir)
    except FileNotFoundError:
        return 0
    stale = [n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX)]
    for n in stale:
        remove(os.path.join(work_dir, n))
    return len(stale)
