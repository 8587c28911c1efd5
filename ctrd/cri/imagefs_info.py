"""ImageFsInfo: the snapshotter root's usage (bytes and inodes, sampled at most every few
seconds), ``mountpoint`` that root, ``timestamp`` when it was sampled (ns)."""

from __future__ import annotations

import asyncio
import time

from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.cri.images import fs_usage


class ImageFsInfoRPC:
    """Mixed into ImageService."""

    def fs_info(self) -> pb.FilesystemUsage:
        used, inodes = fs_usage(self.snapshotter_root, self._fs_cache)
        sampled = self._fs_cache.get(self.snapshotter_root, (time.monotonic(),))[0]
        ts = time.time_ns() - int(max(0.0, time.monotonic() - sampled) * 1e9)
        return pb.FilesystemUsage(
            timestamp=ts, fs_id=pb.FilesystemIdentifier(mountpoint=self.snapshotter_root),
            used_bytes=pb.UInt64Value(value=used), inodes_used=pb.UInt64Value(value=inodes))

    async def ImageFsInfo(self, request, context):
        usage = await asyncio.to_thread(self.fs_info)
        return pb.ImageFsInfoResponse(image_filesystems=[usage])
