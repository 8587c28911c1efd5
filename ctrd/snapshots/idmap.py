"""Idmapped mounts (Linux >= 5.12): a clone of a mount whose file owners are shifted through
a user namespace's id maps, so a container's mapped root sees files owned by host root as
its own without a chown of the files.

containerd 2.x's ``core/mount`` (``mount_idmapped_linux.go``, ``doPrepareIDMappedOverlay``):
an overlay mount whose options carry ``uidmap=<cid>:<hid>:<n>`` and ``gidmap=...`` (what
the overlay snapshotter adds for a snapshot labelled ``containerd.io/snapshot/uidmapping``)
is mounted on idmapped clones of its lowerdirs. Each clone is
``open_tree(OPEN_TREE_CLONE)`` + ``mount_setattr(MOUNT_ATTR_IDMAP, userns fd)`` +
``move_mount`` onto a scratch directory; the overlay is mounted on those; then the clones
are detached again (overlayfs holds private copies of its layers' mounts), so nothing but
the overlay itself remains mounted. The upper dir is not idmapped: the snapshotter made it
owned by the mapped root, so what the container writes is owned by its host ids.

The user namespace for ``MOUNT_ATTR_IDMAP`` is a throwaway: a child process
(util-linux ``unshare --user``, exec'd, so this works from a multi-threaded daemon as well
as from the single-threaded shim) whose maps are written from here; its ``ns/user`` fd
outlives it.

Imports: ctypes and os only (the shim's :mod:`ctrd.runtime.shim.mount` uses this).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time

# syscall numbers: the same on every architecture for these (added after the unification)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442

OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MNT_DETACH = 2

#: ids in one map line must stay below this (the kernel's id type is u32; -1 is invalid)
ID_LIMIT = 1 << 32

_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


IDMap = tuple[int, int, int]  # (container id, host id, size)


def parse(spec: str) -> list[IDMap]:
    """``"cid:hid:size[,cid:hid:size...]"`` (containerd's label and option format) as
    tuples. ValueError for anything else, a size of 0, or ids past 2^32."""
    out = []
    for part in spec.split(","):
        fields = part.split(":")
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise ValueError(f"id mapping {part!r}: want container-id:host-id:size")
        cid, hid, size = (int(f) for f in fields)
        if size < 1 or cid + size > ID_LIMIT or hid + size > ID_LIMIT:
            raise ValueError(f"id mapping {part!r}: empty or past 2^32")
        out.append((cid, hid, size))
    return out


def format_map(maps: list[IDMap]) -> str:
    """The label/option form of ``maps`` (inverse of :func:`parse`)."""
    return ",".join(f"{c}:{h}:{n}" for c, h, n in maps)


def to_host(maps: list[IDMap], cid: int) -> int:
    """The host id of container id ``cid``; -1 when unmapped."""
    for c, h, n in maps:
        if c <= cid < c + n:
            return h + cid - c
    return -1


# --- a user namespace fd with given maps -----------------------------------------------

def _unshare_binary() -> str:
    for p in ("/usr/bin/unshare", "/bin/unshare"):
        if os.access(p, os.X_OK):
            return p
    raise OSError(errno.ENOENT, "util-linux unshare not found (/usr/bin/unshare)")


def _sleep_binary() -> str:
    for p in ("/usr/bin/sleep", "/bin/sleep"):
        if os.access(p, os.X_OK):
            return p
    raise OSError(errno.ENOENT, "sleep not found")


def spawn_in_new_userns(extra_flags: tuple[str, ...] = ()) -> int:
    """Start a child (``unshare --user <extra_flags> -- sleep``) and return its pid once it
    is in its new user namespace (its maps still empty: write them with
    :func:`write_maps`). The caller kills and reaps it (:func:`reap`)."""
    argv = [_unshare_binary(), "--user", *extra_flags, "--", _sleep_binary(), "600"]
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"}, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2)])
    finally:
        os.close(devnull)
    mine = os.stat("/proc/self/ns/user").st_ino
    deadline = time.monotonic() + 5
    try:
        while True:
            try:
                if os.stat(f"/proc/{pid}/ns/user").st_ino != mine:
                    return pid
            except FileNotFoundError:
                pass
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by a subreaper's reaper (the shim's)
                done, status = pid, -1
            if done:
                raise OSError(errno.ECHILD, f"unshare --user exited with status {status}")
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, "unshare --user did not enter a user namespace")
            time.sleep(0.0005)
    except BaseException:
        reap(pid)
        raise


def reap(pid: int) -> None:
    """Kill and wait for a child of :func:`spawn_in_new_userns` (gone already is fine)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def write_maps(pid: int, uidmap: list[IDMap], gidmap: list[IDMap]) -> None:
    """Write the uid and gid maps of process ``pid``'s user namespace (we are privileged in
    its parent namespace, so no setgroups deny is needed)."""
    for name, maps in (("uid_map", uidmap), ("gid_map", gidmap)):
        text = "".join(f"{c} {h} {n}\n" for c, h, n in maps)
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def userns_fd(uidmap: list[IDMap], gidmap: list[IDMap]) -> int:
    """An O_CLOEXEC fd of a new user namespace with these maps (close it when done)."""
    pid = spawn_in_new_userns()
    try:
        write_maps(pid, uidmap, gidmap)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        reap(pid)


# --- idmapped clones -------------------------------------------------------------------

def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def clone_idmapped(source: str, target: str, nsfd: int, recursive: bool = True) -> None:
    """Mount an idmapped clone of the mount tree at ``source`` on ``target`` (an existing
    directory, or file for a file source), ids shifted through user namespace ``nsfd``."""
    lib = _lib()
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    fd = _check(lib.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD),
                            ctypes.c_char_p(os.fsencode(source)), ctypes.c_uint(flags)),
                f"open_tree {source}")
    try:
        attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=nsfd)
        _check(lib.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(fd),
                           ctypes.c_char_p(b""),
                           ctypes.c_uint(AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)),
                           ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
               f"mount_setattr MOUNT_ATTR_IDMAP {source}")
        _check(lib.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(fd),
                           ctypes.c_char_p(b""), ctypes.c_int(AT_FDCWD),
                           ctypes.c_char_p(os.fsencode(target)),
                           ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
               f"move_mount {source} to {target}")
    finally:
        os.close(fd)


