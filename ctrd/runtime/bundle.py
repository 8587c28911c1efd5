"""Task bundles: the per-task directory a shim and the OCI runtime work in.

Layout (containerd's runtime v2): ``<state>/<namespace>/<id>/`` holds ``config.json`` (the OCI
spec), ``rootfs/`` (the shim mounts the task's rootfs here), ``work`` (a symlink to
``<root>/<namespace>/<id>``, the task's persistent scratch space), and what the shim writes:
``address`` (its ttrpc address), ``log`` (a FIFO the daemon reads the shim's log from),
``shim-binary-path`` (the binary that serves it, for cleanup after a daemon restart).

Lifecycle: :func:`new_bundle` when a task is created (a failure removes what it made),
:func:`load_bundles` at daemon start, :meth:`Bundle.delete` after the task's shim is gone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ctrd import errdefs, identifiers

log = logging.getLogger("ctrd.runtime")

CONFIG = "config.json"


@dataclass(frozen=True)
class Bundle:
    id: str
    namespace: str
    path: str

    @property
    def rootfs(self) -> str:
        return os.path.join(self.path, "rootfs")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def read(self, name: str, limit: int = 1 << 16) -> str | None:
        """A small file the shim or the daemon wrote here, or None when absent."""
        try:
            with open(self.file(name), "rb") as f:
                return f.read(limit).decode(errors="replace").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, name: str, text: str) -> None:
        tmp = self.file("." + name)
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.file(name))

    def delete(self) -> None:
        """Unmount whatever is left on rootfs/, then remove the bundle and its work dir.

        Both directories are renamed to a dot-name first so a crash halfway leaves nothing
        that :func:`load_bundles` would take for a task (as containerd's atomicDelete)."""
        from ctrd.snapshots.mount import unmount_all

        work = None
        try:
            work = os.readlink(self.file("work"))
        except OSError:
            pass
        if os.path.isdir(self.rootfs):
            unmount_all(self.rootfs)
        _atomic_delete(self.path)
        if work:
            _atomic_delete(work)


def _atomic_delete(path: str) -> None:
    hidden = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    _rmtree(hidden)


def _chown_to_mapped_root(path: str, spec: bytes) -> None:
    """A spec with a user namespace: ``path`` (the rootfs dir) belongs to the namespace's
    root, so a task without rootfs mounts (ctrd's pod init: an empty rootfs) can make its
    mount points there. The snapshotter does the same for a remapped snapshot."""
    if b"uidMappings" not in spec:
        return
    import json

    try:
        linux = json.loads(spec).get("linux") or {}
        ids = []
        for key in ("uidMappings", "gidMappings"):
            ids.append(next(m["hostID"] + 0 for m in linux.get(key) or []
                            if m.get("containerID") == 0))
    except (ValueError, AttributeError, KeyError, TypeError, StopIteration):
        return
    os.lchown(path, ids[0], ids[1])


def new_bundle(root: str, state: str, namespace: str, id_: str, spec: bytes) -> Bundle:
    """Create the bundle of task ``id_``; AlreadyExists when one is there (a live task)."""
    try:
        identifiers.validate(id_)
    except errdefs.InvalidArgument as e:
        raise errdefs.InvalidArgument(f"invalid task id {id_}: {e.detail}") from None
    b = Bundle(id_, namespace, os.path.join(state, namespace, id_))
    work = os.path.join(root, namespace, id_)
    os.makedirs(os.path.dirname(b.path), mode=0o711, exist_ok=True)
    try:
        os.mkdir(b.path, 0o700)
    except FileExistsError:
        raise errdefs.AlreadyExists(f"bundle for task {id_}") from None
    try:
        # The runtime (possibly running as another user with user namespaces) must reach
        # config.json and rootfs/: 0711 on the bundle, as containerd does for remapped specs.
        os.chmod(b.path, 0o711)
        os.mkdir(b.rootfs, 0o711)
        _chown_to_mapped_root(b.rootfs, spec)
        os.makedirs(os.path.dirname(work), mode=0o711, exist_ok=True)
        _rmtree(work)  # a stale one from a crash
        os.mkdir(work, 0o711)
        os.symlink(work, b.file("work"))
        with open(b.file(CONFIG), "wb") as f:
            f.write(spec)
    except BaseException:
        b.delete()
        raise
    return b


def load_bundles(state: str) -> list[Bundle]:
    """Every bundle under ``state`` (dot-names are deletions a crash interrupted: finished
    here)."""
    out: list[Bundle] = []
    try:
        namespaces = sorted(os.listdir(state))
    except FileNotFoundError:
        return out
    for ns in namespaces:
        nsdir = os.path.join(state, ns)
        if not os.path.isdir(nsdir):
            continue
        for name in sorted(os.listdir(nsdir)):
            path = os.path.join(nsdir, name)
            if name.startswith("."):
                log.info("removing interrupted bundle deletion %s", path)
                _rmtree(path)
                continue
            if os.path.isdir(path):
                out.append(Bundle(name, ns, path))
    return out


def _rmtree(path: str) -> None:
    """shutil.rmtree, ignoring errors; shutil imported here: it pulls bz2 and lzma in (at every
    daemon start otherwise; bench/README.md, "Figures the code cites")."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
