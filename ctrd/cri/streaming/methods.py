"""RuntimeService methods of the streaming side (mixed into
:class:`ctrd.cri.service.RuntimeService`, whose ``self.rt`` is the CRI core).

The streaming server starts with the first Exec/Attach/PortForward call, on
``stream_server_address``:``stream_server_port`` (port "0": a free port) and lives as long as
the daemon. GetContainerEvents streams the core's container lifecycle events until the
client goes away (its subscription is dropped then).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from ctrd import errdefs
from ctrd.durations import parse_seconds

log = logging.getLogger("ctrd.cri.streaming")

_EVENT_TYPES = {"created": 0, "started": 1, "stopped": 2, "deleted": 3}


def _stream_address(address: str) -> str:
    """containerd resolves an empty stream_server_address to the node's address."""
    if address:
        return address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class StreamingMethods:
    _streaming = None
    _streaming_lock: asyncio.Lock | None = None

    async def streaming_server(self):
        """The running streaming server (started on first use)."""
        if self._streaming is not None:
            return self._streaming
        if self._streaming_lock is None:
            self._streaming_lock = asyncio.Lock()
        async with self._streaming_lock:
            if self._streaming is None:
                from ctrd.cri.streaming.backend import CRIBackend
                from ctrd.cri.streaming.server import StreamingServer

                cfg = self.rt.config
                try:
                    port = int(cfg.stream_server_port or "0")
                except ValueError:
                    raise errdefs.InvalidArgument(
                        f"stream_server_port {cfg.stream_server_port!r} is not a port") from None
                if cfg.enable_tls_streaming:
                    log.warning("enable_tls_streaming is not supported: serving plain HTTP")
                # empty: containerd's default (the Kubernetes streaming server's 4 hours)
                idle = parse_seconds(cfg.stream_idle_timeout or "4h")
                server = StreamingServer(CRIBackend(self.rt),
                                         _stream_address(cfg.stream_server_address), port,
                                         idle_timeout=idle)
                await server.start()
                self._streaming = server
        return self._streaming

    async def Exec(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        server = await self.streaming_server()
        server.backend.check_container(request.container_id)
        return pb.ExecResponse(url=server.get_exec(request))

    async def Attach(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        server = await self.streaming_server()
        server.backend.check_container(request.container_id)
        return pb.AttachResponse(url=server.get_attach(request))

    async def PortForward(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        server = await self.streaming_server()
        server.backend.check_sandbox(request.pod_sandbox_id)
        return pb.PortForwardResponse(url=server.get_port_forward(request))

    async def GetContainerEvents(self, request, context):
        from ctrd.api.cri.runtime.v1 import api_pb2 as pb

        q = self.rt.subscribe_container_events()
        try:
            while True:
                kind, cid, sid, ts = await q.get()
                yield await self._container_event(pb, kind, cid, sid, ts)
        finally:
            self.rt.unsubscribe_container_events(q)

    async def _container_event(self, pb, kind: str, cid: str, sid: str, ts: int):
        ev = pb.ContainerEventResponse(container_id=cid,
                                       container_event_type=_EVENT_TYPES[kind], created_at=ts)
        try:
            resp = await self.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid),
                                               None)
            ev.pod_sandbox_status.CopyFrom(resp.status)
        except errdefs.NotFound:
            pass
        for cmeta, _ in self.rt.records.containers_of(sid):
            try:
                resp = await self.ContainerStatus(
                    pb.ContainerStatusRequest(container_id=cmeta.id), None)
            except errdefs.NotFound:
                continue
            ev.containers_statuses.append(resp.status)
        return ev

