"""The overlayfs snapshotter (containerd's ``snapshots/overlay``).

Layout under the root: ``metadata.lmdb`` (:class:`~ctrd.snapshots.storage.MetaStore`) and
``snapshots/<id>/fs`` (the snapshot's own layer: the upper dir while active) plus
``snapshots/<id>/work`` (overlay's workdir, active snapshots only).

Mounts, as containerd builds them (absolute paths, so a client on the host can mount them):

- no parent: a bind mount of ``fs`` (``rw`` for an active snapshot, ``ro`` for a view);
- active with parents: ``overlay`` with ``lowerdir`` = the parents' ``fs``, nearest first,
  ``upperdir`` = its ``fs``, ``workdir`` = its ``work``;
- view of one committed layer: a read-only bind of the parent's ``fs``;
- view of a chain: ``overlay`` with only ``lowerdir`` (read-only by construction).

``index=off`` is added when the kernel has the overlay ``index`` parameter (so a layer
can be mounted under several overlays), ``userxattr`` inside a user namespace.
:func:`supported` is the init-time check.
"""

from __future__ import annotations

import os

from ctrd.errdefs import InvalidArgument
from ctrd.snapshots import mount as mountlib
from ctrd.snapshots.snapshotter import Kind, Mount
from ctrd.snapshots.storage import DirSnapshotter, Snapshot

TMPFS_MAGIC = 0x01021994

# containerd's snapshots.LabelSnapshotUIDMapping / GIDMapping ("cid:hid:size")
LABEL_UIDMAPPING = "containerd.io/snapshot/uidmapping"
LABEL_GIDMAPPING = "containerd.io/snapshot/gidmapping"


def remapped_root(labels: dict[str, str]) -> tuple[int, int] | None:
    """The host (uid, gid) of container id 0 of a snapshot's mapping labels; None without
    labels. InvalidArgument for a mapping that is malformed or leaves 0 unmapped."""
    u, g = labels.get(LABEL_UIDMAPPING), labels.get(LABEL_GIDMAPPING)
    if not u and not g:
        return None
    from ctrd.snapshots import idmap

    try:
        uids, gids = idmap.parse(u or g or ""), idmap.parse(g or u or "")
    except ValueError as e:
        raise InvalidArgument(f"snapshot id mapping labels: {e}") from None
    root = idmap.to_host(uids, 0), idmap.to_host(gids, 0)
    if -1 in root:
        raise InvalidArgument("snapshot id mapping leaves container id 0 unmapped")
    return root


def supported(root: str) -> str | None:
    """None when overlay can use ``root`` (created if missing) for upper and lower dirs;
    otherwise the reason (a plugin init turns it into SkipPlugin). The test is containerd's:
    mount an overlay with two lowerdirs and an upper dir inside ``root``."""
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        td = _mkdtemp(root, "multiple-lowerdir-check")
    except OSError as e:
        return f"{root}: {e}"
    try:
        for d in ("lower1", "lower2", "upper", "work", "merged"):
            os.mkdir(os.path.join(td, d), 0o755)
        j = lambda d: os.path.join(td, d)  # noqa: E731
        m = Mount("overlay", "overlay", [f"lowerdir={j('lower2')}:{j('lower1')}",
                                         f"upperdir={j('upper')}", f"workdir={j('work')}"])
        try:
            mountlib.mount(m, j("merged"))
        except OSError as e:
            return f"failed to mount overlay: {e}"
        mountlib.unmount_all(j("merged"))
        return None
    finally:
        _remove_check_dir(td)


# os only: tempfile and shutil (with the random, bz2 and lzma modules they import) would cost the
# daemon's start their imports for this one check (bench/README.md, "Figures the code cites").

def _mkdtemp(parent: str, prefix: str) -> str:
    """A new directory (mode 0700) under ``parent`` with a name nobody else picked."""
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary directory name under {parent}")


