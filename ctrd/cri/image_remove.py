"""RemoveImage: every name of the image deleted (unknown: success), then a garbage collection
waited for, as containerd's synchronous delete of the last name does."""

from __future__ import annotations

import asyncio

from ctrd.api.cri.runtime.v1 import api_pb2 as pb


class ImageRemove:
    """Mixed into ImageService."""

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

    async def RemoveImage(self, request, context):
        if await asyncio.to_thread(self.remove, request.image.image):
            if self.gc is not None:
                await self.gc.schedule_and_wait()
            else:
                await asyncio.to_thread(self.collect)
        return pb.RemoveImageResponse()
