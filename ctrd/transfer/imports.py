"""Import (``ImageImportStream`` -> ``ImageStore``) and echo (``ImageImportStream`` ->
``ImageExportStream``): ``ctr images import`` of containerd 2.x (core/transfer/local/import.go,
core/transfer/archive/importer.go).

Import, in order:

1. the archive arrives over the client's byte stream (:class:`StreamReceiver`: flow
   control, stall timeout, an aborted stream is an error, never a short archive) and is
   spooled to a file in the transfer plugin's root dir (ctrd's importer reads an archive
   twice: headers, then data; the spool is removed whatever happens);
2. ctrd's archive importer (:func:`ctrd.images.archive.import_archive`, its caps and
   hostile-archive checks) stores the blobs under a lease (the call's, else one of its own);
   the platforms are the ImageStore's (none: every platform must be complete);
3. the images are unpacked for the ImageStore's unpack configurations (matched against
   the transferrer's ``unpack_config``, containerd's ``getSupportedPlatform``); an entry
   with no manifest that unpacks for one of them fails the import ("no match for platform
   in manifest", NotFound; containerd would create an image that cannot run);
4. the records are created as containerd's ImageStore names them
   (:mod:`ctrd.transfer.imagestore`): the archive's index, then each of its entries.

Progress as containerd sends it: ``Importing``, one ``saved`` (name, desc) per record,
``Completed import``. A failure at any step creates no record; what was written belongs to
the lease, which is deleted (collectable) unless the client gave its own; ingests are
aborted as they fail. A cancelled call (the client went away) stops the worker at its next
read and cleans up the same way.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import threading
import time
from typing import Callable

from ctrd import errdefs
from ctrd.api.containerd.types.transfer import imagestore_pb2, importexport_pb2
from ctrd.images.manifest import Descriptor, Platform, host_platform, matches
from ctrd.metadata.images import Descriptor as ImgDesc
from ctrd.transfer import imagestore, spool
from ctrd.transfer.bytestreams import RECEIVE_WINDOW, StreamReceiver, StreamSender
from ctrd.transfer.context import TransferContext
from ctrd.transfer.threads import in_thread

SPOOL_FLUSH = 1 << 20  # bytes gathered before a write to the spool file
DEFAULT_SNAPSHOTTER = "overlayfs"


class _Cancellable(io.RawIOBase):
    """The spool file, read by the importer's thread; reads fail once ``cancel`` is set."""

    def __init__(self, path: str, cancel: threading.Event) -> None:
        self._f = open(path, "rb")
        self._cancel = cancel

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._cancel.is_set():
            raise errdefs.Canceled("import cancelled")
        return self._f.readinto(b)

    def close(self) -> None:
        self._f.close()
        super().close()


async def _spool(receiver: StreamReceiver, f) -> int:
    buf = bytearray()
    total = 0
    while chunk := await receiver.read():
        buf += chunk
        if len(buf) >= SPOOL_FLUSH:
            await asyncio.to_thread(f.write, bytes(buf))
            total += len(buf)
            buf.clear()
    if buf:
        await asyncio.to_thread(f.write, bytes(buf))
        total += len(buf)
    await asyncio.to_thread(f.flush)
    return total


def _unpack_targets(tc: TransferContext, dst: imagestore_pb2.ImageStore) \
        -> list[tuple[Callable[[Platform], bool], str]]:
    """(config platform matcher, snapshotter) per unpack the store asks, through the
    transferrer's ``unpack_config`` (containerd's ``getSupportedPlatform``: the supported
    entry's matcher is used, which by default matches the OS only)."""
    from ctrd.images.manifest import parse_platform

    supported = []
    for u in tc.config.unpack_config or [{}]:
        text = str(u.get("platform", "") or "")
        try:
            plat = parse_platform(text) if text else host_platform()
        except errdefs.InvalidArgument:
            continue
        supported.append((plat, str(u.get("snapshotter", "") or DEFAULT_SNAPSHOTTER)))
    out = []
    for u in dst.unpacks:
        want = Platform(u.platform.os, u.platform.architecture, u.platform.variant) \
            if u.HasField("platform") else host_platform()
        chosen = None
        for plat, snap in supported:
            if not _supported_match(tc, plat, want):
                continue
            if u.snapshotter == snap:
                chosen = (plat, snap)
                break
            if not u.snapshotter and (chosen is None or snap == DEFAULT_SNAPSHOTTER):
                chosen = (plat, snap)
        if chosen is not None:
            plat, snap = chosen
            out.append((lambda p, plat=plat: _supported_match(tc, plat, p), snap))
    return out


def _supported_match(tc: TransferContext, supported: Platform, p: Platform) -> bool:
    if tc.config.check_platform_supported:
        return matches(supported, p)
    return supported.os == p.os


def _walked_manifests(read, entries: list[Descriptor], plats: list[Platform]) \
        -> list[Descriptor]:
    """The manifests an import walks: the entries and their indexes' children, filtered
    by the store's platforms (none: all) on their descriptors, as containerd's
    ``FilterPlatforms``; those not in the archive are left out."""
    from ctrd.images import manifest as m
    from ctrd.images.archive import read_all

    out: list[Descriptor] = []
    seen: set[str] = set()

    def visit(d: Descriptor, depth: int) -> None:
        if d.digest in seen or depth > 8:
            return
        if plats and d.platform is not None and not any(matches(p, d.platform)
                                                        for p in plats):
            return
        seen.add(d.digest)
        if d.media_type in m.MANIFESTS:
            out.append(d)
        elif d.media_type in m.INDEXES:
            try:
                idx = m.parse_index(read_all(read, d), d.media_type)
            except errdefs.NotFound:
                return
            for child in idx.manifests:
                visit(child, depth + 1)

    for e in entries:
        visit(e, 0)
    return out


