"""ctrd.v1.Transfer: daemon-side pull with streamed progress (ctrctl pull; the CRI plugin
calls the same :func:`ctrd.images.pull.pull`)."""

from __future__ import annotations

import asyncio

from ctrd.api.containerd.types import descriptor_pb2
from ctrd.api.ctrd.v1 import images_pb2 as pb
from ctrd.api.ctrd.v1 import images_pb2_grpc as pb_grpc
from ctrd.images.pull import Progress, PullResult
from ctrd.services.grpcutil import namespace

PROGRESS_INTERVAL = 0.1  # seconds between progress messages


def _progress_pb(p: Progress, kinds: dict[str, str]) -> list[pb.BlobProgress]:
    return [pb.BlobProgress(digest=d, media_type=kinds.get(d, ""), total=total,
                            done=p.done.get(d, 0), status=p.status.get(d, "waiting"))
            for d, total in list(p.total.items())]


class TransferService(pb_grpc.TransferServicer):
    def __init__(self, md, hosts_dir: str = "", progress_timeout: float = 30.0) -> None:
        self.md = md
        self.hosts_dir = hosts_dir
        self.progress_timeout = progress_timeout

    def register_grpc(self, server) -> None:
        pb_grpc.add_TransferServicer_to_server(self, server)

    def _pull(self, ns: str, request, progress: Progress) -> PullResult:
        from ctrd.images.manifest import parse_platform
        from ctrd.images.pull import pull
        from ctrd.remotes.fetch import registry_fetcher

        name, root, fetcher = registry_fetcher(request.ref, plain_http=request.plain_http,
                                               username=request.username,
                                               secret=request.secret,
                                               hosts_dir=self.hosts_dir,
                                               progress_timeout=self.progress_timeout)
        platform = parse_platform(request.platform) if request.platform else None
        return pull(self.md, ns, name, root, fetcher,
                    snapshotter=request.snapshotter or "overlayfs", platform=platform,
                    progress=progress, unpack=not request.skip_unpack)

    async def Pull(self, request, context):
        ns = namespace(context)
        progress = Progress()
        task = asyncio.ensure_future(asyncio.to_thread(self._pull, ns, request, progress))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
                if not task.done():
                    yield pb.PullProgress(blobs=_progress_pb(progress, {}))
            result = task.result()
        finally:
            if not task.done():
                task.cancel()  # the client went away; the thread finishes its blob and stops
        t = result.target
        yield pb.PullProgress(
            blobs=_progress_pb(progress, {}), image=result.name, chain_id=result.chain_id,
            seconds=result.seconds,
            target=descriptor_pb2.Descriptor(media_type=t.media_type, digest=t.digest,
                                             size=t.size))
