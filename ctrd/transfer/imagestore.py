"""The ``ImageStore`` transfer object: images in ctrd's own store, as a destination (pull,
tag, import) or a source (push, tag, export) — containerd 2.3.4's
core/transfer/image/imagestore.go, in one place for every operation.

Naming, per stored descriptor (:meth:`ImageDest.records`), both of containerd's branches:

- the plain one (pull, tag, an archive's index): the image ``name`` with ``labels``, then
  each extra reference that is complete (not a prefix) or adds the digest
  (``<name>@<digest>``);
- an archive's index entry (marked ``io.containerd.import.ref-source: annotation`` by the
  importer): named from its annotations through each *prefix* reference (``ctr import
  --base-name``, default ``import-<date>``, which an annotation's full name may override),
  ``<prefix>@<digest>`` with ``add_digest`` (``--digests``; not when a name was found and
  ``skip_named_digest``). A descriptor no reference names gets no record (containerd's "No
  images store for").

Extra names carry ``containerd.io/gc.bref.image=<name>`` and an immediate ``gc.expire`` when
a primary name exists (collected with it). :func:`save` creates each record or, when the name
exists, replaces it whole (target and labels: a tag moves and its old labels go), retrying a
create when the record vanished in between; it answers whether each was created, for the
Images service's create/update events (:func:`publish`). :func:`lookup` is the source side
of an export.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from ctrd import errdefs
from ctrd.api.containerd.types.transfer import imagestore_pb2
from ctrd.images.manifest import Descriptor, Platform
from ctrd.metadata.images import Descriptor as ImgDesc, Image

MAX_REFERENCES = 256  # extra references of one ImageStore (ctr sends one per argument)
MAX_UNPACKS = 64
REF_SOURCE = "io.containerd.import.ref-source"
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


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

    def _extra_labels(self) -> dict[str, str]:
        if not self.name:
            return dict(self.labels)
        # the extra names go with the primary one: collected when it is deleted
        return {**self.labels, "containerd.io/gc.bref.image": self.name,
                "containerd.io/gc.expire": _rfc3339_now()}

    def records(self, target: ImgDesc) -> list[Image]:
        """The records ``target`` gets (``target.annotations`` may carry
        :data:`REF_SOURCE`, which is dropped from the stored target)."""
        ann = dict(target.annotations or {})
        source = ann.pop(REF_SOURCE, None)
        target = ImgDesc(target.media_type, target.digest, target.size, ann)
        out: list[Image] = []
        if source is not None:
            if source != "annotation":
                raise errdefs.InvalidArgument(f"ref source not supported: {source!r}")
            for ref in self.extra:
                if not ref.is_prefix:
                    continue
                name = _image_name(ann, _ref_translator(ref.name, not ref.allow_overwrite))
                if name:
                    out.append(Image(name, target, self._extra_labels()))
                if ref.add_digest and not (name and ref.skip_named_digest):
                    out.append(Image(f"{ref.name}@{target.digest}", target,
                                     self._extra_labels()))
            return out
        if self.name:
            out.append(Image(self.name, target, dict(self.labels)))
        for ref in self.extra:
            if ref.is_prefix and not ref.add_digest:
                continue
            name = f"{ref.name}@{target.digest}" if ref.add_digest else ref.name
            out.append(Image(name, target, self._extra_labels()))
        return out

    def store(self, md, ns: str, target: ImgDesc) -> list[tuple[Image, bool]]:
        """Create or replace the records of ``target`` (blocking); ``[(image, created)]``.
        NotFound when no name results (pull and tag need one)."""
        imgs = self.records(target)
        if not imgs:
            raise errdefs.NotFound("no image name found")
        return save(md, ns, imgs)


def save(md, ns: str, imgs: list[Image]) -> list[tuple[Image, bool]]:
    """Create each record, or replace it when the name exists (blocking)."""
    out = []
    for img in imgs:
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


def _ref_translator(image: str, check_prefix: bool):
    """containerd's ``archive.FilterRefPrefix`` (check) / ``AddRefPrefix``."""

    def translate(ref: str) -> str:
        if not image:
            return ""
        if any(c in ref for c in "/:@"):
            if check_prefix and not _is_prefix(ref, image):
                return ""
            return ref
        return f"{image}:{ref}"

    return translate


def _is_prefix(s: str, prefix: str) -> bool:
    if not s.startswith(prefix):
        return False
    return len(s) == len(prefix) or s[len(prefix)] in "/:@"


def _image_name(annotations: dict[str, str], translate) -> str:
    name = annotations.get(IMAGE_NAME, "")
    if name:
        # a full name must come through unchanged, or it is not used
        return name if translate(name) == name else ""
    name = annotations.get(REF_NAME, "")
    return translate(name) if name else ""


def _rfc3339_now() -> str:
    """Go's ``time.Now().Format(time.RFC3339)``: local time, ``Z`` for UTC."""
    now = datetime.datetime.now().astimezone().replace(microsecond=0)
    text = now.isoformat()
    return text[:-6] + "Z" if now.utcoffset() == datetime.timedelta(0) else text


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
    """The Images service's events for what :func:`save` did (loop thread)."""
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


def lookup(md, ns: str, dest: ImageDest) -> list[tuple[str, Descriptor]]:
    """The images an export of ``dest`` names (its ``name``, then each full extra
    reference), as (name, target); a prefix reference is NotImplemented as in containerd."""
    names = [dest.name] if dest.name else []
    for ref in dest.extra:
        if ref.is_prefix:
            raise errdefs.NotImplemented_("prefix lookup on export not implemented")
        names.append(ref.name)
    out = []
    for name in names:
        t = md.images.get(ns, name).target
        out.append((name, Descriptor(t.media_type, t.digest, t.size,
                                     annotations=dict(t.annotations))))
    return out
