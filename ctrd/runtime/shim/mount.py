"""Mounting a task's rootfs at ``<bundle>/rootfs`` and unmounting it again.

mount(2)/umount2(2) through ctypes. Option words are parsed as containerd does
(``mount/mount_linux.go``), like :mod:`ctrd.snapshots.mount` — not imported here because it
pulls in dataclasses, tempfile and subprocess, which a shim should not carry. Overlay options
longer than a page are made to fit by mounting from the lowerdirs' common parent: the shim is
single-threaded, so it may ``chdir`` there for the call and back.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
MNT_DETACH = 2
_PROPAGATION = (1 << 20) | (1 << 18) | (1 << 19) | (1 << 17)
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, 16), "atime": (True, 1024), "bind": (False, MS_BIND), "defaults": (False, 0),
    "dev": (True, 4), "diratime": (True, 2048), "dirsync": (False, 128), "exec": (True, 8),
    "mand": (False, 64), "noatime": (False, 1024), "nodev": (False, 4),
    "nodiratime": (False, 2048), "noexec": (False, 8), "nomand": (True, 64),
    "norelatime": (True, 1 << 21), "nostrictatime": (True, 1 << 24), "nosuid": (False, 2),
    "rbind": (False, MS_BIND | MS_REC), "relatime": (False, 1 << 21),
    "remount": (False, MS_REMOUNT), "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "strictatime": (False, 1 << 24), "suid": (True, 2), "sync": (False, 16),
    "private": (False, 1 << 18), "rprivate": (False, (1 << 18) | MS_REC),
    "shared": (False, 1 << 20), "rshared": (False, (1 << 20) | MS_REC),
    "slave": (False, 1 << 19), "rslave": (False, (1 << 19) | MS_REC),
    "unbindable": (False, 1 << 17), "runbindable": (False, (1 << 17) | MS_REC),
}
PAGE = os.sysconf("SC_PAGE_SIZE")

_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _lib().mount(source.encode(), target.encode(), fstype.encode(), flags,
                    data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} {source} on {target}: {os.strerror(e)}")


def _compact(options: list[str]) -> tuple[str, list[str]]:
    for i, o in enumerate(options):
        if o.startswith("lowerdir="):
            dirs = o[len("lowerdir="):].split(":")
            common = os.path.dirname(os.path.commonprefix(dirs))
            if len(dirs) < 2 or common in ("", "/"):
                break
            rel = "lowerdir=" + ":".join(d[len(common) + 1:] for d in dirs)
            return common, options[:i] + options[i + 1:] + [rel]
    return "", options


def mount(type_: str, source: str, options: list[str], target: str) -> None:
    """Mount one containerd Mount at ``target``. ``uidmap=``/``gidmap=`` options (a
    user-namespaced pod's rootfs): an overlay is mounted on idmapped clones of its
    lowerdirs (:mod:`ctrd.snapshots.idmap`); a bind (a layer-less snapshot, chowned to the
    mapped root by the snapshotter) drops them."""
    if any(o.startswith(("uidmap=", "gidmap=")) for o in options):
        from ctrd.snapshots import idmap

        options, uids, gids = idmap.split_options(list(options))
        if type_ == "overlay":
            lowers = idmap.IdmappedLowers(options, uids, gids, target + ".idmap")
            try:
                mount(type_, source, lowers.options, target)
            finally:
                lowers.release()
            return
    chdir = ""
    if type_ == "overlay" and sum(len(o) + 1 for o in options) >= PAGE - 512:
        chdir, options = _compact(list(options))
    flags, data = 0, []
    for o in options:
        f = _FLAGS.get(o)
        if f is None:
            data.append(o)
        elif f[1]:
            flags = flags & ~f[1] if f[0] else flags | f[1]
    sdata = ",".join(data)
    if len(sdata) >= PAGE:
        raise OSError(errno.E2BIG, f"mount options of {type_} on {target} are too long")
    oflags = flags & ~_PROPAGATION
    if not flags & MS_REMOUNT or sdata:
        if chdir:
            cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.chdir(chdir)
                _mount(source, target, type_, oflags, sdata)
            finally:
                os.fchdir(cwd)
                os.close(cwd)
        else:
            _mount(source, target, type_, oflags, sdata)
    if flags & _PROPAGATION:
        _mount("", target, "", flags & (_PROPAGATION | MS_REC), "")
    if oflags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:
        _mount("", target, "", oflags | MS_REMOUNT, "")


def mount_all(mounts, target: str) -> None:
    """Mount containerd ``Mount`` messages at ``target`` in order; on failure what was mounted
    is unmounted before the error propagates."""
    done = 0
    try:
        for m in mounts:
            mount(m.type, m.source, list(m.options), target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target)
        raise


def unmount(target: str) -> bool:
    """Unmount the top mount at ``target`` (busy: retried ~1 s, then detached). False when
    nothing is mounted there."""
    t = os.fsencode(target)
    for _ in range(20):
        if _lib().umount2(t, 0) == 0:
            return True
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):
            return False
        if e != errno.EBUSY:
            raise OSError(e, f"unmount {target}: {os.strerror(e)}")
        time.sleep(0.05)
    if _lib().umount2(t, MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"unmount {target}: {os.strerror(e)}")
        return False
    return True


def unmount_all(target: str) -> None:
    """Unmount everything stacked at ``target`` (containerd's ``UnmountAll``)."""
    for _ in range(100):
        if not unmount(target):
            return