def _remove_check_dir(td: str) -> None:
    """Remove the check's directory tree (the dirs it made, and the ``work/work`` dir the
    kernel adds), ignoring errors as ``shutil.rmtree(..., ignore_errors=True)`` would."""
    for top, dirs, files in os.walk(td, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(top, name))
            except OSError:
                pass
        for name in dirs:
            path = os.path.join(top, name)
            try:
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    os.rmdir(path)
            except OSError:
                pass
    try:
        os.rmdir(td)
    except OSError:
        pass


def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            fields = f.read().split()
    except OSError:
        return False
    return fields[:3] != ["0", "0", "4294967295"]


def needs_userxattr(root: str) -> bool:
    """containerd's NeedsUserXAttr, simplified to kernels >= 5.11: inside a user namespace,
    overlay keeps its xattrs in ``user.`` (unless the root is a tmpfs)."""
    if not _in_user_namespace():
        return False
    try:
        return _fs_magic(root) != TMPFS_MAGIC
    except OSError:
        return False


def _fs_magic(path: str) -> int:
    import ctypes

    buf = ctypes.create_string_buffer(256)  # struct statfs, f_type first
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        raise OSError(ctypes.get_errno(), path)
    return int.from_bytes(buf.raw[:8], "little")


class OverlaySnapshotter(DirSnapshotter):
    """Overlayfs snapshots under ``root``. ``async_remove``: see
    :class:`~ctrd.snapshots.storage.DirSnapshotter` (default False: ``remove`` reclaims the
    space at once; containerd's plugin defers it to ``cleanup``)."""

    commit_error_names_key = True

    def __init__(self, root: str, async_remove: bool = False) -> None:
        super().__init__(root, async_remove)
        self.index_off = os.path.exists("/sys/module/overlay/parameters/index")
        self.userxattr = needs_userxattr(self.root)

    def _upper(self, sid: str) -> str:
        return os.path.join(self.snapshots_dir, sid, "fs")

    def _work(self, sid: str) -> str:
        return os.path.join(self.snapshots_dir, sid, "work")

    def _usage_path(self, sid: str) -> str:
        return self._upper(sid)

    def _populate(self, td: str, s: Snapshot) -> bool:
        fs = os.path.join(td, "fs")
        os.mkdir(fs)
        os.chmod(fs, 0o755)  # not subject to the umask
        if s.kind == Kind.ACTIVE:
            os.mkdir(os.path.join(td, "work"))
            os.chmod(os.path.join(td, "work"), 0o711)
        root = remapped_root(s.labels)
        if root is not None:
            # containerd: a remapped snapshot's own dir belongs to the mapped root, so the
            # user namespace's root can write its rootfs (the lowers are idmapped at mount)
            os.lchown(fs, *root)
        elif s.parent_ids:
            st = os.stat(self._upper(s.parent_ids[0]))
            os.lchown(fs, st.st_uid, st.st_gid)
        return True

    def _mounts(self, s: Snapshot) -> list[Mount]:
        # containerd (remap-ids): the mapping labels become uidmap=/gidmap= options, which
        # the mount code turns into idmapped lowerdirs (ctrd.snapshots.idmap)
        remap = [f"{o}={s.labels[k]}" for o, k in (("uidmap", LABEL_UIDMAPPING),
                                                     ("gidmap", LABEL_GIDMAPPING))
                 if s.labels.get(k)]
        if not s.parent_ids:
            return [Mount("bind", self._upper(s.id),
                          remap + ["ro" if s.kind == Kind.VIEW else "rw", "rbind"])]
        options = list(remap)
        if self.index_off:
            options.append("index=off")
        if self.userxattr:
            options.append("userxattr")
        if s.kind == Kind.ACTIVE:
            options += [f"workdir={self._work(s.id)}", f"upperdir={self._upper(s.id)}"]
        elif len(s.parent_ids) == 1:
            return [Mount("bind", self._upper(s.parent_ids[0]), remap + ["ro", "rbind"])]
        options.append("lowerdir=" + ":".join(self._upper(p) for p in s.parent_ids))
        return [Mount("overlay", "overlay", options)]
