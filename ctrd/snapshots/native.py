"""The native snapshotter (containerd's ``snapshots/native``): every active snapshot is a
full copy of its parent, so it works on any file system and needs no overlay support.

Layout under the root: ``metadata.lmdb`` and ``snapshots/<id>`` (the tree itself). An
active snapshot gets a new directory holding a copy of its nearest parent; a view of a
committed snapshot has no directory of its own and bind-mounts the parent read-only (a view
without a parent gets an empty directory). Mounts are ``bind`` with ``rbind`` and
``rw``/``ro``.

The copy is ``cp -a --reflink=auto`` (GNU coreutils): owners, modes, times, xattrs (best
effort, as containerd's CopyDir), hard links within the tree, device nodes, fifos, sockets
and symlinks are preserved, and on a CoW file system (btrfs, xfs) file data is shared, not
copied. It is several times faster than a Python copytree that preserves the same things.
"""

from __future__ import annotations

import os
import subprocess

from ctrd.snapshots.snapshotter import Kind, Mount
from ctrd.snapshots.storage import DirSnapshotter, Snapshot


def copy_tree(src: str, dst: str) -> None:
    """Copy the contents of ``src`` into the existing directory ``dst``, ``dst`` taking the
    owner, mode and times of ``src``."""
    p = subprocess.run(["cp", "-a", "--reflink=auto", "--", os.path.join(src, "."), dst],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise OSError(f"copying {src} to {dst} failed: {p.stderr.strip()}")


class NativeSnapshotter(DirSnapshotter):
    """Copying snapshots under ``root`` (see the module docstring)."""

    def _usage_path(self, sid: str) -> str:
        return self._dir(sid)

    def _populate(self, td: str, s: Snapshot) -> bool:
        if s.kind == Kind.VIEW and s.parent_ids:
            return False
        os.chmod(td, 0o755)
        if s.parent_ids:
            copy_tree(self._dir(s.parent_ids[0]), td)
        return True

    def _mounts(self, s: Snapshot) -> list[Mount]:
        if s.parent_ids and s.kind == Kind.VIEW:
            source = self._dir(s.parent_ids[0])
        else:
            source = self._dir(s.id)
        return [Mount("bind", source, ["rbind", "ro" if s.kind == Kind.VIEW else "rw"])]
