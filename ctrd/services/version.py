"""containerd.services.version.v1.Version."""

from __future__ import annotations

from ctrd import __version__
from ctrd.api.containerd.services.version.v1 import version_pb2 as pb
from ctrd.api.containerd.services.version.v1 import version_pb2_grpc as pb_grpc

REVISION = ""


class VersionService(pb_grpc.VersionServicer):
    def register_grpc(self, server) -> None:
        pb_grpc.add_VersionServicer_to_server(self, server)

    async def Version(self, request, context):
        return pb.VersionResponse(version=__version__, revision=REVISION)
