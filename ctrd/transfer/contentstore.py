"""ctrd's metadata content store as the archive code sees it (the daemon-side
:class:`ctrd.images.archive.Store`, where ``ctrctl import`` has one over the Content API),
and unpacking an imported image into a snapshotter with the pull pipeline's unpacker.

Everything is written under ``lease``: a failed import leaves only what the lease holds
(its deletion makes it collectable). An ingest that fails is aborted at once, so no
half-written ingest outlives the call. Blocking: run in a worker thread.
"""

from __future__ import annotations

import os
import zlib
from typing import Callable, Iterable, Iterator

from ctrd import errdefs
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor, Platform

CHUNK = 1 << 20
UNCOMPRESSED = "containerd.io/uncompressed"
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ")


class LeasedContent:
    """:class:`ctrd.images.archive.Store` over ``md.content`` in namespace ``ns``.

    ``force_compress``: a layer found uncompressed gets a gzip copy (labelled
    ``containerd.io/uncompressed``), which the Docker importer then uses, as containerd's
    ``WithImportCompression``."""

    def __init__(self, md, ns: str, lease: str, force_compress: bool = False) -> None:
        self.md, self.ns, self.lease = md, ns, lease
        self.force_compress = force_compress
        self.written: list[str] = []

    def _commit(self, ref: str, size: int, expected: str, chunks: Iterator[bytes],
                labels: dict[str, str] | None = None) -> str:
        try:
            w = self.md.content.writer(self.ns, ref, size, expected, self.lease)
        except errdefs.AlreadyExists:
            return expected
        ok = False
        try:
            w.truncate(0)
            for chunk in chunks:
                w.write(chunk)
            try:
                digest = w.commit(size, expected, labels)
            except errdefs.AlreadyExists:
                digest = expected or w.digest()
            ok = True
            self.written.append(digest)
            return digest
        finally:
            w.close()
            if not ok:
                try:
                    self.md.content.abort(self.ns, ref, self.lease)
                except errdefs.NotFound:
                    pass

    def write(self, desc: Descriptor, chunks: Iterator[bytes]) -> None:
        self._commit(f"import-{desc.digest}", desc.size, desc.digest, chunks)

    def ingest(self, size: int, chunks: Iterator[bytes]) -> str:
        return self._commit(f"import-tar-{os.urandom(8).hex()}", size, "", chunks)

    def read(self, digest: str) -> Iterable[bytes]:
        r = self.md.content.reader(self.ns, digest)
        try:
            off = 0
            while off < r.size:
                chunk = r.read_at(off, min(CHUNK, r.size - off))
                if not chunk:
                    raise errdefs.InvalidArgument(f"content {digest}: short read at {off}")
                off += len(chunk)
                yield chunk
        finally:
            r.close()

    def exists(self, desc: Descriptor) -> bool:
        try:
            self.md.content.info(self.ns, desc.digest)
            return True
        except errdefs.NotFound:
            return False

    def size(self, digest: str) -> int:
        return self.md.content.info(self.ns, digest).size

    def label(self, digest: str, labels: dict[str, str]) -> None:
        if labels:
            self.md.content.update(self.ns, digest, labels, [f"labels.{k}" for k in labels])

    def compressed(self, diff_id: str) -> Descriptor | None:
        found = self.md.content.walk(self.ns, lambda i: i.labels.get(UNCOMPRESSED) == diff_id)
        if found:
            return Descriptor("", found[0].digest, found[0].size)
        if self.force_compress and self._uncompressed(diff_id):
            return self._gzip(diff_id)
        return None

    def _uncompressed(self, digest: str) -> bool:
        chunks = iter(self.read(digest))
        try:
            head = next(chunks, b"")[:6]
        except errdefs.NotFound:
            return False
        finally:
            chunks.close()
        return not head.startswith(_COMPRESSED_MAGIC)

    def _gzip(self, digest: str) -> Descriptor:
        """A gzip copy of blob ``digest``, compressed as it streams into an ingest (its
        digest is known at commit)."""
        ref = f"compress-blob-{digest.replace(':', '-')}"

        def chunks() -> Iterator[bytes]:
            z = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing, Go's default level
            for chunk in self.read(digest):
                out = z.compress(chunk)
                if out:
                    yield out
            yield z.flush()

        got = self._commit(ref, 0, "", chunks(), {UNCOMPRESSED: digest})
        return Descriptor("", got, self.md.content.info(self.ns, got).size)


def unpack(md, ns: str, lease: str, manifest: Descriptor, snapshotter: str,
           accept: Callable[[Platform], bool] | None = None) -> str | None:
    """Unpack the image of ``manifest`` into ``snapshotter`` with the pull pipeline's
    unpacker (its layers are in content already); returns the top chain ID, or None when
    ``accept`` refuses the platform its config states (containerd's unpacker matches the
    config's platform, not the index entry's)."""
    import json
    from concurrent.futures import Future

    from ctrd.images.archive import read_all
    from ctrd.images.pull import Progress, _Pull

    if snapshotter not in md.snapshotters:
        raise errdefs.InvalidArgument(f"snapshotter not loaded: {snapshotter}")
    store = LeasedContent(md, ns, lease)
    man = m.parse_manifest(read_all(store.read, manifest), manifest.media_type)
    config = read_all(store.read, man.config, m.MAX_CONFIG)
    if accept is not None:
        try:
            doc = json.loads(config)
        except ValueError:
            raise errdefs.InvalidArgument(f"image config {man.config.digest} is not JSON") \
                from None
        if not isinstance(doc, dict):
            raise errdefs.InvalidArgument(f"image config {man.config.digest} is not an object")
        plat = Platform(str(doc.get("os", "")), str(doc.get("architecture", "")),
                        str(doc.get("variant", "") or ""))
        if not accept(plat):
            return None
    ids = m.diff_ids(config)
    layers = [x for x in man.layers if x.media_type not in m.NON_DISTRIBUTABLE]
    if len(ids) != len(layers):
        raise errdefs.InvalidArgument(f"image config lists {len(ids)} layers, the manifest "
                                      f"{len(layers)}")
    if not layers:
        return ""
    done: list[Future] = []
    for _ in layers:
        f: Future = Future()
        f.set_result(None)
        done.append(f)
    p = _Pull(md, ns, snapshotter, None, Platform("", ""), Progress(), lease)
    chain = p.unpack(layers, ids, done)
    store.label(man.config.digest, {f"containerd.io/gc.ref.snapshot.{snapshotter}": chain})
    return chain
