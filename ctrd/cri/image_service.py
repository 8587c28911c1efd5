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
import threading

from ctrd.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc
from ctrd.cri.config import CRIConfig
from ctrd.cri.image_list import ImageList
from ctrd.cri.image_pull import NO_PROGRESS_TIMEOUT, ImagePull
from ctrd.cri.image_remove import ImageRemove
from ctrd.cri.image_status import ImageStatusRPC
from ctrd.cri.imagefs_info import ImageFsInfoRPC
from ctrd.cri.images import ImageIndex
from ctrd.durations import parse_seconds
from ctrd.images import manifest as m


class ImageService(ImagePull, ImageList, ImageStatusRPC, ImageRemove, ImageFsInfoRPC,
                   pb_grpc.ImageServiceServicer):
    """The ImageService over metadata ``md``. ``gc``: the GC scheduler a removal waits for
    (None: collect in-line). ``snapshotter_root``: what ImageFsInfo measures."""

    def __init__(self, md, config: CRIConfig, snapshotter_root: str, *, gc=None,
                 platform: m.Platform | None = None) -> None:
        self.md, self.config, self.snapshotter_root, self.gc = md, config, snapshotter_root, gc
        self.index = ImageIndex(md, platform)
        timeout = parse_seconds(config.image_pull_progress_timeout)
        self.progress_timeout = timeout if timeout > 0 else NO_PROGRESS_TIMEOUT
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self._fs_cache: dict = {}
        self._collect_lock = threading.Lock()

    def register_grpc(self, server) -> None:
        pb_grpc.add_ImageServiceServicer_to_server(self, server)
