"""Mounting what a snapshotter returns: :func:`mount_all` a list of :class:`Mount` at a
target, :func:`unmount` / :func:`unmount_all` it again, or :func:`mounted` for a temporary
directory that is unmounted and removed on exit, even on error.

Mounts are made with mount(2) through ctypes (libc from ``dlopen(NULL)``), with containerd's
option parsing (``mount/mount_linux.go``): flag words (``ro``, ``rbind``, ``nosuid``, ...)
become mount flags, the rest is the data string; a read-only bind is a bind followed by a
read-only remount, as the kernel ignores MS_RDONLY on the first bind.

Long overlay lowerdir lists: the data string of mount(2) is limited to a page. When an
overlay's options come near it, the lowerdirs are made relative to their longest common
parent directory and the mount is made by a short-lived child process (``python -I -S``)
started with that directory as its working directory, so the calling process's cwd never
changes (the daemon is multi-threaded: no chdir, and no fork of the interpreter). 128
layers under a typical snapshotter root take ~2.5 KiB this way instead of ~8 KiB.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

from ctrd.snapshots.snapshotter import Mount

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

_PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

# option -> (clears the flag?, flag), as containerd's parseMountOptions
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS), "atime": (True, MS_NOATIME), "bind": (False, MS_BIND),
    "defaults": (False, 0), "dev": (True, MS_NODEV), "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC), "exec": (True, MS_NOEXEC), "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME), "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME), "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK), "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME), "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC), "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT), "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME), "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
    "private": (False, MS_PRIVATE), "rprivate": (False, MS_PRIVATE | MS_REC),
    "shared": (False, MS_SHARED), "rshared": (False, MS_SHARED | MS_REC),
    "slave": (False, MS_SLAVE), "rslave": (False, MS_SLAVE | MS_REC),
    "unbindable": (False, MS_UNBINDABLE), "runbindable": (False, MS_UNBINDABLE | MS_REC),
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(OSError):
    pass


def parse_options(options: Sequence[str]) -> tuple[int, str]:
    """(mount flags, data string) of a Mount's options."""
    flags, data = 0, []
    for o in options:
        f = _FLAGS.get(o)
        if f is not None and f[1]:
            flags = flags & ~f[1] if f[0] else flags | f[1]
        elif f is None:
            data.append(o)
    return flags, ",".join(data)


def compact_lowerdir(options: Sequence[str]) -> tuple[str, list[str]]:
    """(common parent dir, options with lowerdirs relative to it); ``("", options)`` when
    there is nothing to gain."""
    opts = list(options)
    idx = next((i for i, o in enumerate(opts) if o.startswith("lowerdir=")), -1)
    if idx < 0:
        return "", opts
    dirs = opts[idx].removeprefix("lowerdir=").split(":")
    if len(dirs) < 2 or not all(d.startswith("/") for d in dirs):
        return "", opts
    common = os.path.dirname(os.path.commonprefix(dirs))
    if common in ("", "/"):
        return "", opts
    common += "/"
    del opts[idx]
    opts.append("lowerdir=" + ":".join(d[len(common):] for d in dirs))
    return common, opts


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                   data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise MountError(e, f"mount {fstype} {source} on {target} "
                            f"(data {data[:200]!r}): {os.strerror(e)}")


# The child that mounts with relative lowerdirs from its own working directory.
_CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
src, tgt, fstype, flags, data = sys.argv[1:6]
if libc.mount(src.encode(), tgt.encode(), fstype.encode(), int(flags), data.encode()) != 0:
    e = ctypes.get_errno()
    sys.stderr.write(f"{e} {os.strerror(e)}")
    sys.exit(1)
