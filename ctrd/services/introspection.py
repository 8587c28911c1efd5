"""containerd.services.introspection.v1.Introspection: the plugins, the server (UUID, pid, pid
namespace, deprecation warnings) and a plugin's extra info, as containerd 2.3.4 serves them
(``plugins/services/introspection``)."""

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


def _canonical_uuid(text: str) -> str:
    """``text`` as ``uuid.UUID(text)`` would print it (ValueError where it would raise):
    hex digits, with or without hyphens, braces or a ``urn:uuid:`` prefix."""
    h = text.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    if len(h) != 32:
        raise ValueError("badly formed hexadecimal UUID string")
    h = f"{int(h, 16):032x}"  # int() rejects non-hex the way UUID() does
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _uuid4() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())``."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return _canonical_uuid(b.hex())


def server_uuid(root: Path) -> str:
    """The daemon's UUID, made once and kept in ``<root>/uuid`` (a damaged file is replaced).

    Without the uuid module: it imports ``platform`` and more (bench/README.md, "Figures the
    code cites"), and this runs for the
    first ``ctr version`` after every start."""
    path = root / "uuid"
    try:
        return _canonical_uuid(path.read_text().strip())
    except (OSError, ValueError):
        pass
    value = _uuid4()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    os.replace(tmp, path)
    return value


def pid_namespace(pid: int | str = "self") -> int:
    """The inode of ``/proc/<pid>/ns/pid`` (what containerd reports as ``pidns``)."""
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def warnings_to_pb(warnings) -> list:
    """:class:`ctrd.deprecation.Warning` s as DeprecationWarning messages."""
    out = []
    for w in warnings:
        d = pb.DeprecationWarning(id=w.id, message=w.message)
        d.last_occurrence.FromNanoseconds(w.last_occurrence_ns)
        out.append(d)
    return out


class IntrospectionService(pb_grpc.IntrospectionServicer):
    """Serves every plugin's outcome, including its own (it sees the live PluginSet), and the
    deprecations reported to ``warnings`` (a :class:`ctrd.deprecation.Deprecations`)."""

    def __init__(self, plugins: PluginSet, root: Path, warnings=None) -> None:
        self.plugins = plugins
        self.root = root
        self.warnings = warnings
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
        return pb.ServerResponse(
            uuid=self._uuid, pid=os.getpid(), pidns=pid_namespace(),
            deprecations=warnings_to_pb(self.warnings.warnings() if self.warnings else ()))

    async def PluginInfo(self, request, context):
        """The plugin's entry and, when ``options`` is given, what the plugin itself says
        about them (containerd's pluginInfoProvider: the runtime plugin answers a
        RuntimeRequest with the shim's RuntimeInfo)."""
        p = self.plugins.get(f"{request.type}.{request.id}") if request.type else None
        if p is None or p.registration.type != request.type:
            raise errdefs.NotFound(f"plugin {request.type}.{request.id} not found")
        resp = pb.PluginInfoResponse(plugin=plugin_to_pb(p))
        if not request.HasField("options"):
            return resp
        if p.error is not None:
            raise errdefs.FailedPrecondition("cannot get extra info, plugin not successfully "
                                             "loaded")
        provider = getattr(p.instance, "plugin_info", None)
        if provider is None:
            raise errdefs.NotImplemented_("plugin does not provided extra information")
        extra = await provider(request.options)
        resp.extra.CopyFrom(extra)
        return resp
