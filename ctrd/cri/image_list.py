"""ListImages (and StreamImages): every image resolvable for the host platform, or the one a
filter names."""

from __future__ import annotations

import asyncio

from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.cri.helpers import batches
from ctrd.cri.images import CRIImage, user_from_image


def image_pb(img: CRIImage) -> pb.Image:
    uid, username = user_from_image(img.user)
    p = pb.Image(id=img.id, repo_tags=img.repo_tags, repo_digests=img.repo_digests,
                 size=img.size, username=username, pinned=img.pinned)
    if uid is not None:
        p.uid.SetInParent()  # present even for uid 0 (root)
        p.uid.value = uid
    return p


class ImageList:
    """Mixed into ImageService."""

    def images(self, ref: str = "") -> list[CRIImage]:
        if ref:
            img = self.index.find(ref)
            return [img] if img is not None else []
        return sorted(self.index.all().values(), key=lambda i: i.id)

    async def ListImages(self, request, context):
        found = await asyncio.to_thread(self.images, request.filter.image.image)
        return pb.ListImagesResponse(images=[image_pb(i) for i in found])

    async def StreamImages(self, request, context):
        found = await asyncio.to_thread(self.images, request.filter.image.image)
        for part in batches(found):
            yield pb.StreamImagesResponse(images=[image_pb(x) for x in part])
