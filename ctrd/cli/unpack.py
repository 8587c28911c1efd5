"""Client-side unpack of an image into a snapshotter over the API, as ``ctr`` does it
(``image.Unpack`` in containerd's client): for ``ctrctl import``, whose content arrives
through the Content API rather than through the daemon's pull.

For each layer of the platform's manifest, in order: ``Snapshots.Stat(chainID)`` (present:
skip it), else ``Prepare{key: "extract-<nanos>-<rand> <chainID>", parent}``, ``Diff.Apply``
(the returned digest must be the layer's diff_id), ``Commit{name: chainID}`` (AlreadyExists:
someone else unpacked it; drop ours), then the layer gets ``containerd.io/uncompressed``; on
any failure the prepared snapshot is removed. Finally the config gets
``containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID>`` so the image keeps its
snapshots. Run it with a client that carries a lease: what is half done belongs to the lease.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ctrd import errdefs
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor, Platform
from ctrd.images.push import is_index, read_all

MAX_DEPTH = 8


def _label(c: Any, digest: str, labels: dict[str, str]) -> None:
    from google.protobuf import field_mask_pb2

    from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb

    c.content.Update(cpb.UpdateRequest(
        info=cpb.Info(digest=digest, labels=labels),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])))


def manifest_for(c: Any, root: Descriptor, platform: Platform) -> tuple[Descriptor, bytes]:
    """The manifest ``root`` names for ``platform`` (NotFound if the index has none)."""
    desc = root
    for _ in range(MAX_DEPTH + 1):
        data = read_all(c.read_content, desc)
        if not is_index(desc):
            return desc, data
        desc = m.select(m.parse_index(data, desc.media_type), platform)
    raise errdefs.InvalidArgument(f"{root.digest}: indexes nested deeper than {MAX_DEPTH}")


def unpack(c: Any, root: Descriptor, snapshotter: str, platform: Platform) -> str:
    """Unpack image ``root`` for ``platform`` into ``snapshotter``; returns the top chain ID
    ("" for an image without layers)."""
    from ctrd.api.containerd.services.diff.v1 import diff_pb2
    from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
    from ctrd.api.containerd.types import descriptor_pb2

    desc, data = manifest_for(c, root, platform)
    man = m.parse_manifest(data, desc.media_type)
    ids = m.diff_ids(read_all(c.read_content, man.config, m.MAX_CONFIG))
    layers = [x for x in man.layers if x.media_type not in m.NON_DISTRIBUTABLE]
    if len(ids) != len(layers):
        raise errdefs.InvalidArgument(f"image config lists {len(ids)} layers, the manifest "
                                      f"{len(layers)}")
    parent = ""
    for layer, diff_id, chain in zip(layers, ids, m.chain_ids(ids)):
        try:
            c.snapshots.Stat(spb.StatSnapshotRequest(snapshotter=snapshotter, key=chain))
            parent = chain
            continue
        except errdefs.NotFound:
            pass
        key = f"extract-{time.time_ns()}-{os.urandom(4).hex()} {chain}"
        mounts = c.snapshots.Prepare(spb.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent)).mounts
        try:
            applied = c.diff.Apply(diff_pb2.ApplyRequest(
                diff=descriptor_pb2.Descriptor(media_type=layer.media_type,
                                               digest=layer.digest, size=layer.size),
                mounts=mounts), timeout=None).applied
            if applied.digest != diff_id:
                raise errdefs.FailedPrecondition(
                    f"wrong diff id calculated on extraction {applied.digest!r}, expected "
                    f"{diff_id!r} (layer {layer.digest})")
            try:
                c.snapshots.Commit(spb.CommitSnapshotRequest(snapshotter=snapshotter,
                                                             name=chain, key=key))
            except errdefs.AlreadyExists:
                c.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key))
        except BaseException:
            try:
                c.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key))
            except errdefs.CtrdError:
                pass
            raise
        _label(c, layer.digest, {"containerd.io/uncompressed": diff_id})
        parent = chain
    if parent:
        _label(c, man.config.digest, {f"containerd.io/gc.ref.snapshot.{snapshotter}": parent})
    return parent
