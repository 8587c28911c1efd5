"""Images as the kubelet sees them, over ctrd's image records in namespace ``k8s.io``.

As containerd's CRI: an image's id is its config digest; a pull records up to three names for
it -- the normalised reference (``docker.io/library/busybox:latest``), its repo digest
(``docker.io/library/busybox@sha256:<manifest or index digest>``) and the id itself -- each
labelled ``io.cri-containerd.image=managed``. ListImages groups names by id into repo tags and
repo digests; ImageStatus of an unknown image is an empty answer, not an error; RemoveImage of
an unknown image succeeds.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field

from ctrd import errdefs
from ctrd.images import manifest as m
from ctrd.images.resolve import ResolvedImage, resolve

NAMESPACE = "k8s.io"
MANAGED_LABEL = "io.cri-containerd.image"
PINNED_LABEL = "io.cri-containerd.pinned"
_ID = re.compile(r"^(sha256:)?[a-f0-9]{64}$")


@dataclass
class CRIImage:
    id: str                                  # config digest
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    size: int = 0
    config: dict = field(default_factory=dict)
    chain_id: str = ""
    pinned: bool = False
    names: list[str] = field(default_factory=list)  # every record name that points at it

    @property
    def user(self) -> str:
        cfg = self.config.get("config") or {}
        return str(cfg.get("User") or "") if isinstance(cfg, dict) else ""


def normalize(ref: str) -> str:
    """The kubelet's image string as a full reference (docker.io/library/x:latest); with a
    digest, the tag is dropped (containerd's ParseDockerRef: ``x:t@sha256:..`` is
    ``docker.io/library/x@sha256:..``)."""
    from ctrd.remotes.reference import parse

    r = parse(ref)
    if r.digest and r.tag:
        return f"{r.locator}@{r.digest}"
    return str(r)


def user_from_image(user: str) -> tuple[int | None, str]:
    """(uid, username) of an image config's ``User`` as containerd's getUserFromImage: the
    part before ``:``; numeric -> uid, else a user name; empty -> (None, "")."""
    if not user:
        return None, ""
    user = user.split(":")[0]
    try:
        uid = int(user, 10)
    except ValueError:
        return None, user
    if not -(1 << 63) <= uid < (1 << 63):
        return None, user
    return uid, ""


def is_image_id(ref: str) -> bool:
    return bool(_ID.match(ref))


class ImageIndex:
    """CRI's view of the images of namespace ``k8s.io``, resolved for the host platform.

    Built from the image records on demand and cached by (name, target digest), so a listing
    re-reads only what changed since the last call."""

    def __init__(self, md, platform: m.Platform | None = None) -> None:
        self.md = md
        self.platform = platform or m.host_platform()
        self._cache: dict[str, ResolvedImage] = {}   # target digest -> resolved
        self._lock = threading.Lock()

    def _resolve(self, target: m.Descriptor) -> ResolvedImage | None:
        with self._lock:
            r = self._cache.get(target.digest)
        if r is not None:
            return r
        try:
            r = resolve(self.md.content, NAMESPACE, target, self.platform)
        except (errdefs.NotFound, errdefs.InvalidArgument):
            return None  # not for this platform, or content gone: not a CRI image
        with self._lock:
            self._cache[target.digest] = r
        return r

    def all(self) -> dict[str, CRIImage]:
        """Image id -> CRIImage for every resolvable image record."""
        out: dict[str, CRIImage] = {}
        records = self.md.images.list(NAMESPACE)
        with self._lock:  # forget what no record points at any more (removed, GC'd)
            live = {rec.target.digest for rec in records}
            for d in [d for d in self._cache if d not in live]:
                del self._cache[d]
        for rec in records:
            t = rec.target
            r = self._resolve(m.Descriptor(t.media_type, t.digest, t.size))
            if r is None:
                continue
            iid = r.config_desc.digest
            img = out.get(iid)
            if img is None:
                size = r.size + (t.size if t.media_type in m.INDEXES else 0)
                img = out[iid] = CRIImage(iid, size=size, config=r.config, chain_id=r.chain_id)
            img.names.append(rec.name)
            if rec.labels.get(PINNED_LABEL) == "pinned":
                img.pinned = True
            if rec.name == iid:
                continue
            if "@" in rec.name:
                img.repo_digests.append(rec.name)
            else:
                img.repo_tags.append(rec.name)
        for img in out.values():
            img.repo_tags.sort()
            img.repo_digests.sort()
        return out

    def find(self, ref: str) -> CRIImage | None:
        """The image ``ref`` names: an id (``sha256:...`` or 64 hex, or a unique prefix of at
        least 12 hex digits, as the kubelet shows them), or a reference."""
        images = self.all()
        if is_image_id(ref):
            iid = ref if ref.startswith("sha256:") else "sha256:" + ref
            return images.get(iid)
        try:
            name = normalize(ref)
        except errdefs.InvalidArgument:
            name = None
        for img in images.values():
            if name is not None and name in img.names:
                return img
        if re.fullmatch(r"[a-f0-9]{12,63}", ref):
            hits = [i for i in images.values() if i.id[len("sha256:"):].startswith(ref)]
            if len(hits) == 1:
                return hits[0]
        return None

    def record(self, names: list[str], target: m.Descriptor, labels: dict[str, str]) -> None:
        """Create or repoint image records ``names`` at ``target``, setting ``labels`` (an
        existing record keeps its other labels, e.g. pinned, as containerd's
        createImageReference updates only ``target`` and ``labels.<key>``)."""
        from ctrd.metadata.images import Descriptor as ImgDesc, Image

        paths = ["target"] + [f"labels.{k}" for k in labels]
        for name in names:
            img = Image(name, ImgDesc(target.media_type, target.digest, target.size),
                        dict(labels))
            try:
                self.md.images.create(NAMESPACE, img)
            except errdefs.AlreadyExists:
                self.md.images.update(NAMESPACE, img, paths)

    def remove(self, img: CRIImage) -> None:
        for name in img.names:
            try:
                self.md.images.delete(NAMESPACE, name)
            except errdefs.NotFound:
                pass


def repo_names(ref: str, target_digest: str) -> tuple[str, str]:
    """(repo tag, repo digest) for a pulled reference, as containerd's getRepoDigestAndTag."""
    from ctrd.remotes.reference import parse

    r = parse(ref)
    repo = f"{r.host}/{r.repository}"
    tag = f"{repo}:{r.tag}" if r.tag and not r.digest else ""
    return tag, f"{repo}@{target_digest}"


def fs_usage(path: str, cache: dict, ttl: float = 10.0) -> tuple[int, int]:
    """(bytes, inodes) used under ``path`` (:func:`ctrd.cri.stats.disk_usage`), recomputed
    at most every ``ttl`` seconds (a walk of a large snapshot tree is not free; containerd
    samples it periodically too); (0, 0) while ``path`` does not exist."""
    from ctrd.cri.stats import disk_usage

    now = time.monotonic()
    hit = cache.get(path)
    if hit and now - hit[0] < ttl:
        return hit[1], hit[2]
    try:
        used, inodes = disk_usage(path)
    except errdefs.NotFound:
        used, inodes = 0, 0
    cache[path] = (now, used, inodes)
    return used, inodes


def image_info_json(img: CRIImage) -> str:
    """ImageStatus verbose ``info`` (containerd's verboseImageInfo: chainID, imageSpec)."""
    return json.dumps({"chainID": img.chain_id, "imageSpec": img.config})
