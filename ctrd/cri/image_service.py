"""runtime.v1.ImageService: the kubelet's images, over ctrd's image records in ``k8s.io``.

Behaviour is containerd 1.6's CRI (pkg/cri/server/image_*.go):

- PullImage normalises the reference (``busybox`` -> ``docker.io/library/busybox:latest``; a
  reference with a digest drops its tag), resolves it through ``[...cri.registry]`` with the
  request's AuthConfig (:mod:`ctrd.cri.registry`), pulls and unpacks it into the configured
  snapshotter with :func:`ctrd.images.pull.pull` in a worker thread, then records the image id
  (config digest), the repo tag and the repo digest as image records labelled
  ``io.cri-containerd.image=managed``; it answers the image id. Errors keep their kind and read
  ``failed to pull and unpack image "<ref>": <cause>``. Concurrent pulls of one reference with
  the same credentials share one pull (a kubelet retry does not start a second download);
  a caller that goes away does not cancel the pull the others wait for.
- ListImages lists every image resolvable for the host platform (optionally only the one a
  filter names); ImageStatus of an unknown image is an empty answer, verbose adds the
  ``info`` JSON; RemoveImage deletes every name of the image (unknown: success) and then
  waits for a garbage collection, as containerd's synchronous delete of the last name does.
- ImageFsInfo is the snapshotter root's usage (bytes and inodes, sampled at most every few
  seconds), ``mountpoint`` that root, ``timestamp`` when it was sampled (ns).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

from ctrd import errdefs
from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc
from ctrd.cri.config import CRIConfig, parse_duration
from ctrd.cri.images import (MANAGED_LABEL, NAMESPACE, PINNED_LABEL, CRIImage, ImageIndex,
                             fs_usage, image_info_json, repo_names, user_from_image)
from ctrd.cri.registry import CRIRegistry, PullAuth
from ctrd.images import manifest as m

MANAGED_VALUE = "managed"
# image_pull_progress_timeout = "0" means no limit; the registry client wants a number.
_NO_TIMEOUT = 365 * 86400.0
_STREAM_BATCH = 500  # images per StreamImages message


def pull_name(image: str):
    """The reference containerd's ParseDockerRef makes of the kubelet's ``image``."""
    from ctrd.remotes.reference import Reference, parse

    try:
        r = parse(image)
    except errdefs.InvalidArgument as e:
        raise errdefs.InvalidArgument(
            f"failed to parse image reference {errdefs.quote(image)}: {e.detail}") from None
    if r.digest and r.tag:
        r = Reference(r.host, r.repository, "", r.digest)
    return r


class ImageService(pb_grpc.ImageServiceServicer):
    """The ImageService over metadata ``md``. ``gc``: the GC scheduler a removal waits for
    (None: collect in-line). ``snapshotter_root``: what ImageFsInfo measures."""

    def __init__(self, md, config: CRIConfig, snapshotter_root: str, *, gc=None,
                 platform: m.Platform | None = None) -> None:
        self.md, self.config, self.snapshotter_root, self.gc = md, config, snapshotter_root, gc
        self.index = ImageIndex(md, platform)
        timeout = parse_duration(config.image_pull_progress_timeout)
        self.progress_timeout = timeout if timeout > 0 else _NO_TIMEOUT
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self._fs_cache: dict = {}
        self._collect_lock = threading.Lock()

    def register_grpc(self, server) -> None:
        pb_grpc.add_ImageServiceServicer_to_server(self, server)

    # --- the core (blocking: run in a thread) ---------------------------------------------

    def pull(self, image: str, auth: PullAuth | None = None) -> str:
        """Pull and record ``image``; returns its id (config digest)."""
        from ctrd.images.pull import pull
        from ctrd.images.resolve import resolve
        from ctrd.remotes.fetch import RegistryFetcher

        r = pull_name(image)
        ref = str(r)
        try:
            registry = CRIRegistry(self.config.registry, r.host, auth,
                                   progress_timeout=self.progress_timeout)
            try:
                _, desc = registry.resolve(r)
            except errdefs.CtrdError as e:
                raise type(e)(f"failed to resolve reference {errdefs.quote(ref)}: "
                              f"{e.detail}") from e
            root = m.Descriptor(desc.media_type, desc.digest, desc.size)
            pull(self.md, NAMESPACE, ref, root, RegistryFetcher(registry.repository(r)),
                 snapshotter=self.config.containerd.snapshotter, platform=self.index.platform,
                 workers=max(1, self.config.max_concurrent_downloads))
            resolved = resolve(self.md.content, NAMESPACE, root, self.index.platform)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to pull and unpack image {errdefs.quote(ref)}: "
                          f"{e.detail}") from e
        except OSError as e:  # the content store or snapshotter (disk full, ...)
            raise errdefs.CtrdError(f"failed to pull and unpack image {errdefs.quote(ref)}: "
                                    f"{e}") from e
        image_id = resolved.config_desc.digest
        tag, digest = repo_names(ref, root.digest)
        names = [n for n in (image_id, tag, digest) if n]
        labels = {MANAGED_LABEL: MANAGED_VALUE}
        if self.config.sandbox_image and str(pull_name(self.config.sandbox_image)) == ref:
            labels[PINNED_LABEL] = "pinned"  # containerd's pinned_images (the sandbox image)
        try:
            self.index.record(names, root, labels)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to create image references for {errdefs.quote(ref)}: "
                          f"{e.detail}") from e
        return image_id

    def remove(self, ref: str) -> bool:
        """Delete every name of the image ``ref`` names; False if there is none."""
        img = self.index.find(ref)
        if img is None:
            return False
        self.index.remove(img)
        return True

    def collect(self) -> None:
        with self._collect_lock:
            self.md.collect()

    def fs_info(self) -> pb.FilesystemUsage:
        used, inodes = fs_usage(self.snapshotter_root, self._fs_cache)
        sampled = self._fs_cache.get(self.snapshotter_root, (time.monotonic(),))[0]
        ts = time.time_ns() - int(max(0.0, time.monotonic() - sampled) * 1e9)
        return pb.FilesystemUsage(
            timestamp=ts, fs_id=pb.FilesystemIdentifier(mountpoint=self.snapshotter_root),
            used_bytes=pb.UInt64Value(value=used), inodes_used=pb.UInt64Value(value=inodes))

    def images(self, ref: str = "") -> list[CRIImage]:
        if ref:
            img = self.index.find(ref)
            return [img] if img is not None else []
        return sorted(self.index.all().values(), key=lambda i: i.id)

    # --- gRPC -----------------------------------------------------------------------------

    async def PullImage(self, request, context):
        image = request.image.image
        if not image:
            raise errdefs.InvalidArgument("image reference is required")
        auth = PullAuth.from_pb(request.auth) if request.HasField("auth") else None
        key = (str(pull_name(image)), _fingerprint(request.auth) if auth else "")
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(asyncio.to_thread(self.pull, image, auth))
            self._inflight[key] = fut

            def done(f: asyncio.Future, key=key) -> None:
                if self._inflight.get(key) is f:
                    del self._inflight[key]
                if not f.cancelled():
                    f.exception()  # retrieved: a caller that left must not leave a warning

            fut.add_done_callback(done)
        image_id = await asyncio.shield(fut)
        return pb.PullImageResponse(image_ref=image_id)

    async def ListImages(self, request, context):
        found = await asyncio.to_thread(self.images, request.filter.image.image)
        return pb.ListImagesResponse(images=[image_pb(i) for i in found])

    async def StreamImages(self, request, context):
        found = await asyncio.to_thread(self.images, request.filter.image.image)
        for i in range(0, max(len(found), 1), _STREAM_BATCH):
            yield pb.StreamImagesResponse(images=[image_pb(x)
                                                  for x in found[i:i + _STREAM_BATCH]])

    async def ImageStatus(self, request, context):
        img = await asyncio.to_thread(self.index.find, request.image.image)
        if img is None:
            return pb.ImageStatusResponse()
        info = {"info": image_info_json(img)} if request.verbose else {}
        return pb.ImageStatusResponse(image=image_pb(img), info=info)

    async def RemoveImage(self, request, context):
        if await asyncio.to_thread(self.remove, request.image.image):
            if self.gc is not None:
                await self.gc.schedule_and_wait()
            else:
                await asyncio.to_thread(self.collect)
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request, context):
        usage = await asyncio.to_thread(self.fs_info)
        return pb.ImageFsInfoResponse(image_filesystems=[usage])


def image_pb(img: CRIImage) -> pb.Image:
    uid, username = user_from_image(img.user)
    p = pb.Image(id=img.id, repo_tags=img.repo_tags, repo_digests=img.repo_digests,
                 size=img.size, username=username, pinned=img.pinned)
    if uid is not None:
        p.uid.SetInParent()  # present even for uid 0 (root)
        p.uid.value = uid
    return p


def _fingerprint(auth_pb) -> str:
    """Which credentials a pull uses, without keeping them (a key for sharing pulls)."""
    return hashlib.sha256(auth_pb.SerializeToString(deterministic=True)).hexdigest()
