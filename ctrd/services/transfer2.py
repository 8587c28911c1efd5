"""containerd.services.transfer.v1.Transfer: containerd 2.x's one call for pull, push, tag,
import and export (ctr 2.x's ``images pull|push|tag|import|export``).

The edge only decodes and dispatches: the source and destination ``Any`` become transfer
objects (:mod:`ctrd.transfer.objects`), the pair picks an operation
(:mod:`ctrd.transfer.dispatch`), progress goes to the stream the options name (which is
closed when the call ends, as containerd closes it). (ctrd's own ``ctrd.v1.Transfer``, the
daemon-side pull ctrctl uses, is :mod:`ctrd.services.transfer`.)
"""

from __future__ import annotations

from google.protobuf import empty_pb2

from ctrd.api.containerd.services.transfer.v1 import transfer_pb2_grpc as pb_grpc
from ctrd.services.grpcutil import lease, namespace
from ctrd.streaming.manager import StreamManager
from ctrd.transfer import dispatch, objects
from ctrd.transfer.context import TransferConfig, TransferContext
from ctrd.transfer.progress import ProgressSender


class ContainerdTransferService(pb_grpc.TransferServicer):
    def __init__(self, md, streams: StreamManager, config: TransferConfig,
                 events=None) -> None:
        self.md = md
        self.streams = streams
        self.config = config
        self.events = events

    def register_grpc(self, server) -> None:
        pb_grpc.add_TransferServicer_to_server(self, server)

    async def Transfer(self, request, context):
        ns = namespace(context)
        stream = None
        if request.options.progress_stream:
            stream = self.streams.get(ns, request.options.progress_stream)
        progress = ProgressSender(stream)  # closes the stream whatever happens, as containerd
        try:
            src = objects.decode(request.source, "source")
            dst = objects.decode(request.destination, "destination")
            op = dispatch.operation(src, dst, request.source.type_url,
                                    request.destination.type_url)
            tc = TransferContext(ns=ns, lease=lease(context), md=self.md,
                                 streams=self.streams, config=self.config, progress=progress,
                                 events=self.events)
            await op(tc, src, dst)
        finally:
            await progress.close()
        return empty_pb2.Empty()
