"""Daemon-side pull: fetch an image's manifests, config and layers into content and unpack
them into a snapshotter, the way ``ctr pull`` does it from the client, but in the daemon (for
ctrctl and the CRI plugin).

Lifecycle of one :func:`pull`: a lease is created (24 h expiry) and everything the pull
writes belongs to it, so a crash leaves nothing half-referenced and nothing is collected
half-way; the index/manifest/config are read with size caps and verified; layers download
concurrently (resuming an interrupted ingest at its offset) and are applied in order as soon
as each one and its predecessors are there; every blob gets containerd's GC labels
(``gc.ref.content.m.<i>``, ``.config``, ``.l.<i>``, ``gc.ref.snapshot.<snapshotter>``,
``containerd.io/uncompressed``); then the image record is created (or updated) and the lease
is dropped: from then on the image is what keeps its content.

``fetcher.fetch(desc, offset)`` returns a readable stream of a blob (a registry client, an
OCI layout directory...). Blocking: run it in a worker thread.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ctrd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, \
    Unavailable
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor, Platform

MAX_DEPTH = 8  # nested indexes
WAIT_FOR_OTHER_WRITER = 600.0  # seconds a pull waits for another pull's download of a blob
CHUNK = 1 << 20


class Fetcher(Protocol):
    def fetch(self, desc: Descriptor, offset: int = 0): ...


class Tracker(Protocol):
    """What a progress display learns of each blob (called from worker threads)."""

    def add(self, desc: Descriptor, parents: list[Descriptor]) -> None: ...

    def exists(self, desc: Descriptor) -> None: ...

    def done(self, desc: Descriptor) -> None: ...

    def extracting(self, desc: Descriptor) -> None: ...

    def extracted(self, desc: Descriptor) -> None: ...


class _NoTracker:
    def add(self, desc, parents) -> None:
        pass

    exists = done = extracting = extracted = lambda self, desc: None


_NO_TRACKER = _NoTracker()


@dataclass
class Progress:
    """Per-blob byte counts, for progress displays (updated from worker threads)."""

    total: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)


@dataclass
class PullResult:
    name: str
    target: Descriptor
    manifest: Descriptor
    chain_id: str
    seconds: float


def _read_bounded(stream, limit: int) -> bytes:
    data = bytearray()
    while chunk := stream.read(min(CHUNK, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            raise InvalidArgument(f"document exceeds the {limit}-byte limit")
    return bytes(data)


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class _Pull:
    def __init__(self, md, ns: str, snapshotter: str, fetcher: Fetcher, platform: Platform,
                 progress: Progress, lease: str, tracker: "Tracker | None" = None) -> None:
        self.md, self.ns, self.fetcher = md, ns, fetcher
        self.snapshotter = md.snapshotters[snapshotter] if snapshotter else None
        self.snapshotter_name = snapshotter
        self.platform, self.progress, self.lease = platform, progress, lease
        self.tracker = tracker or _NO_TRACKER
        # Set by the first failed layer download: the queued ones then do not start (a
        # registry stalling every blob fails the pull once, not once per worker round).
        self.failed = threading.Event()

    def have(self, d: Descriptor) -> bool:
        try:
            self.md.content.info(self.ns, d.digest)
            return True
        except NotFound:
            return False

    def writer(self, ref: str, d: Descriptor):
        """A content writer for ``d``; while another pull holds the same ref (a blob two
        images share), wait for it as containerd does: it either commits (AlreadyExists
        here) or gives up and releases the ref (the stall timeout bounds that)."""
        delay, deadline = 0.02, time.monotonic() + WAIT_FOR_OTHER_WRITER
        while True:
            try:
                return self.md.content.writer(self.ns, ref, d.size, d.digest, self.lease)
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def store(self, d: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        m.verify(d, data)
        try:
            w = self.writer(f"{d.media_type}-{d.digest}", d)
        except AlreadyExists:
            self.label(d, labels)
            return
        try:
            w.truncate(0)
            w.write(data)
            w.commit(d.size, d.digest, labels)
        except AlreadyExists:
            self.label(d, labels)
        finally:
            w.close()

    def label(self, d: Descriptor, labels: dict[str, str]) -> None:
        if labels:
            self.md.content.update(self.ns, d.digest, labels,
                                   [f"labels.{k}" for k in labels])

    def document(self, d: Descriptor, limit: int) -> bytes:
        if self.have(d):
            r = self.md.content.reader(self.ns, d.digest)
            try:
                if r.size > limit:
                    raise InvalidArgument(f"{d.digest}: {r.size} bytes exceeds the limit")
                return r.read_at(0, r.size)
            finally:
                r.close()
        stream = self.fetcher.fetch(d)
        try:
            data = _read_bounded(stream, limit)
        finally:
            getattr(stream, "close", lambda: None)()
        m.verify(d, data)
        return data

    def check_size(self, d: Descriptor) -> bool:
        """Whether ``d`` is in content; FailedPrecondition when it is with another size
        (the manifest lies about it: the blob must not be used under that descriptor)."""
        try:
            size = self.md.content.info(self.ns, d.digest).size
        except NotFound:
            return False
        if size != d.size:
            raise FailedPrecondition(f"{d.digest}: unexpected size {size}, expected {d.size}")
        return True

    def ingest(self, d: Descriptor) -> None:
        """Download a blob into content (resuming), verified by the content commit; not
        started once another download of this pull failed. A blob that turns out larger or
        smaller than its descriptor says (or of another digest: FailedPrecondition, from here
        or from the fetcher) is refused and its ingest aborted, as a resume cannot fix a lie;
        after a network error the ingest stays for the retry."""
        if self.failed.is_set():
            raise Unavailable(f"{d.digest}: not fetched: another download of this pull "
                              "failed")
        try:
            self._ingest(d)
        except BaseException:
            self.failed.set()
            raise

    def _ingest(self, d: Descriptor) -> None:
        p = self.progress
        p.total[d.digest] = d.size
        ref = f"layer-{d.digest}"
        if self.check_size(d):
            p.done[d.digest], p.status[d.digest] = d.size, "exists"
            self.tracker.exists(d)
            return
        try:
            w = self.writer(ref, d)
        except AlreadyExists:
            self.check_size(d)
            p.done[d.digest], p.status[d.digest] = d.size, "exists"
            self.tracker.exists(d)
            return
        lied = False
        try:
            offset = w.status().offset
            if offset >= d.size and offset:
                w.truncate(0)
                offset = 0
            p.status[d.digest] = "downloading"
            stream = self.fetcher.fetch(d, offset)
            try:
                done = offset
                while chunk := stream.read(CHUNK):
                    if done + len(chunk) > d.size:  # refused before it is written
                        raise FailedPrecondition(
                            f"{d.digest}: more data than its size {d.size}")
                    w.write(chunk)
                    done += len(chunk)
                    p.done[d.digest] = done
            finally:
                getattr(stream, "close", lambda: None)()
            if done < d.size:
                raise FailedPrecondition(f"{d.digest}: unexpected commit size {done}, "
                                         f"expected {d.size}")
            try:
                w.commit(d.size, d.digest)
            except AlreadyExists:
                pass
            p.status[d.digest] = "downloaded"
            self.tracker.done(d)
        except FailedPrecondition:
            lied = True
            raise
        finally:
            w.close()
            if lied:
                try:
                    self.md.content.abort(self.ns, ref, self.lease)
                except NotFound:
                    pass

    def unpack(self, layers: list[Descriptor], ids: list[str],
               fetched: list[Future], snapshotter: str = "") -> str:
        from ctrd.diff import differ

        if snapshotter:
            self.snapshotter, self.snapshotter_name = self.md.snapshotters[snapshotter], \
                snapshotter
        chains = m.chain_ids(ids)
        parent = ""
        for i, (layer, diff_id, chain) in enumerate(zip(layers, ids, chains)):
            fetched[i].result()  # this layer is in content (or its download failed)
            try:
                self.snapshotter.stat(self.ns, chain)
                parent = chain
                self.progress.status[layer.digest] = "unpacked"
                continue
            except NotFound:
                pass
            key = f"extract-{time.time_ns()}-{os.urandom(4).hex()} {chain}"
            mounts = self.snapshotter.prepare(self.ns, key, parent, lease=self.lease)
            try:
                self.progress.status[layer.digest] = "unpacking"
                self.tracker.extracting(layer)
                applied = differ.apply(self.md.content, self.ns,
                                       differ.Descriptor(layer.media_type, layer.digest,
                                                         layer.size), mounts)
                if applied.digest != diff_id:
                    raise FailedPrecondition(f"wrong diff id calculated on extraction "
                                             f"{applied.digest!r}, expected {diff_id!r}")
                try:
                    self.snapshotter.commit(self.ns, chain, key, lease=self.lease)
                except AlreadyExists:
                    self.snapshotter.remove(self.ns, key, lease=self.lease)
            except BaseException:
                try:
                    self.snapshotter.remove(self.ns, key, lease=self.lease)
                except NotFound:
                    pass
                raise
            self.label(layer, {"containerd.io/uncompressed": diff_id})
            self.progress.status[layer.digest] = "unpacked"
            self.tracker.extracted(layer)
            parent = chain
        return parent


def fetch_layers(p: _Pull, layers: list[Descriptor], ids: list[str], workers: int,
                 snapshotter: str = "") -> str:
    """Download ``layers`` concurrently and, with ``snapshotter``, apply them in order as
    each arrives; the top chain id applied ("" without unpack)."""
    chain = ""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ctrd-pull") as pool:
        fetched = [pool.submit(p.ingest, x) for x in layers]
        try:
            if snapshotter and layers:
                chain = p.unpack(layers, ids, fetched, snapshotter)
            for f in fetched:
                f.result()
        except BaseException:
            for f in fetched:
                f.cancel()
            raise
    return chain


def pull(md, ns: str, name: str, root: Descriptor, fetcher: Fetcher, *,
         snapshotter: str = "overlayfs", platform: Platform | None = None,
         progress: Progress | None = None, workers: int = 4,
         unpack: bool = True) -> PullResult:
    """Pull ``root`` (a manifest or an index) as image ``name`` into namespace ``ns``."""
    t0 = time.monotonic()
    if snapshotter not in md.snapshotters:
        raise InvalidArgument(f"snapshotter not loaded: {snapshotter}")
    platform = platform or m.host_platform()
    progress = progress or Progress()
    lease = f"pull-{time.time_ns()}-{os.urandom(4).hex()}"
    md.leases.create(ns, lease, {"containerd.io/gc.expire": _rfc3339(time.time() + 86400)})
    try:
        p = _Pull(md, ns, snapshotter, fetcher, platform, progress, lease)
        desc, seen = root, set()
        for depth in range(MAX_DEPTH + 1):
            m.check_media_type(desc.media_type)
            if desc.digest in seen:
                raise InvalidArgument(f"index loop at {desc.digest}")
            seen.add(desc.digest)
            data = p.document(desc, m.MAX_MANIFEST)
            if desc.media_type in m.MANIFESTS:
                break
            index = m.parse_index(data, desc.media_type)
            child = m.select(index, platform)
            i = index.manifests.index(child)
            p.store(desc, data, {f"containerd.io/gc.ref.content.m.{i}": child.digest})
            desc = child
        else:
            raise InvalidArgument(f"indexes nested deeper than {MAX_DEPTH}")
        man = m.parse_manifest(data, desc.media_type)
        config_data = p.document(man.config, m.MAX_CONFIG)
        ids = m.diff_ids(config_data)
        layers = [x for x in man.layers if x.media_type not in m.NON_DISTRIBUTABLE]
        if len(ids) != len(layers):
            raise InvalidArgument(f"image config lists {len(ids)} layers, the manifest "
                                  f"{len(layers)}")
        labels = {"containerd.io/gc.ref.content.config": man.config.digest}
        labels.update({f"containerd.io/gc.ref.content.l.{i}": x.digest
                       for i, x in enumerate(man.layers)})
        chain = m.chain_ids(ids)[-1] if ids else ""
        chain = fetch_layers(p, layers, ids, workers, snapshotter if unpack else "") or chain
        config_labels = {f"containerd.io/gc.ref.snapshot.{snapshotter}": chain} \
            if unpack and chain else {}
        p.store(man.config, config_data, config_labels)
        p.store(desc, data, labels)
        from ctrd.metadata.images import Descriptor as ImgDesc, Image

        target = ImgDesc(root.media_type, root.digest, root.size)
        try:
            md.images.create(ns, Image(name, target))
        except AlreadyExists:
            md.images.update(ns, Image(name, target), ["target"])
        return PullResult(name, root, desc, chain, time.monotonic() - t0)
    finally:
        try:
            md.leases.delete(ns, lease)
        except NotFound:
            pass


class LayoutFetcher:
    """Blobs of an OCI image layout directory (``blobs/<alg>/<hex>``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fetch(self, desc: Descriptor, offset: int = 0):
        alg, hexpart = desc.digest.split(":", 1)
        f = open(os.path.join(self.path, "blobs", alg, hexpart), "rb")
        f.seek(offset)
        return f


def layout_root(path: str, tag: str | None = None) -> Descriptor:
    """The descriptor ``index.json`` of a layout names (by ``org.opencontainers.image.ref.name``
    when ``tag`` is given, else the only one)."""
    with open(os.path.join(path, "index.json"), "rb") as f:
        index = m.parse_index(_read_bounded(f, m.MAX_MANIFEST), m.OCI_INDEX)
    found = [d for d in index.manifests
             if tag is None or d.annotations.get("org.opencontainers.image.ref.name") == tag]
    if len(found) != 1:
        raise NotFound(f"{path}: {'no' if not found else 'several'} manifests"
                       + (f" tagged {tag!r}" if tag else ""))
    return found[0]


ProgressFn = Callable[[Progress], None]
