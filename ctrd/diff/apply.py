"""Applying an OCI layer's tar stream to a directory.

:func:`apply_layer` reads the uncompressed tar once, front to back, and writes each entry into
the target directory while hashing every byte: the sha256 is the layer's diff ID (containerd's
``archive.Apply`` plus the digesting reader of its ``diff/apply``). Whiteouts follow the OCI
layer spec, turned into overlayfs whiteouts (``whiteouts="overlay"``: the target is an upper
dir) or carried out by deleting (``whiteouts="delete"``: the target holds the merged tree).

Safety: entry names are cleaned lexically against the target as if it were ``/`` (so ``..``
and absolute names stay inside, as containerd does), and every parent directory is resolved
component by component with symlinks interpreted relative to the target (containerd's
``fs.RootPath``). The final component is never followed: files are created with
``O_EXCL|O_NOFOLLOW``, ownership/xattrs/times use the no-follow calls, symlinks are never
chmod-ed. Hardlink targets are resolved the same way. A layer that cannot be applied raises
InvalidArgument naming the entry; the files it created by then are removed again (the bytes
go at once), its directories are the caller's to discard with the snapshot, and nothing
outside the target is ever touched.

The tar reader is ctrd's own, lean one (a layer needs only ustar/GNU/PAX headers). What it
applies at, against containerd 1.6: bench/README.md, "Layer apply", measured by bench/apply.py.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import shutil
import stat
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

from ctrd.diff.compression import DEFAULT_MAX_SIZE, open_decompressed
from ctrd.diff.limits import UnpackRefused
from ctrd.diff.rootpath import root_path as _root_path
from ctrd.errdefs import InvalidArgument

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

_CHUNK = 1 << 20
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_MAX_HEADER_DATA = 1 << 20  # PAX / GNU long-name payloads beyond this are not real layers
_MAX_NS = (1 << 63) - 1
# Errors from the machine rather than the layer: passed through as they are.
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM,
               errno.EMFILE, errno.ENFILE}
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ApplyResult:
    """What applying a layer produced: its diff ID (``sha256:<hex>`` of the uncompressed tar,
    trailing bytes included) and the number of uncompressed bytes read."""

    diff_id: str
    size: int


# ---------------------------------------------------------------------------------------------
# Tar stream


@dataclass(slots=True)
class _Entry:
    name: str
    type: bytes  # typeflag, normalised: b"0" regular, b"5" dir, ...
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] | None


def _num(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        n = int.from_bytes(field, "big", signed=False)
        if field[0] & 0x40:  # negative
            n -= 1 << (8 * len(field))
        else:
            n &= (1 << (8 * len(field) - 1)) - 1
        return n
    s = field.split(b"\0", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise InvalidArgument(f"invalid tar header: bad {what} field {bytes(field)!r}") from None


def _str(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _TarReader:
    """Headers and file data from an uncompressed tar stream, hashing everything read."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self.sha = hashlib.sha256()
        self.size = 0

    def _more(self) -> bytes:
        chunk = self._stream.read(_CHUNK)
        if chunk:
            self.sha.update(chunk)
            self.size += len(chunk)
        return chunk

    def _take(self, n: int) -> bytes | None:
        """Exactly n bytes; None at a clean end of stream; InvalidArgument when cut short."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            p = self._pos
            self._pos = p + n
            return self._buf[p : p + n]
        parts = [self._buf[self._pos :]]
        while avail < n:
            chunk = self._more()
            if not chunk:
                if avail == 0:
                    self._buf, self._pos = b"", 0
                    return None
                raise InvalidArgument("truncated layer tar: unexpected end of stream")
            parts.append(chunk)
            avail += len(chunk)
        buf = b"".join(parts)
        self._buf, self._pos = buf, n
        return buf[:n]

    def _need(self, n: int) -> bytes:
        data = self._take(n)
        if data is None:
            raise InvalidArgument("truncated layer tar: unexpected end of stream")
        return data

    def skip(self, n: int) -> None:
        avail = len(self._buf) - self._pos
        if avail >= n:
            self._pos += n
            return
        n -= avail
        self._buf, self._pos = b"", 0
        while n:
            chunk = self._more()
            if not chunk:
                raise InvalidArgument("truncated layer tar: unexpected end of stream")
            if len(chunk) > n:
                self._buf, self._pos = chunk, n
                return
            n -= len(chunk)

    def copy_to(self, fd: int, size: int) -> None:
        """Write the next ``size`` data bytes to ``fd`` and skip the block padding."""
        pad = -size % _BLOCK
        while size:
            avail = len(self._buf) - self._pos
            if not avail:
                chunk = self._more()
                if not chunk:
                    raise InvalidArgument("truncated layer tar: unexpected end of stream")
                self._buf, self._pos, avail = chunk, 0, len(chunk)
            n = min(avail, size)
            with memoryview(self._buf) as mv:
                view = mv[self._pos : self._pos + n]
                while view:
                    view = view[os.write(fd, view):]
            self._pos += n
            size -= n
        if pad:
            self.skip(pad)

    def drain(self) -> None:
        """Read (and hash) whatever follows the end-of-archive marker."""
        self._buf, self._pos = b"", 0
        while self._more():
            pass

    def next(self) -> _Entry | None:
        """The next entry, with PAX and GNU long-name headers folded in; None at the end."""
        pax: dict[bytes, bytes] = {}
        longname = longlink = None
        while True:
            hdr = self._take(_BLOCK)
            if hdr is None:
                return None  # no end-of-archive marker; Go's reader accepts that too
            if hdr == _ZERO_BLOCK:
                self._take(_BLOCK)  # the second zero block, if there
                return None
            chk = _num(hdr[148:156], "checksum")
            unsigned = sum(hdr) - sum(hdr[148:156]) + 256
            if chk != unsigned:
                signed = unsigned - 2 * sum(b for b in hdr if b >= 128)
                if chk != signed:
                    raise InvalidArgument("invalid tar header: checksum mismatch (not a tar?)")
            t = hdr[156:157]
            size = _num(hdr[124:136], "size")
            if size < 0:
                raise InvalidArgument("invalid tar header: negative size")
            if t in (b"x", b"g", b"L", b"K"):
                if size > _MAX_HEADER_DATA:
                    raise InvalidArgument(f"invalid tar header: {t.decode()} header of {size} bytes")
                data = self._need(size + (-size % _BLOCK))[:size]
                if t == b"x":
                    pax.update(_parse_pax(data))
                elif t == b"L":
                    longname = data.split(b"\0", 1)[0]
                elif t == b"K":
                    longlink = data.split(b"\0", 1)[0]
                # "g": global headers are ignored, as containerd does
                continue
            break

        magic = hdr[257:265]
        name_b = hdr[0:100].split(b"\0", 1)[0]
        if magic == b"ustar\x0000":  # POSIX: the prefix field extends the name
            prefix = hdr[345:500].split(b"\0", 1)[0]
            if prefix:
                name_b = prefix + b"/" + name_b
        if longname is not None:
            name_b = longname
        link_b = longlink if longlink is not None else hdr[157:257].split(b"\0", 1)[0]
        mtime_ns = _num(hdr[136:148], "mtime") * 1_000_000_000
        atime_ns = None
        uid = _num(hdr[108:116], "uid")
        gid = _num(hdr[116:124], "gid")
        xattrs = None
        if pax:
            if b"path" in pax:
                name_b = pax[b"path"]
            if b"linkpath" in pax:
                link_b = pax[b"linkpath"]
            if b"size" in pax:
                size = _pax_int(pax[b"size"], "size")
            if b"uid" in pax:
                uid = _pax_int(pax[b"uid"], "uid")
            if b"gid" in pax:
                gid = _pax_int(pax[b"gid"], "gid")
            if b"mtime" in pax:
                mtime_ns = _pax_time(pax[b"mtime"])
            if b"atime" in pax:
                atime_ns = _pax_time(pax[b"atime"])
            for k, v in pax.items():
                if k.startswith(b"SCHILY.xattr."):
                    if xattrs is None:
                        xattrs = {}
                    xattrs[k[13:].decode("utf-8", "surrogateescape")] = v
                elif k.startswith(b"GNU.sparse."):
                    t = b"S"
        if t == b"\0" or t == b"7":
            t = b"5" if name_b.endswith(b"/") and t == b"\0" else b"0"
        if t in (b"1", b"2", b"3", b"4", b"5", b"6"):
            data_size = 0  # header-only types carry no data, whatever size says
        else:
            data_size = size
        return _Entry(
            name=name_b.decode("utf-8", "surrogateescape"),
            type=t,
            mode=_num(hdr[100:108], "mode") & 0o7777,
            uid=uid,
            gid=gid,
            size=data_size,
            mtime_ns=mtime_ns,
            atime_ns=mtime_ns if atime_ns is None or atime_ns < mtime_ns else atime_ns,
            linkname=link_b.decode("utf-8", "surrogateescape"),
            devmajor=_num(hdr[329:337], "devmajor") if t in (b"3", b"4") else 0,
            devminor=_num(hdr[337:345], "devminor") if t in (b"3", b"4") else 0,
            xattrs=xattrs,
        )


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp]) if sp > pos else -1
        except ValueError:
            length = -1
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n" or sp >= end:
            raise InvalidArgument("invalid tar header: malformed PAX record")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq:
            raise InvalidArgument("invalid tar header: malformed PAX record")
        records[key] = value
        pos = end
    return records


def _pax_int(v: bytes, what: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise InvalidArgument(f"invalid tar header: bad PAX {what} {v!r}") from None
    if n < 0:
        raise InvalidArgument(f"invalid tar header: negative PAX {what}")
    return n


def _pax_time(v: bytes) -> int:
    sec, _, frac = v.partition(b".")
    try:
        ns = int(sec) * 1_000_000_000
        if frac:
            f = int(frac[:9].ljust(9, b"0"))
            ns = ns - f if sec.startswith(b"-") else ns + f
    except ValueError:
        raise InvalidArgument(f"invalid tar header: bad PAX time {v!r}") from None
    return ns


def _bound_ns(ns: int) -> int:
    # containerd's boundTime: out-of-range times become the epoch.
    return ns if 0 <= ns <= _MAX_NS else 0


# ---------------------------------------------------------------------------------------------
# Applying


class _Applier:
    def __init__(self, root: str, whiteouts: str, parents: Sequence[str]) -> None:
        self.root = root
        self.overlay = whiteouts == "overlay"
        self.parents = [os.path.abspath(p) for p in parents]
        self._dirs_cache: dict[str, str] = {}  # cleaned relative dir -> real path
        self.unpacked: set[str] = set()
        self.dirs: list[_Entry] = []

    # -- paths --------------------------------------------------------------------------------

    def resolve(self, rel: str) -> str:
        return _root_path(self.root, rel)

    def parent_dir(self, rel_dir: str) -> str:
        """Resolved, existing directory for ``rel_dir`` (created like containerd's mkparent)."""
        got = self._dirs_cache.get(rel_dir)
        if got is not None:
            return got
        real = self.resolve(rel_dir)
        if real != self.root:
            self._mkparent(real)
        self._dirs_cache[rel_dir] = real
        return real

    def _mkparent(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                return
            raise OSError(errno.ENOTDIR, "parent is not a directory", path)
        up = os.path.dirname(path)
        if up != self.root and len(up) > len(self.root):
            self._mkparent(up)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise
            return
        os.chmod(path, 0o755)
        rel = path[len(self.root) + 1 :]
        for lower in self.parents:
            lower_path = _root_path(lower, rel)
            try:
                lst = os.lstat(lower_path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(lst.st_mode):
                _copy_dir_info(lst, lower_path, path)
            break

    def invalidate(self) -> None:
        self._dirs_cache.clear()

    def remove(self, path: str) -> None:
        """Remove whatever is at ``path`` without following it; absent is fine."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            self.invalidate()
        else:
            os.unlink(path)
            if stat.S_ISLNK(st.st_mode):
                self.invalidate()

    # -- entries ------------------------------------------------------------------------------

    def apply(self, e: _Entry, tr: _TarReader) -> None:
        rel = posixpath.normpath("/" + e.name).lstrip("/")
        if not rel or rel == ".":
            log.debug("layer entry %r ignored: resolves to the root", e.name)
            tr.skip(e.size + (-e.size % _BLOCK))
            return
        head, _, base = rel.rpartition("/")
        parent = self.parent_dir(head)
        path = parent + "/" + base

        if base.startswith(WHITEOUT_PREFIX):
            tr.skip(e.size + (-e.size % _BLOCK))
            self.whiteout(e, parent, base)
            return

        t = e.type
        if t == b"0":
            self.regular(e, path, tr)
        elif t == b"5":
            self.directory(e, path)
        elif t == b"2":
            self.create(path, lambda: os.symlink(e.linkname, path))
            self.invalidate()
            self.metadata(e, path, symlink=True)
        elif t == b"1":
            target = self.link_target(e.linkname)
            self.create(path, lambda: os.link(target, path, follow_symlinks=False))
            self.invalidate()  # the new name may be a symlink
            # containerd applies the entry's metadata to the (shared) inode too
            self.metadata(e, path, symlink=stat.S_ISLNK(os.lstat(path).st_mode))
        elif t in (b"3", b"4", b"6"):
            kind = {b"3": stat.S_IFCHR, b"4": stat.S_IFBLK, b"6": stat.S_IFIFO}[t]
            dev = os.makedev(e.devmajor, e.devminor) if t != b"6" else 0
            self.create(path, lambda: os.mknod(path, kind | (e.mode & 0o777), dev))
            self.metadata(e, path)
        elif t == b"S":
            raise InvalidArgument("sparse files are not supported")
        else:
            raise InvalidArgument(f"unsupported tar entry type {t!r}")
        self.unpacked.add(path)

    def create(self, path: str, make) -> None:
        try:
            make()
        except FileExistsError:
            self.remove(path)
            make()

    def regular(self, e: _Entry, path: str, tr: _TarReader) -> None:
        try:
            fd = os.open(path, _O_CREATE, e.mode & 0o777)
        except FileExistsError:
            self.remove(path)
            fd = os.open(path, _O_CREATE, e.mode & 0o777)
        try:
            if e.size:
                try:
                    tr.copy_to(fd, e.size)
                except BaseException:
                    # A half-written file is garbage whatever stopped it (a bomb refused
                    # mid-file, ENOSPC): give its blocks back now, not when the snapshot goes.
                    os.unlink(path)
                    raise
            os.fchown(fd, e.uid, e.gid)
            if e.xattrs:
                self.set_xattrs(e, fd)
            os.fchmod(fd, e.mode)
            m = _bound_ns(e.mtime_ns)
            os.utime(fd, ns=(_bound_ns(e.atime_ns), m))
        finally:
            os.close(fd)

    def directory(self, e: _Entry, path: str) -> None:
        try:
            os.mkdir(path, e.mode & 0o777)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                self.remove(path)
                os.mkdir(path, e.mode & 0o777)
        os.lchown(path, e.uid, e.gid)
        if e.xattrs:
            self.set_xattrs(e, path)
        os.chmod(path, e.mode)
        self.dirs.append(e)

    def metadata(self, e: _Entry, path: str, symlink: bool = False) -> None:
        os.lchown(path, e.uid, e.gid)
        if e.xattrs:
            self.set_xattrs(e, path)
        if not symlink:
            os.chmod(path, e.mode)
        os.utime(path, ns=(_bound_ns(e.atime_ns), _bound_ns(e.mtime_ns)),
                 follow_symlinks=False)

    def set_xattrs(self, e: _Entry, target: str | int) -> None:
        for key, value in e.xattrs.items():  # type: ignore[union-attr]
            if key.startswith("trusted."):
                # containerd refuses admin attributes from archives (and overlayfs reads
                # trusted.overlay.* from upper dirs): ignored with a warning.
                log.warning("xattr %s of layer entry %r ignored", key, e.name)
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as err:
                if err.errno == errno.ENOTSUP or (
                        err.errno == errno.EPERM and key.startswith("user.")
                        and e.type not in (b"0", b"5")):
                    log.warning("xattr %s of layer entry %r ignored: %s", key, e.name, err)
                    continue
                raise

    def link_target(self, linkname: str) -> str:
        rel = posixpath.normpath("/" + linkname).lstrip("/")
        head, _, base = rel.rpartition("/")
        if not base or base == ".":
            return self.root
        return self.resolve(head) + "/" + base

    def whiteout(self, e: _Entry, parent: str, base: str) -> None:
        if base == WHITEOUT_OPAQUE:
            if self.overlay:
                os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            else:
                self.opaque(parent)
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise InvalidArgument(f"invalid whiteout name {base!r}")
        path = parent + "/" + name
        if self.overlay:
            os.mknod(path, stat.S_IFCHR, 0)
            os.lchown(path, e.uid, e.gid)
        else:
            self.remove(path)

    def opaque(self, parent: str) -> None:
        """Delete-mode opaque directory: remove what lower layers put in ``parent``, keeping
        this layer's entries (and the directories leading to them)."""
        keep: set[str] = set()
        for p in self.unpacked:
            while p not in keep and len(p) > len(parent) and p.startswith(parent + "/"):
                keep.add(p)
                p = p.rpartition("/")[0]

        def sweep(d: str) -> None:
            for de in os.scandir(d):
                if de.path not in keep:
                    self.remove(de.path)
                elif de.is_dir(follow_symlinks=False):
                    sweep(de.path)

        sweep(parent)
        self.invalidate()

    def discard(self) -> None:
        """After a failed apply: remove the non-directories this layer created (what holds
        its bytes; the directories are left to the snapshot's removal). Best effort: the
        apply's own error is what the caller reports."""
        for path in self.unpacked:
            parent = os.path.dirname(path)
            # Recorded through resolved parents; a later entry may have turned one into a
            # symlink (out of the target, even): only a parent that still resolves to itself
            # is the one the entry was created in.
            if os.path.realpath(parent) != parent:
                continue
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    os.unlink(path)
            except OSError:
                pass

    def finish_dirs(self) -> None:
        # Directory times last, as creating entries inside changed them. Paths are resolved
        # again: a later entry may have replaced a parent with a symlink.
        for e in self.dirs:
            rel = posixpath.normpath("/" + e.name).lstrip("/")
            head, _, base = rel.rpartition("/")
            path = self.resolve(head) + "/" + base
            try:
                os.utime(path, ns=(_bound_ns(e.atime_ns), _bound_ns(e.mtime_ns)),
                         follow_symlinks=False)
            except FileNotFoundError:
                pass


def _copy_dir_info(st: os.stat_result, src: str, dst: str) -> None:
    """A directory this layer needs but does not list gets its lower copy's owner, mode,
    times and xattrs (what an overlayfs copy-up would give it; containerd's WithParents)."""
    os.lchown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    try:
        for key in os.listxattr(src, follow_symlinks=False):
            if key.startswith("trusted."):
                continue
            os.setxattr(dst, key, os.getxattr(src, key, follow_symlinks=False),
                        follow_symlinks=False)
    except OSError as err:
        if err.errno not in (errno.ENOTSUP, errno.ENODATA):
            raise
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def apply_layer(target_dir: str | os.PathLike[str], tar_stream: Readable, *,
                whiteouts: Literal["overlay", "delete"] = "delete",
                parents: Sequence[str | os.PathLike[str]] = ()) -> ApplyResult:
    """Apply the uncompressed layer tar read from ``tar_stream`` to ``target_dir``.

    ``whiteouts``: "overlay" when ``target_dir`` is an overlayfs upper dir (whiteouts become
    0/0 character devices, opaque markers the ``trusted.overlay.opaque`` xattr), "delete" when
    it holds the merged tree. ``parents``: lower layers' directories, topmost first, from which
    a directory this layer needs but does not list takes its owner and mode.

    Reads the stream to its end (bytes after the tar's end are hashed too) and returns the
    diff ID. A layer that cannot be applied safely raises InvalidArgument naming the entry.
    """
    if whiteouts not in ("overlay", "delete"):
        raise InvalidArgument(f"unknown whiteout mode {whiteouts!r}")
    root = os.path.realpath(os.fspath(target_dir))
    if not os.path.isdir(root):
        raise InvalidArgument(f"layer target {root!r} is not a directory")
    ap = _Applier(root, whiteouts, [os.fspath(p) for p in parents])
    tr = _TarReader(tar_stream)
    try:
        _apply_entries(ap, tr)
    except BaseException:
        ap.discard()
        raise
    ap.finish_dirs()
    tr.drain()
    return ApplyResult(diff_id="sha256:" + tr.sha.hexdigest(), size=tr.size)


def _apply_entries(ap: _Applier, tr: _TarReader) -> None:
    while True:
        e = tr.next()
        if e is None:
            break
        try:
            ap.apply(e, tr)
        except UnpackRefused:
            raise  # about the layer, not this entry
        except InvalidArgument as err:
            raise InvalidArgument(f"layer entry {e.name!r}: {err.detail}") from None
        except ValueError as err:  # e.g. a NUL byte in a PAX name
            raise InvalidArgument(f"layer entry {e.name!r}: {err}") from None
        except OSError as err:
            if err.errno in _ENV_ERRNOS:
                raise
            raise InvalidArgument(
                f"layer entry {e.name!r}: {err.strerror or err}"
                + (f": {err.filename}" if err.filename else "")) from None


def apply_layer_blob(target_dir: str | os.PathLike[str], blob: Readable, media_type: str, *,
                     whiteouts: Literal["overlay", "delete"] = "delete",
                     parents: Sequence[str | os.PathLike[str]] = (),
                     max_size: int = DEFAULT_MAX_SIZE,
                     refuse: Callable[[], Exception] | None = None,
                     checkpoint: Callable[[], None] | None = None,
                     checkpoint_every: int = 0) -> ApplyResult:
    """:func:`apply_layer` of a (compressed) layer blob of ``media_type``; ``max_size``,
    ``refuse``, ``checkpoint`` and ``checkpoint_every`` bound the uncompressed stream as
    :func:`ctrd.diff.compression.open_decompressed` says (a refused layer's files are
    removed again)."""
    stream = open_decompressed(blob, media_type, max_size=max_size, refuse=refuse,
                               checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    try:
        return apply_layer(target_dir, stream, whiteouts=whiteouts, parents=parents)
    finally:
        stream.close()
