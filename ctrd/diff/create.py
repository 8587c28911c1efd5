"""Creating a layer: the changes from a lower tree to an upper tree, as an OCI layer tar.

containerd's ``fs.Changes`` double walk and ``archive.WriteDiff``: every path of the upper
tree that is missing from the lower one or differs from it (type, mode, owner, size,
modification time, link target, device, xattrs) is written; every path of the lower tree
missing from the upper one becomes a whiteout (``.wh.<name>``; a deleted directory is one
whiteout, its contents are not listed). A changed entry's parent directories are written
too, so the layer applies on its own. Hardlinks within the upper tree stay hardlinks.

:func:`write_diff` streams the tar to any writable; :func:`diff_to_content` compresses it
(gzip through isal when available) into a content writer and returns both digests.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

WHITEOUT_PREFIX = ".wh."


def _xattrs(path: str) -> dict[str, str]:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for n in names:
        if n.startswith("trusted.overlay."):
            continue  # overlay's own bookkeeping is never part of a layer
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False).decode("utf-8",
                                                                        "surrogateescape")
        except OSError:
            pass
    return out


def _same(a: os.stat_result, b: os.stat_result, pa: str, pb: str) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
        return False
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return False
    if stat.S_ISDIR(a.st_mode):
        return _xattrs(pa) == _xattrs(pb)
    if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
        if a.st_rdev != b.st_rdev:
            return False
    if a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns:
        return False
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(pa) == os.readlink(pb)
    return _xattrs(pa) == _xattrs(pb)


def changes(lower: str, upper: str) -> Iterator[tuple[str, str]]:
    """(kind, relative path) in path order: kind is "add"/"modify" (take it from the upper
    tree) or "delete"."""

    def walk(rel: str) -> Iterator[tuple[str, str]]:
        up_dir, low_dir = os.path.join(upper, rel), os.path.join(lower, rel)
        up = set(os.listdir(up_dir))
        try:
            low = set(os.listdir(low_dir)) if os.path.isdir(low_dir) and \
                not os.path.islink(low_dir) else set()
        except OSError:
            low = set()
        for name in sorted(up | low):
            r = os.path.join(rel, name) if rel else name
            pu, pl = os.path.join(upper, r), os.path.join(lower, r)
            if name not in up:
                yield "delete", r
                continue
            su = os.lstat(pu)
            if name not in low:
                yield "add", r
                if stat.S_ISDIR(su.st_mode):
                    yield from walk_all(r)
                continue
            sl = os.lstat(pl)
            if not _same(sl, su, pl, pu):
                yield "modify", r
            if stat.S_ISDIR(su.st_mode):
                if stat.S_ISDIR(sl.st_mode):
                    yield from walk(r)
                else:
                    yield from walk_all(r)

    def walk_all(rel: str) -> Iterator[tuple[str, str]]:
        for name in sorted(os.listdir(os.path.join(upper, rel))):
            r = os.path.join(rel, name)
            yield "add", r
            if stat.S_ISDIR(os.lstat(os.path.join(upper, r)).st_mode):
                yield from walk_all(r)

    yield from walk("")


def write_diff(lower: str, upper: str, out: BinaryIO, epoch: float | None = None) -> int:
    """Write the layer tar of ``upper`` over ``lower`` to ``out``; returns the entry count.
    ``epoch`` (SOURCE_DATE_EPOCH, seconds): later mtimes are clamped to it, as containerd's
    ``WithModTimeUpperBound`` (whiteouts keep time 0, as containerd 2.x's)."""
    n = 0
    written_dirs: set[str] = set()
    inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:

        def add(rel: str) -> None:
            nonlocal n
            path = os.path.join(upper, rel)
            st = os.lstat(path)
            ti = tf.gettarinfo(path, arcname=rel)
            ti.uname = ti.gname = ""
            ti.mtime = st.st_mtime_ns / 1e9
            if epoch is not None and ti.mtime > epoch:
                ti.mtime = epoch
            xattrs = _xattrs(path)
            if xattrs:
                ti.pax_headers.update({f"SCHILY.xattr.{k}": v for k, v in xattrs.items()})
            if stat.S_ISREG(st.st_mode):
                ino = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and ino in inodes:
                    ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, inodes[ino], 0
                    tf.addfile(ti)
                else:
                    inodes[ino] = rel
                    with open(path, "rb") as f:
                        tf.addfile(ti, f)
            else:
                tf.addfile(ti)
            if stat.S_ISDIR(st.st_mode):
                written_dirs.add(rel)
            n += 1

        def parents(rel: str) -> None:
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in written_dirs:
                    add(d)

        for kind, rel in changes(lower, upper):
            parents(rel)
            if kind == "delete":
                head, name = os.path.split(rel)
                ti = tarfile.TarInfo(os.path.join(head, WHITEOUT_PREFIX + name))
                ti.mtime = 0
                tf.addfile(ti)
                n += 1
            elif rel not in written_dirs:
                add(rel)
    return n


@dataclass
class Created:
    digest: str  # of the compressed blob
    size: int
    diff_id: str  # of the uncompressed tar
    media_type: str


class _Tee:
    """Hashes the uncompressed tar and feeds the compressor."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.h = hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.sink.write(b)
        return len(b)


class _ToWriter:
    """A file-like over a content writer, hashing the compressed bytes."""

    def __init__(self, w) -> None:
        self.w = w
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b: bytes) -> int:
        if b:
            self.h.update(b)
            self.w.write(bytes(b))
            self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


def diff_to_content(lower: str, upper: str, writer, media_type: str = GZIP,
                    labels: dict[str, str] | None = None,
                    epoch: float | None = None) -> Created:
    """Write the diff through ``writer`` (a content writer) and commit it, labelled with
    ``containerd.io/uncompressed`` as containerd does."""
    sink = _ToWriter(writer)
    if media_type in (GZIP, "application/vnd.docker.image.rootfs.diff.tar.gzip"):
        try:
            from isal import igzip as gz
        except ImportError:  # pragma: no cover - isal is a dependency
            import gzip as gz
        with gz.GzipFile(fileobj=sink, mode="wb", mtime=0) as z:
            tee = _Tee(z)
            write_diff(lower, upper, tee, epoch)
    elif media_type == TAR:
        tee = _Tee(sink)
        write_diff(lower, upper, tee, epoch)
    else:
        from ctrd.errdefs import NotImplemented_

        raise NotImplemented_(f"unsupported diff media type: {media_type}")
    diff_id = "sha256:" + tee.h.hexdigest()
    digest = "sha256:" + sink.h.hexdigest()
    all_labels = dict(labels or {})
    all_labels["containerd.io/uncompressed"] = diff_id
    writer.commit(sink.n, digest, all_labels)
    return Created(digest, sink.n, diff_id, media_type)
