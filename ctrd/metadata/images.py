"""Images: named references to a target descriptor (a manifest or an index), per namespace.

containerd's image store semantics: names are any non-empty text (``docker.io/library/x:1``),
the target needs a valid digest, a positive size and a media type, labels follow the usual
size limit; Update takes ``labels``, ``labels.<key>``, ``target``, ``annotations`` and
``annotations.<key>`` field paths (no paths: replace everything but the creation time).
Images are GC roots: their target and ``containerd.io/gc.ref.*`` labels keep content alive.

Storage: bucket ``images``, key ``<ns>\\0<name>`` -> ``{name, labels, target: {media_type,
digest, size, annotations}, created_at, updated_at}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

from ctrd import identifiers
from ctrd.content.store import validate_digest
from ctrd.errdefs import AlreadyExists, InvalidArgument, NotFound, quote
from ctrd.metadata.db import DB, get_json, key, name_of, prefix, put_json, scan


@dataclass
class Descriptor:
    """An image's target (OCI descriptor)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Image:
    """An image record: a name for a target descriptor."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


def _to_rec(img: Image) -> dict:
    t = img.target
    return {"name": img.name, "labels": img.labels, "created_at": img.created_at,
            "updated_at": img.updated_at,
            "target": {"media_type": t.media_type, "digest": t.digest, "size": t.size,
                       "annotations": t.annotations}}


def _from_rec(rec: dict) -> Image:
    t = rec["target"]
    return Image(rec["name"], Descriptor(t["media_type"], t["digest"], t["size"],
                                         dict(t.get("annotations", {}))),
                 dict(rec.get("labels", {})), rec["created_at"], rec["updated_at"])


def validate(img: Image) -> None:
    if not img.name:
        raise InvalidArgument("image name must not be empty")
    identifiers.validate_labels(img.labels, "image.Labels")
    t = img.target
    try:
        validate_digest(t.digest)
    except InvalidArgument as e:
        raise InvalidArgument(f"Target.Digest {quote(t.digest)} invalid: {e.detail}") from None
    if t.size <= 0:
        raise InvalidArgument("Target.Size must be greater than zero")
    if not t.media_type:
        raise InvalidArgument("Target.MediaType must be set")


class ImageStore:
    def __init__(self, db: DB) -> None:
        self.db = db

    @property
    def _bucket(self):
        return self.db.bucket("images")

    def get(self, ns: str, name: str) -> Image:
        with self.db.view() as txn:
            rec = get_json(txn, self._bucket, key(ns, name))
        if rec is None:
            raise NotFound(f"image {quote(name)}")
        return _from_rec(rec)

    def list(self, ns: str, match: Callable[[Image], bool] | None = None) -> list[Image]:
        out = []
        with self.db.view() as txn:
            for k, v in scan(txn, self._bucket, prefix(ns)):
                rec = json.loads(v)
                rec["name"] = name_of(k, rec)
                img = _from_rec(rec)
                if match is None or match(img):
                    out.append(img)
        return out

    def create(self, ns: str, img: Image, now: float | None = None) -> Image:
        """Record ``img``; its times are ``now`` (containerd 2.x's SOURCE_DATE_EPOCH from the
        request) or the current time."""
        validate(img)
        img.labels = {k: v for k, v in img.labels.items() if v}
        with self.db.update() as txn:
            self.db.ensure_namespace(txn, ns)
            if txn.get(key(ns, img.name), db=self._bucket) is not None:
                raise AlreadyExists(f"image {quote(img.name)}")
            img.created_at = img.updated_at = time.time() if now is None else now
            put_json(txn, self._bucket, key(ns, img.name), _to_rec(img))
        self.db.mutated()
        return img

    def update(self, ns: str, img: Image, fieldpaths: list[str] | None = None,
               now: float | None = None) -> Image:
        """Change ``img``'s fields (all, or those in ``fieldpaths``); its update time is
        ``now`` or the current time, its creation time is kept."""
        if not img.name:
            raise InvalidArgument("image name is required for update")
        with self.db.update() as txn:
            rec = get_json(txn, self._bucket, key(ns, img.name))
            if rec is None:
                raise NotFound(f"image {quote(img.name)}")
            cur = _from_rec(rec)
            if fieldpaths:
                for path in fieldpaths:
                    if path.startswith("labels."):
                        k = path[len("labels."):]
                        cur.labels[k] = img.labels.get(k, "")
                    elif path.startswith("annotations."):
                        k = path[len("annotations."):]
                        cur.target.annotations[k] = img.target.annotations.get(k, "")
                    elif path == "labels":
                        cur.labels = dict(img.labels)
                    elif path == "target":
                        cur.target = img.target
                    elif path == "annotations":
                        cur.target.annotations = dict(img.target.annotations)
                    else:
                        raise InvalidArgument(f"cannot update {quote(path)} field on image "
                                              f"{quote(img.name)}")
            else:
                created = cur.created_at
                cur = Image(img.name, img.target, dict(img.labels), created)
            cur.labels = {k: v for k, v in cur.labels.items() if v}
            validate(cur)
            cur.updated_at = time.time() if now is None else now
            put_json(txn, self._bucket, key(ns, img.name), _to_rec(cur))
        self.db.mutated()
        return cur

    def delete(self, ns: str, name: str, target: str = "") -> None:
        """Remove image ``name``; with ``target`` (a digest) only while the image points at
        it: another target is NotFound, as containerd 2.x's DeleteTarget."""
        with self.db.update() as txn:
            if target:
                rec = get_json(txn, self._bucket, key(ns, name))
                if rec is None:
                    raise NotFound(f"image {quote(name)}")
                have = _from_rec(rec).target.digest
                if have != target:
                    raise NotFound(f"image {quote(name)} has target {have}, not {target}")
            if not txn.delete(key(ns, name), db=self._bucket):
                raise NotFound(f"image {quote(name)}")
        self.db.mutated(dirty=True)
