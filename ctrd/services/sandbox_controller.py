"""containerd.services.sandbox.v1.Controller: every call dispatched on its ``sandboxer`` to
the controller of that name (containerd's ``plugins/services/sandbox/controller_service.go``).

An empty sandboxer is InvalidArgument (``sandbox controller name can not be empty``), an
unknown one NotFound (``failed to get sandbox controller by <name>``). Create publishes
``/sandboxes/create``, Start ``/sandboxes/start``, Wait ``/sandboxes/exit`` (containerd's
events, in containerd's places: the exit is published by whoever waited).
"""

from __future__ import annotations

from google.protobuf import any_pb2

from ctrd.api.containerd.events import sandbox_pb2 as events_pb
from ctrd.api.containerd.services.sandbox.v1 import sandbox_pb2 as pb
from ctrd.api.containerd.services.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from ctrd.api.containerd.types import metrics_pb2, platform_pb2
from ctrd.errdefs import InvalidArgument, NotFound
from ctrd.metadata.sandboxes import Sandbox
from ctrd.sandbox.controller import Controller, CreateOptions
from ctrd.services.grpcutil import namespace
from ctrd.services.sandbox_store import sandbox_from_pb, ts_ns


class SandboxControllerService(pb_grpc.ControllerServicer):
    """``controllers`` maps sandboxer names to :class:`Controller` objects."""

    def __init__(self, controllers: dict[str, Controller], events) -> None:
        self.controllers = controllers
        self.events = events

    def register_grpc(self, server) -> None:
        pb_grpc.add_ControllerServicer_to_server(self, server)

    def _controller(self, name: str) -> Controller:
        if not name:
            raise InvalidArgument("sandbox controller name can not be empty")
        c = self.controllers.get(name)
        if c is None:
            raise NotFound(f"failed to get sandbox controller by {name}")
        return c

    async def Create(self, request, context):
        ns = namespace(context)
        c = self._controller(request.sandboxer)
        sb = (sandbox_from_pb(request.sandbox) if request.HasField("sandbox")
              else Sandbox(id=request.sandbox_id))
        opts = CreateOptions(rootfs=list(request.rootfs),
                             options=request.options if request.HasField("options") else None,
                             netns_path=request.netns_path,
                             annotations=dict(request.annotations))
        await c.create(ns, sb, opts)
        self.events.publish(ns, "/sandboxes/create",
                            events_pb.SandboxCreate(sandbox_id=request.sandbox_id))
        return pb.ControllerCreateResponse(sandbox_id=request.sandbox_id)

    async def Start(self, request, context):
        ns = namespace(context)
        inst = await self._controller(request.sandboxer).start(ns, request.sandbox_id)
        self.events.publish(ns, "/sandboxes/start",
                            events_pb.SandboxStart(sandbox_id=request.sandbox_id))
        # containerd's service answers these four (address, version and spec stay within
        # the daemon).
        return pb.ControllerStartResponse(sandbox_id=inst.sandbox_id, pid=inst.pid,
                                          created_at=ts_ns(inst.created_at),
                                          labels=inst.labels)

    async def Platform(self, request, context):
        p = await self._controller(request.sandboxer).platform(namespace(context),
                                                               request.sandbox_id)
        return pb.ControllerPlatformResponse(platform=platform_pb2.Platform(
            os=p.os, architecture=p.architecture, variant=p.variant))

    async def Stop(self, request, context):
        await self._controller(request.sandboxer).stop(namespace(context), request.sandbox_id,
                                                       float(request.timeout_secs))
        return pb.ControllerStopResponse()

    async def Wait(self, request, context):
        ns = namespace(context)
        ex = await self._controller(request.sandboxer).wait(ns, request.sandbox_id)
        self.events.publish(ns, "/sandboxes/exit", events_pb.SandboxExit(
            sandbox_id=request.sandbox_id, exit_status=ex.exit_status,
            exited_at=ts_ns(ex.exited_at)))
        return pb.ControllerWaitResponse(exit_status=ex.exit_status,
                                         exited_at=ts_ns(ex.exited_at))

    async def Status(self, request, context):
        st = await self._controller(request.sandboxer).status(
            namespace(context), request.sandbox_id, request.verbose)
        extra = st.extra if st.extra is not None else any_pb2.Any()
        return pb.ControllerStatusResponse(sandbox_id=st.sandbox_id, pid=st.pid,
                                           state=st.state, info=st.info,
                                           created_at=ts_ns(st.created_at),
                                           exited_at=ts_ns(st.exited_at), extra=extra)

    async def Shutdown(self, request, context):
        await self._controller(request.sandboxer).shutdown(namespace(context),
                                                           request.sandbox_id)
        return pb.ControllerShutdownResponse()

    async def Metrics(self, request, context):
        m = await self._controller(request.sandboxer).metrics(namespace(context),
                                                              request.sandbox_id)
        return pb.ControllerMetricsResponse(metrics=m if m is not None else
                                            metrics_pb2.Metric())

    async def Update(self, request, context):
        c = self._controller(request.sandboxer)
        if not request.HasField("sandbox"):
            raise InvalidArgument("sandbox can not be nil")
        await c.update(namespace(context), request.sandbox_id,
                       sandbox_from_pb(request.sandbox), list(request.fields))
        return pb.ControllerUpdateResponse()