def detach(target: str) -> None:
    """Detach whatever is mounted at ``target`` (recursively, lazily); nothing there is
    fine."""
    for _ in range(16):
        if _lib().umount2(os.fsencode(target), MNT_DETACH) != 0:
            e = ctypes.get_errno()
            if e in (errno.EINVAL, errno.ENOENT):
                return
            raise OSError(e, f"unmount {target}: {os.strerror(e)}")


def split_options(options: list[str]) -> tuple[list[str], list[IDMap], list[IDMap]]:
    """(options without ``uidmap=``/``gidmap=``, uid maps, gid maps)."""
    rest: list[str] = []
    uids: list[IDMap] = []
    gids: list[IDMap] = []
    for o in options:
        if o.startswith("uidmap="):
            uids = parse(o[len("uidmap="):])
        elif o.startswith("gidmap="):
            gids = parse(o[len("gidmap="):])
        else:
            rest.append(o)
    return rest, uids, gids


class IdmappedLowers:
    """Idmapped clones of an overlay's lowerdirs under ``scratch`` (made here, removed by
    :meth:`release`): ``options`` are the overlay options to mount with. Use::

        lowers = IdmappedLowers(options, uids, gids, scratch)
        try: mount overlay with lowers.options
        finally: lowers.release()   # the overlay keeps its own copies of the layers
    """

    def __init__(self, options: list[str], uids: list[IDMap], gids: list[IDMap],
                 scratch: str) -> None:
        self.scratch = scratch
        self.dirs: list[str] = []
        self.options = list(options)
        idx = next((i for i, o in enumerate(options) if o.startswith("lowerdir=")), -1)
        if idx < 0:
            return
        lowers = options[idx][len("lowerdir="):].split(":")
        os.makedirs(scratch, mode=0o700, exist_ok=True)
        nsfd = userns_fd(uids or gids, gids or uids)
        try:
            for i, lower in enumerate(lowers):
                d = os.path.join(scratch, str(i))
                os.mkdir(d, 0o700)
                self.dirs.append(d)
                clone_idmapped(lower, d, nsfd, recursive=False)
        except BaseException:
            self.release()
            raise
        finally:
            os.close(nsfd)
        self.options[idx] = "lowerdir=" + ":".join(self.dirs)

    def release(self) -> None:
        for d in self.dirs:
            try:
                detach(d)
                os.rmdir(d)
            except OSError:
                pass
        self.dirs = []
        try:
            os.rmdir(self.scratch)
        except OSError:
            pass
