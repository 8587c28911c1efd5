"""From an image record to what running it needs: the platform's manifest, its config, the
layers' chain id, the image's size. Reads the content store only (bounded reads, verified
digests); no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ctrd.errdefs import InvalidArgument
from ctrd.images import manifest as m

MAX_DEPTH = 8  # nested indexes, as the pull allows


@dataclass
class ResolvedImage:
    target: m.Descriptor          # what the image record points at (index or manifest)
    manifest: m.Descriptor        # the platform's manifest
    config_desc: m.Descriptor
    config: dict                  # the image config document
    layers: list[m.Descriptor] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)

    @property
    def chain_id(self) -> str:
        ids = m.chain_ids(self.diff_ids)
        return ids[-1] if ids else ""

    @property
    def size(self) -> int:
        """Bytes of content the image uses: manifest, config and layers, as containerd's
        image size (the compressed layers; an index's other platforms not counted)."""
        return self.manifest.size + self.config_desc.size + sum(x.size for x in self.layers)


def read_blob(content, ns: str, desc: m.Descriptor, limit: int) -> bytes:
    """A whole (small) blob from the namespaced content store, size-capped and verified."""
    if desc.size > limit:
        raise InvalidArgument(f"{desc.digest}: {desc.size} bytes is over the {limit} limit")
    r = content.reader(ns, desc.digest)
    try:
        if r.size > limit:
            raise InvalidArgument(f"{desc.digest}: {r.size} bytes is over the {limit} limit")
        data = r.read_at(0, r.size)
    finally:
        r.close()
    m.verify(desc, data)
    return data


def resolve(content, ns: str, target: m.Descriptor,
            platform: m.Platform | None = None) -> ResolvedImage:
    """Walk ``target`` (index -> manifest) for ``platform`` (default: the host's).

    NotFound when a blob is missing (an image whose content was not fetched for this
    platform); InvalidArgument for malformed documents."""
    want = platform or m.host_platform()
    desc = target
    for _ in range(MAX_DEPTH + 1):
        m.check_media_type(desc.media_type)
        if desc.media_type in m.MANIFESTS:
            break
        if desc.media_type not in m.INDEXES:
            raise InvalidArgument(f"image target has media type {desc.media_type!r}")
        index = m.parse_index(read_blob(content, ns, desc, m.MAX_MANIFEST), desc.media_type)
        desc = m.select(index, want)
    else:
        raise InvalidArgument("indexes nested too deep")
    man = m.parse_manifest(read_blob(content, ns, desc, m.MAX_MANIFEST), desc.media_type)
    config_data = read_blob(content, ns, man.config, m.MAX_CONFIG)
    try:
        config = json.loads(config_data)
    except ValueError as e:
        raise InvalidArgument(f"image config {man.config.digest}: {e}") from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"image config {man.config.digest}: not an object")
    return ResolvedImage(target, desc, man.config, config, man.layers,
                         m.diff_ids(config_data) if man.layers else [])
