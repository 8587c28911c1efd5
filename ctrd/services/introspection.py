"""containerd.services.introspection.v1.Introspection: the plugins and the server's UUID."""

from __future__ import annotations

import os
from pathlib import Path

from ctrd import errdefs
from ctrd.api.containerd.services.introspection.v1 import introspection_pb2 as pb
from ctrd.api.containerd.services.introspection.v1 import introspection_pb2_grpc as pb_grpc
from ctrd.api.containerd.types import platform_pb2
from ctrd.plugins.registration import Plugin
from ctrd.plugins.registry import PluginSet


def plugin_to_pb(p: Plugin) -> pb.Plugin:
    out = pb.Plugin(type=p.registration.type, id=p.registration.id,
                    requires=list(p.registration.requires),
                    platforms=[platform_pb2.Platform(os=o, architecture=a, variant=v)
                               for o, a, v in p.meta.platforms],
                    exports=p.meta.exports, capabilities=p.meta.capabilities)
    if p.error is not None:
        code, message = errdefs.to_status(p.error)
        out.init_err.code = code
        out.init_err.message = message
    return out


def server_uuid(root: Path) -> str:
    """The daemon's UUID, made once and kept in ``<root>/uuid`` (a damaged file is replaced)."""
    import uuid  # only here: it drags in `platform`, a few ms of every start-up

    path = root / "uuid"
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError):
        pass
    value = str(uuid.uuid4())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    os.replace(tmp, path)
    return value


class IntrospectionService(pb_grpc.IntrospectionServicer):
    """Serves every plugin's outcome, including its own (it sees the live PluginSet)."""

    def __init__(self, plugins: PluginSet, root: Path) -> None:
        self.plugins = plugins
        self.root = root
        self._uuid: str | None = None

    def register_grpc(self, server) -> None:
        pb_grpc.add_IntrospectionServicer_to_server(self, server)

    async def Plugins(self, request, context):
        selected = list(self.plugins)
        if request.filters:
            from ctrd import filters

            match = filters.parse_all(*request.filters)
            selected = [p for p in selected if match.match(filters.adaptor_from(
                {"type": p.registration.type, "id": p.registration.id}))]
        return pb.PluginsResponse(plugins=[plugin_to_pb(p) for p in selected])

    async def Server(self, request, context):
        if self._uuid is None:
            self._uuid = server_uuid(self.root)
        return pb.ServerResponse(uuid=self._uuid)
