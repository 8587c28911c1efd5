"""The ``ImageStore`` transfer object: images in ctrd's own store, as a destination (pull,
tag, import) or a source (push, tag, export) — containerd 2.3.4's
core/transfer/image/imagestore.go.

As a destination, :meth:`ImageDest.store` names a target as containerd's ``Store`` does when
no import annotations are involved: the image ``name`` with ``labels``, then each extra
reference that is complete (not a prefix) or adds the digest (``<name>@<digest>``), those with
``containerd.io/gc.bref.image=<name>`` and an immediate ``gc.expire`` when a primary name
exists. Each is created, or if it exists replaced whole (target and labels: a tag moves and
its old labels go), retrying a create when the record vanished in between. The records come
back with whether each was created, for the Images service's create/update events.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from ctrd import errdefs
from ctrd.api.containerd.types.transfer import imagestore_pb2
from ctrd.images.manifest import Platform
from ctrd.metadata.images import Descriptor as ImgDesc, Image

MAX_REFERENCES = 256
MAX_UNPACKS = 64


@dataclass
class Unpack:
    platform: Platform | None
    snapshotter: str


@dataclass
class ImageDest:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    platforms: list[Platform] = field(default_factory=list)
    all_metadata: bool = False
    manifest_limit: int = 0
    extra: list[imagestore_pb2.ImageReference] = field(default_factory=list)
    unpacks: list[Unpack] = field(default_factory=list)

    def __str__(self) -> str:  # as containerd's Store.String()
        return f"Local Image Store ({self.name})"

    def records(self, target: ImgDesc) -> list[Image]:
        imgs = [Image(self.name, target, dict(self.labels))] if self.name else []
        extra_labels = dict(self.labels)
        if self.name:
            now = datetime.datetime.now(datetime.timezone.utc)
            extra_labels["containerd.io/gc.bref.image"] = self.name
            extra_labels["containerd.io/gc.expire"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        for ref in self.extra:
            if ref.is_prefix and not ref.add_digest:
                continue
            name = f"{ref.name}@{target.digest}" if ref.add_digest else ref.name
            imgs.append(Image(name, target, dict(extra_labels)))
        if not imgs:
            raise errdefs.NotFound("no image name found")
        return imgs

    def store(self, md, ns: str, target: ImgDesc) -> list[tuple[Image, bool]]:
        """Create or replace the records (blocking); ``[(image, created)]``."""
        out = []
        for img in self.records(target):
            for _ in range(8):  # created/deleted under us: try again, as containerd loops
                try:
                    out.append((md.images.create(ns, img), True))
                    break
                except errdefs.AlreadyExists:
                    try:
                        out.append((md.images.update(ns, img), False))
                        break
                    except errdefs.NotFound:
                        continue
            else:
                raise errdefs.Unavailable(f"image {img.name!r} keeps changing under the transfer")
        return out


def platform_of(p) -> Platform:
    return Platform(p.os, p.architecture, p.variant)


def decode(obj: imagestore_pb2.ImageStore) -> ImageDest:
    if len(obj.extra_references) > MAX_REFERENCES:
        raise errdefs.InvalidArgument(f"{len(obj.extra_references)} extra references, more "
                                      f"than {MAX_REFERENCES}")
    if len(obj.unpacks) > MAX_UNPACKS:
        raise errdefs.InvalidArgument(f"{len(obj.unpacks)} unpack configurations, more than "
                                      f"{MAX_UNPACKS}")
    for ref in obj.extra_references:
        if not ref.name:
            raise errdefs.InvalidArgument("an extra reference has no name")
    return ImageDest(
        name=obj.name, labels=dict(obj.labels),
        platforms=[platform_of(p) for p in obj.platforms],
        all_metadata=obj.all_metadata, manifest_limit=obj.manifest_limit,
        extra=list(obj.extra_references),
        unpacks=[Unpack(platform_of(u.platform) if u.HasField("platform") else None,
                        u.snapshotter) for u in obj.unpacks])


def publish(tc, stored: list[tuple[Image, bool]]) -> None:
    """The Images service's events for what :meth:`ImageDest.store` did (loop thread)."""
    if tc.events is None:
        return
    from ctrd.api.containerd.events import image_pb2 as events_pb

    for img, created in stored:
        if created:
            tc.events.publish(tc.ns, "/images/create",
                              events_pb.ImageCreate(name=img.name, labels=img.labels))
        else:
            tc.events.publish(tc.ns, "/images/update",
                              events_pb.ImageUpdate(name=img.name, labels=img.labels))
