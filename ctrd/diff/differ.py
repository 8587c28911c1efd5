"""The differ: apply a layer from the content store onto a snapshot's mounts (what
``ctr pull`` and image unpack call through Diff.Apply).

As containerd's walking differ on Linux: a single overlay mount is applied straight into its
upper dir (whiteouts become overlay whiteouts; the lower dirs supply missing parents), a
single bind mount straight into its source (a bottom layer, or the native snapshotter's copy);
anything else is mounted on a temporary directory, applied with deleting whiteouts, and
unmounted. The result is the layer's diff ID and uncompressed size, which the client checks
against the image config ("wrong diff id"). Every apply is bounded by the differ's unpack
limits (:mod:`ctrd.diff.limits`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ctrd.content.store import ReaderAt
from ctrd.diff.apply import ApplyResult, apply_layer_blob
from ctrd.diff.limits import FREE_CHECK_EVERY, UnpackLimits
from ctrd.diff.limits import current as current_limits
from ctrd.errdefs import FailedPrecondition, InvalidArgument
from ctrd.snapshots.snapshotter import Mount

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_UNLIMITED = 1 << 62  # max_unpacked_bytes = 0: no limit at all


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int


class _ReaderStream:
    """A ``read(n)`` stream over a content ReaderAt."""

    def __init__(self, reader: ReaderAt) -> None:
        self._r = reader
        self._offset = 0

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = self._r.size - self._offset
        data = self._r.read_at(self._offset, min(n, 1 << 22)) if n else b""
        self._offset += len(data)
        return data


def _option(options: list[str], name: str) -> str | None:
    for o in options:
        if o.startswith(name + "="):
            return o[len(name) + 1:]
    return None


def syncfs(path: str) -> None:
    """syncfs(2) the filesystem holding ``path`` (containerd 2.x's ``sync_fs`` apply
    option: the layer is on disk before the snapshot is committed)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def apply_to_mounts(reader: ReaderAt, media_type: str, mounts: list[Mount],
                    sync_fs: bool = False, *, layer: str = "",
                    limits: UnpackLimits | None = None) -> ApplyResult:
    """Apply the layer blob in ``reader`` (of ``media_type``) to what ``mounts`` show;
    ``sync_fs``: syncfs the filesystem written before answering.

    ``limits`` (default: the daemon's, :func:`ctrd.diff.limits.current`) bound the unpack
    by the blob's real size; a layer past them raises UnpackRefused (free space: DiskReserve)
    naming ``layer`` (its digest), with the files it wrote removed."""
    if not mounts:
        raise InvalidArgument("no mounts to apply the layer to")
    stream = _ReaderStream(reader)
    lim = limits if limits is not None else current_limits()
    layer = layer or "(unnamed)"
    allowed = lim.allowed(reader.size)

    def run(target: str, **kw) -> ApplyResult:
        lim.check_free(layer, target)  # before the first byte
        result = apply_layer_blob(
            target, stream, media_type,
            max_size=allowed if allowed is not None else _UNLIMITED,
            refuse=(lambda: lim.refused(layer, reader.size)) if allowed is not None else None,
            checkpoint=(lambda: lim.check_free(layer, target)) if lim.min_free_bytes > 0
            else None,
            checkpoint_every=FREE_CHECK_EVERY, **kw)
        if sync_fs:
            syncfs(target)
        return result

    if len(mounts) == 1 and mounts[0].type == "overlay":
        upper = _option(mounts[0].options, "upperdir")
        lower = _option(mounts[0].options, "lowerdir")
        if upper:
            parents = lower.split(":") if lower else []
            return run(upper, whiteouts="overlay", parents=parents)
    if len(mounts) == 1 and mounts[0].type == "bind" and os.path.isdir(mounts[0].source):
        return run(mounts[0].source, whiteouts="delete")
    from ctrd.snapshots.mount import mounted

    with mounted(mounts) as target:
        return run(target, whiteouts="delete")


def apply(content, ns: str, desc: Descriptor, mounts: list[Mount],
          sync_fs: bool = False, limits: UnpackLimits | None = None) -> Descriptor:
    """Diff.Apply: read ``desc`` from ``ns``'s content and apply it within ``limits``
    (default: the daemon's); returns the applied (uncompressed) layer's descriptor.

    A descriptor whose size is not the blob's is refused (FailedPrecondition, before
    anything is written): the size is part of what a manifest promises."""
    reader = content.reader(ns, desc.digest)
    try:
        if desc.size and desc.size != reader.size:
            raise FailedPrecondition(f"layer {desc.digest}: unexpected size {reader.size}, "
                                     f"expected {desc.size}")
        result = apply_to_mounts(reader, desc.media_type, mounts, sync_fs,
                                 layer=desc.digest, limits=limits)
    finally:
        reader.close()
    return Descriptor(LAYER_TAR, result.diff_id, result.size)


def diff(content, ns: str, lower: list[Mount], upper: list[Mount], media_type: str = "",
         ref: str = "", labels: dict[str, str] | None = None,
         lease: str | None = None, epoch: float | None = None) -> Descriptor:
    """Diff.Diff: write the changes from ``lower`` to ``upper`` as a layer into ``ns``'s
    content (under ``ref``, or a fresh one) and return its descriptor. Both sides are
    mounted on temporary directories for the walk. ``epoch`` (SOURCE_DATE_EPOCH, seconds):
    no entry's mtime is later."""
    import time

    from ctrd.diff.create import GZIP, diff_to_content
    from ctrd.errdefs import AlreadyExists
    from ctrd.snapshots.mount import mounted

    media_type = media_type or GZIP
    ref = ref or f"diff-{time.time_ns()}"
    with mounted(lower) if lower else _empty_dir() as low, mounted(upper) as up:
        writer = content.writer(ns, ref, lease=lease)
        try:
            created = diff_to_content(low, up, writer, media_type, labels, epoch)
        except AlreadyExists:
            # Same layer as one already there: containerd answers with the existing blob.
            info = content.info(ns, writer.digest())
            return Descriptor(media_type, info.digest, info.size)
        finally:
            writer.close()
    return Descriptor(created.media_type, created.digest, created.size)


class _empty_dir:
    """A temporary empty directory (the lower side of a first layer)."""

    def __enter__(self) -> str:
        import tempfile

        self._d = tempfile.mkdtemp(prefix="ctrd-diff-empty-")
        return self._d

    def __exit__(self, *exc) -> None:
        os.rmdir(self._d)
