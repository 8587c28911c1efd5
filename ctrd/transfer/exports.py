"""Export (``ImageStore`` -> ``ImageExportStream``): ``ctr images export`` of containerd 2.x
(core/transfer/local/export.go, core/transfer/archive/exporter.go).

The images are those the ImageStore names (its name, then each extra reference: ctr sends
one per argument); ctrd's archive writer (:func:`ctrd.images.archive.export`) writes the
tar in a worker thread through a :class:`BlockingWriter` onto the client's byte stream, a
buffer's worth at a time within the client's window: the archive is never whole in memory.
Options as containerd's: the platforms (the first one chooses; none: the host's),
``all_platforms``, ``skip_compatibility_manifest`` (no ``manifest.json``),
``skip_non_distributable``. Progress: ``Exporting``, ``Completed export``. On failure the
stream is closed at once (ctr's file is left short, as with containerd) and the call fails.
"""

from __future__ import annotations

import asyncio
import io

from ctrd.api.containerd.types.transfer import imagestore_pb2, importexport_pb2
from ctrd.images.manifest import Platform
from ctrd.transfer import imagestore
from ctrd.transfer.bytestreams import BlockingWriter, StreamSender
from ctrd.transfer.context import TransferContext
from ctrd.transfer.threads import in_thread

BUFFER = 1 << 20  # bytes the writer thread gathers per hand-over to the loop


def _export(tc: TransferContext, images, out: BlockingWriter,
            dst: importexport_pb2.ImageExportStream) -> None:
    from ctrd.images import archive
    from ctrd.transfer.contentstore import LeasedContent

    plats = [Platform(p.os, p.architecture, p.variant) for p in dst.platforms]
    buffered = io.BufferedWriter(out, BUFFER)
    archive.export(LeasedContent(tc.md, tc.ns, "").read, buffered, images,
                   platform=plats[0] if plats else None, all_platforms=dst.all_platforms,
                   docker_manifest=not dst.skip_compatibility_manifest,
                   skip_non_distributable=dst.skip_non_distributable)
    buffered.flush()


async def export_archive(tc: TransferContext, src: imagestore_pb2.ImageStore,
                         dst: importexport_pb2.ImageExportStream) -> None:
    stream = tc.streams.get(tc.ns, dst.stream)
    sender = StreamSender(stream, tc.config.progress_timeout,
                          what=f"export stream {dst.stream!r}")
    try:
        tc.progress("Exporting")
        images = await asyncio.to_thread(imagestore.lookup, tc.md, tc.ns, imagestore.decode(src))
        out = BlockingWriter(sender, asyncio.get_running_loop())

        def stop() -> None:
            out.abort()
            sender.abort()

        await in_thread(lambda: _export(tc, images, out, dst), stop)
    except BaseException:
        sender.abort()
        raise
    await sender.close()
    tc.progress("Completed export")
