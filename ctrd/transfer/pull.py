"""Pull: an ``OCIRegistry`` into an ``ImageStore`` (containerd 2.3.4's
core/transfer/local/pull.go), through ctrd's own registry client and pull pipeline
(:func:`ctrd.images.pulltree.pull_tree`).

Progress, in containerd's order: ``Resolving from OCI Registry (<ref>)``, ``Pulling from
...``, ``fetching image content`` (named: the image, with the resolved descriptor), the
per-blob events of :mod:`ctrd.transfer.tracker`, ``saved`` per image record, ``Completed
pull from ...``, then the tracker's last update. A failure anywhere leaves no image record
(records are created last) and no content outside GC's reach (the pull's own lease).
"""

from __future__ import annotations

import asyncio
import logging

from ctrd import errdefs
from ctrd.transfer import imagestore
from ctrd.transfer.registry import open_registry
from ctrd.transfer.tracker import Tracker, descriptor_pb

log = logging.getLogger("ctrd.transfer")
DEFAULT_SNAPSHOTTER = "overlayfs"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def _wrap(prefix: str, e: errdefs.CtrdError) -> errdefs.CtrdError:
    """``e`` with ``prefix: `` before its detail, same kind (containerd's %w wrapping)."""
    try:
        out = type(e)(f"{prefix}: {e.detail}")
    except TypeError:
        return e
    out.__cause__ = e.__cause__
    return out


def _hostname(host: str) -> str:
    """The distribution-source label's host: no port (containerd's ``url.Hostname()``)."""
    import urllib.parse

    return urllib.parse.urlsplit("dummy://" + host).hostname or host


def unpack_platforms(config, wanted) -> list:
    """The unpacks the daemon supports of those the client asks for (containerd's
    ``getSupportedPlatform`` against the transfer config's ``unpack_config``, by default the
    host platform into overlayfs; without ``check_platform_supported`` a supported platform
    matches by OS only). The others are skipped with a warning, as containerd does."""
    from ctrd.images.manifest import Platform, host_platform, matches, parse_platform

    supported = []
    for uc in config.unpack_config or [{"platform": "", "snapshotter": DEFAULT_SNAPSHOTTER}]:
        p = parse_platform(uc["platform"]) if uc.get("platform") else host_platform()
        if not config.check_platform_supported:
            p = Platform(p.os, "", "")
        supported.append((p, uc.get("snapshotter") or DEFAULT_SNAPSHOTTER))
    out = []
    for u in wanted:
        want = u.platform or host_platform()
        for p, snapshotter in supported:
            if (matches(p, want) if p.architecture else p.os == want.os) and \
                    u.snapshotter in ("", snapshotter):
                out.append((p, snapshotter))
                break
        else:
            log.warning("unpack configuration %s/%s (snapshotter %r) not supported, skipping",
                        want.os, want.architecture, u.snapshotter)
    return out


async def pull(tc, src, dst) -> None:
    from ctrd.images.manifest import Descriptor
    from ctrd.images.pull import Progress
    from ctrd.images.pulltree import TreeOptions, pull_tree
    from ctrd.metadata.images import Descriptor as ImgDesc

    reg = open_registry(tc, src)
    store = imagestore.decode(dst)
    tc.progress(f"Resolving from {reg}")
    try:
        name, rdesc = await asyncio.to_thread(reg.registry.resolve, reg.parsed)
    except errdefs.NotFound:  # containerd names the reference only
        raise errdefs.NotFound(f"failed to resolve image: {src.reference}") from None
    except errdefs.CtrdError as e:
        raise _wrap("failed to resolve image", e) from None
    if rdesc.media_type == SCHEMA1:
        raise errdefs.InvalidArgument("schema 1 image manifests are no longer supported")
    name = reg.reference  # containerd's resolver answers with the reference as given
    root = Descriptor(rdesc.media_type, rdesc.digest, rdesc.size)
    tc.progress(f"Pulling from {reg}")
    tc.progress("fetching image content", name, desc=descriptor_pb(root))

    counts = Progress()
    tracker = Tracker(tc.progress, name, "downloading", counts) if tc.progress.enabled \
        else None
    unpacks = unpack_platforms(tc.config, store.unpacks)
    opts = TreeOptions(platforms=store.platforms, all_metadata=store.all_metadata,
                       manifest_limit=store.manifest_limit, unpacks=unpacks,
                       workers=tc.config.max_concurrent_downloads or 3,
                       source=(_hostname(reg.parsed.host), reg.parsed.repository))
    from ctrd.remotes.fetch import RegistryFetcher

    fetcher = RegistryFetcher(reg.registry.repository(reg.parsed))
    target = ImgDesc(root.media_type, root.digest, root.size)
    if tracker is not None:
        tracker.start()
    try:
        result = await asyncio.to_thread(
            pull_tree, tc.md, tc.ns, root, fetcher, opts,
            store=lambda _root: store.store(tc.md, tc.ns, target), tracker=tracker,
            progress=counts)
        stored = result.stored
        imagestore.publish(tc, stored)
        for img, _ in stored:
            tc.progress("saved", img.name, desc=descriptor_pb(img.target))
        tc.progress(f"Completed pull from {reg}")
    finally:
        if tracker is not None:
            tracker.close()