"""


def _mount_in(chdir: str, source: str, target: str, fstype: str, flags: int,
              data: str) -> None:
    p = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD, source, target, fstype,
                        str(flags), data], cwd=chdir, capture_output=True, text=True)
    if p.returncode != 0:
        code, _, msg = p.stderr.strip().partition(" ")
        e = int(code) if code.isdigit() else errno.EIO
        raise MountError(e, f"mount {fstype} on {target} from {chdir} "
                            f"(data {data[:200]!r}): {msg or p.stderr.strip()}")


def mount(m: Mount, target: str) -> None:
    """Mount one :class:`Mount` at ``target`` (an existing directory). ``uidmap=`` /
    ``gidmap=`` options: see :mod:`ctrd.snapshots.idmap` (an overlay on idmapped
    lowerdirs; a bind drops them)."""
    target = os.path.abspath(target)
    options, chdir = list(m.options), ""
    if any(o.startswith(("uidmap=", "gidmap=")) for o in options):
        from ctrd.snapshots import idmap

        options, uids, gids = idmap.split_options(options)
        if m.type == "overlay":
            lowers = idmap.IdmappedLowers(options, uids, gids, target + ".idmap")
            try:
                mount(Mount(m.type, m.source, lowers.options), target)
            finally:
                lowers.release()
            return
    if m.type == "overlay" and sum(len(o) for o in options) >= PAGE_SIZE - 512:
        chdir, options = compact_lowerdir(options)
    flags, data = parse_options(options)
    if len(data) >= PAGE_SIZE:
        raise MountError(errno.E2BIG, f"mount options of {m.type} on {target} are too long "
                                      f"({len(data)} bytes)")
    oflags = flags & ~_PROPAGATION
    if not flags & MS_REMOUNT or data:
        if chdir:
            _mount_in(chdir, m.source, target, m.type, oflags, data)
        else:
            _sys_mount(m.source, target, m.type, oflags, data)
    if flags & _PROPAGATION:
        _sys_mount("", target, "", flags & (_PROPAGATION | MS_REC | MS_SILENT), "")
    if oflags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:
        _sys_mount("", target, "", oflags | MS_REMOUNT, "")


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount each of ``mounts`` at ``target`` in order. On failure, what was mounted is
    unmounted again before the error propagates."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target)
        raise


def unmount(target: str, retries: int = 20) -> None:
    """Unmount the top mount at ``target``: a busy mount is retried for ~1 s, then detached
    (MNT_DETACH). Not a mount point, or no such path: nothing to do."""
    t = os.fsencode(target)
    for _ in range(retries):
        if _libc.umount2(t, 0) == 0:
            return
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):
            return
        if e != errno.EBUSY:
            raise MountError(e, f"unmount {target}: {os.strerror(e)}")
        time.sleep(0.05)
    if _libc.umount2(t, MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise MountError(e, f"unmount {target} (detach): {os.strerror(e)}")


def is_mountpoint(path: str) -> bool:
    path = os.path.realpath(path)
    return path in mountpoints()


def mountpoints() -> list[str]:
    """Mount points of this process's mount namespace (decoded octal escapes)."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = line.split(b" ")[4]
            out.append(_unescape(point))
    return out


def _unescape(raw: bytes) -> str:
    import re

    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), raw))


def unmount_all(target: str) -> None:
    """Unmount every mount stacked at ``target``."""
    target = os.path.realpath(target)
    for _ in range(1000):
        if target not in mountpoints():
            return
        unmount(target)
    raise MountError(errno.EBUSY, f"unmount {target}: still mounted")


@contextmanager
def mounted(mounts: Sequence[Mount], prefix: str = "ctrd-mount-",
            dir: str | None = None) -> Iterator[str]:
    """Mount ``mounts`` at a new temporary directory and yield its path; on exit (even on
    error) unmount everything there and remove the directory."""
    import tempfile

    target = tempfile.mkdtemp(prefix=prefix, dir=dir)
    try:
        mount_all(mounts, target)
        yield target
    finally:
        unmount_all(target)
        # rmdir, never rmtree: whatever is left there is not ours to delete.
        os.rmdir(target)
