"""containerd.services.events.v1.Events (gRPC) and containerd.services.events.ttrpc.v1.Events
(ttrpc, what shims call at ``TTRPC_ADDRESS``) over the daemon's event exchange.

- Publish: the namespace is the call's (``containerd-namespace``), required; the event is an
  ``Any`` carried as is (validated as :meth:`Exchange.publish` does).
- Forward (both transports): an Envelope made by someone else, validated by
  :meth:`Exchange.forward` (namespace, topic, timestamp, event).
- Subscribe: a server stream of Envelopes from every namespace (as containerd: the call's
  namespace does not restrict it; filter on ``namespace==...`` for that), with containerd's
  filters. A filter that does not parse is InvalidArgument (containerd sends the same
  message with code Unknown). A subscriber that falls too far behind gets Unavailable; when
  the daemon stops, open streams end with Unavailable at once instead of holding shutdown
  for the grace period.
"""

from __future__ import annotations

from google.protobuf import empty_pb2

from ctrd import errdefs
from ctrd.api.containerd.services.events.v1 import events_pb2 as pb
from ctrd.api.containerd.services.events.v1 import events_pb2_grpc as pb_grpc
from ctrd.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_pb
from ctrd.events.exchange import Envelope, Exchange, Subscription
from ctrd.services import grpcutil


def _prefixed(prefix: str, err: errdefs.CtrdError) -> errdefs.CtrdError:
    """``err`` of the same kind, its message prefixed (as containerd wraps errors)."""
    return errdefs.from_status(err.code, f"{prefix}: {err}")


def _forward(exchange: Exchange, request) -> empty_pb2.Empty:
    if not request.HasField("envelope"):
        raise errdefs.InvalidArgument("envelope must be set")
    exchange.forward(Envelope.from_proto(request.envelope))
    return empty_pb2.Empty()


class TTRPCEventsService:
    """``containerd.services.events.ttrpc.v1.Events``: Forward only."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    async def Forward(self, request, ctx):
        return _forward(self.exchange, request)


class EventsService(pb_grpc.EventsServicer):
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.ttrpc = TTRPCEventsService(exchange)
        self._streams: set[Subscription] = set()
        self._serving = True

    def register_grpc(self, server) -> None:
        pb_grpc.add_EventsServicer_to_server(self, server)

    def register_ttrpc(self, server) -> None:
        server.register_service(ttrpc_pb.DESCRIPTOR.services_by_name["Events"], self.ttrpc)

    async def set_serving(self, serving: bool) -> None:
        self._serving = serving
        if not serving:
            self.exchange.close_subscriptions(
                errdefs.Unavailable("the daemon is shutting down"), list(self._streams))

    async def Publish(self, request, context):
        try:
            namespace = grpcutil.namespace(context)
        except errdefs.CtrdError as e:
            raise _prefixed("failed publishing event", e) from None
        self.exchange.publish(namespace, request.topic,
                              request.event if request.HasField("event") else None)
        return empty_pb2.Empty()

    async def Forward(self, request, context):
        return _forward(self.exchange, request)

    async def Subscribe(self, request, context):
        if not self._serving:
            raise errdefs.Unavailable("the daemon is shutting down")
        try:
            sub = self.exchange.subscribe(*request.filters)
        except errdefs.CtrdError as e:
            raise _prefixed("subscription error", e) from None
        self._streams.add(sub)
        try:
            while True:
                try:
                    env = await sub.__anext__()
                except StopAsyncIteration:
                    return
                except errdefs.CtrdError as e:
                    raise _prefixed("subscription error", e) from None
                yield env.to_proto(pb.Envelope)
        finally:
            self._streams.discard(sub)
            sub.close()
