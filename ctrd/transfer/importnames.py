"""The ``ImageStore`` transfer object as an import and an export read it (containerd
2.3.4's core/transfer/image/imagestore.go): which image records a stored descriptor gets
(:func:`names_for`, both of containerd's branches: an archive's index entries named from
their annotations, and the plain one), creating them (:func:`store_images`), and which
images an export names (:func:`lookup`). (Pull, push and tag read it in their own module.)

Naming of an import, per descriptor: an index entry of the archive (marked
``io.containerd.import.ref-source: annotation`` by the importer) is named from its
annotations through each *prefix* reference (``ctr import --base-name``, default
``import-<date>`` which an annotation's full name may override), ``<prefix>@<digest>`` with
``add_digest`` (``--digests``; not when a name was found and ``skip_named_digest``); the
archive's index itself gets the store's ``name`` (``--index-name``) and the digest
references. A descriptor no reference names is skipped (containerd's "No images store
for"). Records are created, or updated when they exist (so a re-import moves the name).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from ctrd import errdefs
from ctrd.api.containerd.types.transfer import imagestore_pb2
from ctrd.images.manifest import Descriptor, Platform

REF_SOURCE = "io.containerd.import.ref-source"
MAX_REFERENCES = 256  # extra references of one ImageStore (ctr sends one per argument)
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class Record:
    """An image record to create: name, target, labels."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)


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


def check(store: imagestore_pb2.ImageStore) -> None:
    """Bounds on what a client may ask: InvalidArgument beyond them."""
    if len(store.extra_references) > MAX_REFERENCES:
        raise errdefs.InvalidArgument(f"{len(store.extra_references)} extra references, "
                                      f"more than {MAX_REFERENCES}")
    for ref in store.extra_references:
        if not ref.name:
            raise errdefs.InvalidArgument("an extra reference has no name")


def names_for(store: imagestore_pb2.ImageStore, desc: Descriptor) -> list[Record]:
    """The records ``store`` gives ``desc`` (``desc.annotations`` may carry
    :data:`REF_SOURCE`, which is dropped from the target)."""
    labels = dict(store.labels)

    def extra_labels() -> dict[str, str]:
        if not store.name:
            return dict(labels)
        # the extra names go with the primary one: collected when it is deleted
        return {**labels, "containerd.io/gc.bref.image": store.name,
                "containerd.io/gc.expire": _rfc3339_now()}

    ann = dict(desc.annotations or {})
    source = ann.pop(REF_SOURCE, None)
    target = Descriptor(desc.media_type, desc.digest, desc.size, desc.platform, ann,
                        list(desc.urls))
    out: list[Record] = []
    if source is not None:
        if source != "annotation":
            raise errdefs.InvalidArgument(f"ref source not supported: {source!r}")
        for ref in store.extra_references:
            if not ref.is_prefix:
                continue
            name = _image_name(ann, _ref_translator(ref.name, not ref.allow_overwrite))
            if not name:
                if ref.add_digest:
                    out.append(Record(f"{ref.name}@{desc.digest}", target, extra_labels()))
                continue
            out.append(Record(name, target, extra_labels()))
            if ref.add_digest and not ref.skip_named_digest:
                out.append(Record(f"{ref.name}@{desc.digest}", target, extra_labels()))
    else:
        if store.name:
            out.append(Record(store.name, target, dict(labels)))
        for ref in store.extra_references:
            if ref.is_prefix and not ref.add_digest:
                continue
            name = f"{ref.name}@{desc.digest}" if ref.add_digest else ref.name
            out.append(Record(name, target, extra_labels()))
    return out


def store_images(md, ns: str, records: list[Record]) -> list[tuple[Any, str]]:
    """Create each record, or update it (target and labels) when the name exists, as
    containerd's Store; returns (image, event topic) for :func:`publish`. Blocking."""
    from ctrd.metadata.images import Descriptor as ImgDesc, Image

    done = []
    for r in records:
        t = r.target
        img = Image(r.name, ImgDesc(t.media_type, t.digest, t.size, dict(t.annotations)),
                    dict(r.labels))
        for _ in range(3):  # removed between the two: create again, as containerd
            try:
                done.append((md.images.create(ns, img), "/images/create"))
                break
            except errdefs.AlreadyExists:
                pass
            try:
                done.append((md.images.update(ns, img), "/images/update"))
                break
            except errdefs.NotFound:
                continue
        else:
            raise errdefs.Unavailable(f"image {r.name} keeps changing; try again")
    return done


def publish(events, ns: str, saved: list[tuple[Any, str]]) -> None:
    """The Images service's events for what :func:`store_images` saved (on the loop)."""
    from ctrd.api.containerd.events import image_pb2 as events_pb

    if events is None:
        return
    for img, topic in saved:
        cls = events_pb.ImageCreate if topic == "/images/create" else events_pb.ImageUpdate
        events.publish(ns, topic, cls(name=img.name, labels=img.labels))


def platforms(store: imagestore_pb2.ImageStore) -> list[Platform]:
    return [Platform(p.os, p.architecture, p.variant) for p in store.platforms]


def lookup(md, ns: str, store: imagestore_pb2.ImageStore) -> list[tuple[str, Descriptor]]:
    """The images an export of ``store`` names (its ``name``, then each full extra
    reference), as (name, target); a prefix reference is NotImplemented as in containerd."""
    check(store)
    names = [store.name] if store.name else []
    for ref in store.extra_references:
        if ref.is_prefix:
            raise errdefs.NotImplemented_("prefix lookup on export not implemented")
        names.append(ref.name)
    out = []
    for name in names:
        img = md.images.get(ns, name)
        t = img.target
        out.append((name, Descriptor(t.media_type, t.digest, t.size,
                                     annotations=dict(t.annotations))))
    return out
