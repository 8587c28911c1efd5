"""containerd.services.version.v1.Version."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ctrd import __version__
from ctrd.api.containerd.services.version.v1 import version_pb2 as pb
from ctrd.api.containerd.services.version.v1 import version_pb2_grpc as pb_grpc


@cache
def revision() -> str:
    """The git commit ctrd runs from, when it runs from a checkout (containerd reports its
    build's commit here); "" for an installed package without one."""
    git = Path(__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = git / ref
            if path.is_file():
                return path.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
            return ""
        return head
    except OSError:
        return ""


class VersionService(pb_grpc.VersionServicer):
    def register_grpc(self, server) -> None:
        pb_grpc.add_VersionServicer_to_server(self, server)

    async def Version(self, request, context):
        return pb.VersionResponse(version=__version__, revision=revision())
