"""ImageStatus: an unknown image is an empty answer; ``verbose`` adds the ``info`` JSON."""

from __future__ import annotations

import asyncio

from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.cri.image_list import image_pb
from ctrd.cri.images import image_info_json


class ImageStatusRPC:
    """Mixed into ImageService."""

    async def ImageStatus(self, request, context):
        img = await asyncio.to_thread(self.index.find, request.image.image)
        if img is None:
            return pb.ImageStatusResponse()
        info = {"info": image_info_json(img)} if request.verbose else {}
        return pb.ImageStatusResponse(image=image_pb(img), info=info)