def _import(tc: TransferContext, path: str, src: importexport_pb2.ImageImportStream,
            dst: imagestore_pb2.ImageStore, dest: imagestore.ImageDest, lease: str,
            cancel: threading.Event):
    """Steps 2-4, in a worker thread: returns what was saved (for events and progress)."""
    from ctrd.images import archive
    from ctrd.transfer.contentstore import LeasedContent, unpack

    plats = dest.platforms
    store = LeasedContent(tc.md, tc.ns, lease, force_compress=src.force_compress)
    try:
        result = archive.import_archive(
            lambda: _Cancellable(path, cancel), store,
            platform=plats[0] if plats else None,
            all_platforms=not plats and not dst.all_metadata,
            keep_index=True, unnamed=True)
    except OSError as e:
        raise errdefs.InvalidArgument(f"reading the import stream: {e}") from None
    # containerd's importer marks the index's entries as named by their annotations
    entries = [Descriptor(d.media_type, d.digest, d.size, d.platform,
                          {**d.annotations, imagestore.REF_SOURCE: "annotation"}, list(d.urls))
               for d in result.manifests]
    descriptors = ([result.index] if result.index is not None else []) + entries
    targets = _unpack_targets(tc, dst)
    for accept, snapshotter in targets:
        unpacked: set[str] = set()
        for entry in entries:
            # Every image must unpack for the platform asked: one that cannot would be an
            # image that cannot be mounted or run (containerd's importer creates it anyway).
            done = False
            for d in _walked_manifests(store.read, [entry], plats):
                if cancel.is_set():
                    raise errdefs.Canceled("import cancelled")
                if d.digest in unpacked:
                    done = True
                    continue
                try:
                    if unpack(tc.md, tc.ns, lease, d, snapshotter, accept) is not None:
                        unpacked.add(d.digest)
                        done = True
                except errdefs.NotFound:
                    continue  # not in the archive (another platform's)
            if not done:
                raise errdefs.NotFound(f"no match for platform in manifest {entry.digest}")
    records = []
    for d in descriptors:
        records.append((d, dest.records(ImgDesc(d.media_type, d.digest, d.size,
                                                dict(d.annotations or {})))))
    if cancel.is_set():
        raise errdefs.Canceled("import cancelled")
    saved = []
    for d, recs in records:
        imgs = imagestore.save(tc.md, tc.ns, recs)
        saved.extend(imgs)
        for img, _topic in imgs:  # as each is stored, as containerd sends them
            tc.progress("saved", img.name, desc=_desc_pb(d))
    return saved


def _rfc3339(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


async def import_archive(tc: TransferContext, src: importexport_pb2.ImageImportStream,
                         dst: imagestore_pb2.ImageStore) -> None:
    dest = imagestore.decode(dst)  # refuses more references and unpacks than it bounds
    stream = tc.streams.get(tc.ns, src.stream)
    receiver = StreamReceiver(stream, tc.config.progress_timeout,
                              what=f"import stream {src.stream!r}", window=RECEIVE_WINDOW)
    tc.progress("Importing")
    own = None
    lease = tc.lease
    path = ""
    try:
        if not lease:
            own = lease = f"transfer-import-{time.time_ns()}-{os.urandom(4).hex()}"
            await asyncio.to_thread(tc.md.leases.create, tc.ns, lease, {
                "containerd.io/gc.expire": _rfc3339(time.time() + 86400)})
        f = await asyncio.to_thread(spool.create, tc.config.work_dir)
        path = f.name
        try:
            await _spool(receiver, f)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise errdefs.ResourceExhausted(f"no space left to spool the import "
                                                f"stream in {tc.config.work_dir}") from None
            raise
        finally:
            f.close()
        stream.close()  # all received: the client's stream call can end now
        cancel = threading.Event()
        saved = await in_thread(lambda: _import(tc, path, src, dst, dest, lease, cancel),
                                cancel.set)
    finally:
        stream.close()  # as containerd's ReceiveStream, done with it either way
        if path:
            await asyncio.to_thread(spool.remove, path)
        if own is not None:
            await asyncio.to_thread(_drop_lease, tc, own)
    imagestore.publish(tc, saved)
    tc.progress("Completed import")


def _drop_lease(tc: TransferContext, lease: str) -> None:
    try:
        tc.md.leases.delete(tc.ns, lease)
    except errdefs.NotFound:
        pass


def _desc_pb(d: Descriptor):
    from ctrd.api.containerd.types import descriptor_pb2

    ann = {k: v for k, v in (d.annotations or {}).items() if k != imagestore.REF_SOURCE}
    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                                     annotations=ann)


async def echo(tc: TransferContext, src: importexport_pb2.ImageImportStream,
               dst: importexport_pb2.ImageExportStream) -> None:
    """The bytes of the import stream, unchanged, to the export stream (containerd's echo,
    for testing the byte streams)."""
    istream = tc.streams.get(tc.ns, src.stream)
    ostream = tc.streams.get(tc.ns, dst.stream)
    receiver = StreamReceiver(istream, tc.config.progress_timeout,
                              what=f"import stream {src.stream!r}")
    sender = StreamSender(ostream, tc.config.progress_timeout,
                          what=f"export stream {dst.stream!r}")
    try:
        while chunk := await receiver.read():
            await sender.write(chunk)
    except BaseException:
        sender.abort()
        raise
    finally:
        istream.close()
    await sender.close()
