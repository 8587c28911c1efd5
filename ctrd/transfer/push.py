"""Push: an ``ImageStore`` image to an ``OCIRegistry`` (containerd 2.3.4's
core/transfer/local/push.go), through ctrd's push pipeline (:func:`ctrd.images.push.push`).

The image is the source's ``name``; its ``platforms`` (if any) filter an index's manifests.
Blobs go first (mounted from the repository their distribution-source label names when it is
on the same registry, as containerd's pusher does: "already exists"), then the manifests
children-first, the root under the reference's tag. Progress: ``Pushing to OCI Registry
(<ref>)``, ``pushing content`` (named: the image), per blob ``waiting``, ``uploading`` with
byte counts, ``complete`` or ``already exists``, then ``pushed content`` and ``Completed push
to ...`` (with the target), then the tracker's last update.
"""

from __future__ import annotations

import asyncio

from ctrd.transfer import imagestore
from ctrd.transfer.registry import open_registry
from ctrd.transfer.tracker import Tracker, descriptor_pb

CHUNK = 1 << 20


def _reader(md, ns: str, counts):
    """A :data:`ctrd.images.push.Reader` over the content store that counts bytes read."""

    def read(digest: str):
        r = md.content.reader(ns, digest)
        try:
            off = 0
            while off < r.size:
                chunk = r.read_at(off, min(CHUNK, r.size - off))
                if not chunk:
                    break
                off += len(chunk)
                if counts is not None:
                    counts.done[digest] = off
                yield chunk
        finally:
            r.close()

    return read


def _tree_order(nodes, root):
    """(desc, parents) in the order containerd's push handler meets them: parents first; a
    manifest's children with the last one first (Go runs the newest goroutine next)."""
    by_digest = {n.desc.digest: n for n in nodes}
    out, seen = [], set()

    def visit(desc, parents):
        if desc.digest in seen:
            return
        seen.add(desc.digest)
        out.append((desc, parents))
        node = by_digest.get(desc.digest)
        children = [c for c in (node.children or []) if c.digest in by_digest] if node else []
        if len(children) > 1:
            children = children[-1:] + children[:-1]
        for c in children:
            visit(by_digest[c.digest].desc, [desc])

    visit(root, [])
    return out


async def push(tc, src, dst) -> None:
    from ctrd.images.manifest import Descriptor
    from ctrd.images.pull import Progress
    from ctrd.images.push import push as push_image, walk
    from ctrd.images.pulltree import SOURCE_LABEL
    from ctrd.transfer.pull import _hostname

    source = imagestore.decode(src)
    reg = open_registry(tc, dst)
    img = await asyncio.to_thread(tc.md.images.get, tc.ns, source.name)
    t = img.target
    root = Descriptor(t.media_type, t.digest, t.size)
    tc.progress(f"Pushing to {reg}")
    tc.progress("pushing content", img.name, desc=descriptor_pb(t))

    counts = Progress()
    tracker = Tracker(tc.progress, img.name, "uploading", counts,
                                 defer_exists=True) if tc.progress.enabled \
        else None
    read = _reader(tc.md, tc.ns, counts)
    repo = reg.registry.repository(reg.parsed)
    label = SOURCE_LABEL + _hostname(reg.parsed.host)

    def mount_from(desc) -> str | None:
        try:
            repos = tc.md.content.info(tc.ns, desc.digest).labels.get(label, "")
        except Exception:  # noqa: BLE001 - no label, no mount
            return None
        others = [r for r in repos.split(",") if r and r != reg.parsed.repository]
        return others[0] if others else None

    def run() -> None:
        nodes = walk(_reader(tc.md, tc.ns, None), root, source.platforms or None)
        descs = {}
        if tracker is not None:
            for desc, parents in _tree_order(nodes, root):
                tracker.add(desc, parents)
                descs[desc.digest] = desc

        def report(digest: str, status: str) -> None:
            d = descs.get(digest)
            if d is None or tracker is None:
                return
            if status == "exists":
                tracker.exists(d)
            elif status == "done":
                tracker.done(d)

        push_image(read, repo, root, tag=reg.parsed.tag, progress=report,
                   mount_from=mount_from, nodes=nodes)

    if tracker is not None:
        tracker.start()
    try:
        await asyncio.to_thread(run)
        tc.progress("pushed content", img.name, desc=descriptor_pb(t))
        tc.progress(f"Completed push to {reg}", desc=descriptor_pb(t))
    finally:
        if tracker is not None:
            tracker.close()
