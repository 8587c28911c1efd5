"""PullImage (containerd's images/image_pull.go): the reference normalised, resolved through
``[...cri.registry]`` with the request's AuthConfig, pulled and unpacked by ctrd's pull in a
worker thread, recorded as image records labelled ``io.cri-containerd.image=managed``; the
answer is the image id. Concurrent pulls of one reference with the same credentials share one
pull."""

from __future__ import annotations

import asyncio
import hashlib
import time

from ctrd import errdefs
from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.cri.images import MANAGED_LABEL, NAMESPACE, PINNED_LABEL, repo_names
from ctrd.cri.registry import CRIRegistry, PullAuth
from ctrd.images import manifest as m
from ctrd.metrics.pulls import PULLS

MANAGED_VALUE = "managed"
# image_pull_progress_timeout = "0" means no limit; the registry client wants a number.
NO_PROGRESS_TIMEOUT = 365 * 86400.0



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


def _fingerprint(auth_pb) -> str:
    """Which credentials a pull uses, without keeping them (a key for sharing pulls)."""
    return hashlib.sha256(auth_pb.SerializeToString(deterministic=True)).hexdigest()


class ImagePull:
    """Mixed into ImageService."""

    def pull(self, image: str, auth: PullAuth | None = None) -> str:
        """Pull and record ``image``; returns its id (config digest). Counted in the
        metrics' pull figures (:data:`ctrd.metrics.pulls.PULLS`)."""
        r = pull_name(image)
        PULLS.begin()
        t0, ok, size = time.monotonic(), False, 0
        try:
            image_id, size = self._pull(r, auth)
            ok = True
            return image_id
        finally:
            PULLS.end(ok, size, time.monotonic() - t0)

    def _pull(self, r, auth: PullAuth | None) -> tuple[str, int]:
        """(image id, bytes of its platform's content) of a pull of reference ``r``."""
        from ctrd.images.pull import pull
        from ctrd.images.resolve import resolve
        from ctrd.remotes.fetch import RegistryFetcher

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
        size = resolved.manifest.size + resolved.config_desc.size + \
            sum(d.size for d in resolved.layers)
        return image_id, size

    async def PullImage(self, request, context):
        image = request.image.image
        # containerd 2.3.4 answers a reference it cannot parse, and a registry it cannot
        # reach, with plain errors (UNKNOWN); a missing image stays NOT_FOUND
        if not image:
            raise errdefs.Unknown('failed to parse image reference "": invalid reference format')
        try:
            name = pull_name(image)
        except errdefs.InvalidArgument as e:
            raise errdefs.Unknown(f"{e.detail}: invalid reference format") from None
        auth = PullAuth.from_pb(request.auth) if request.HasField("auth") else None
        key = (str(name), _fingerprint(request.auth) if auth else "")
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
        try:
            image_id = await asyncio.shield(fut)
        except errdefs.Unavailable as e:  # containerd: "failed to do request: ...", UNKNOWN
            raise errdefs.Unknown(e.detail or str(e)) from None
        return pb.PullImageResponse(image_ref=image_id)
