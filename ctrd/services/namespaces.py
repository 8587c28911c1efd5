"""containerd.services.namespaces.v1.Namespaces over the metadata namespace store."""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from ctrd.api.containerd.events import namespace_pb2 as events_pb
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as pb
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from ctrd.errdefs import InvalidArgument
from ctrd.events.exchange import Exchange
from ctrd.metadata.namespaces import Namespace, NamespaceStore
from ctrd.services import grpcutil


def _caller_namespace(context, fallback: str) -> str:
    """containerd publishes create/update events in the caller's namespace (ctr sends
    "default"); a caller without one gets the event in the namespace it changed."""
    try:
        return grpcutil.namespace(context)
    except Exception:  # noqa: BLE001 - absent or invalid: not this call's problem
        return fallback


def _to_pb(ns: Namespace) -> pb.Namespace:
    return pb.Namespace(name=ns.name, labels=ns.labels)


class NamespacesService(pb_grpc.NamespacesServicer):
    def __init__(self, store: NamespaceStore, events: Exchange) -> None:
        self.store = store
        self.events = events

    def register_grpc(self, server) -> None:
        pb_grpc.add_NamespacesServicer_to_server(self, server)

    async def Get(self, request, context):
        ns = self.store.get(request.name)  # one record: on the loop (ctrd.metadata.db)
        return pb.GetNamespaceResponse(namespace=_to_pb(ns))

    async def List(self, request, context):
        found = await asyncio.to_thread(self.store.list)
        if request.filter:
            from ctrd import filters

            match = filters.parse_all(request.filter)
            found = [ns for ns in found
                     if match.match(filters.adaptor_from({"name": ns.name}, ns.labels))]
        return pb.ListNamespacesResponse(namespaces=[_to_pb(ns) for ns in found])

    async def Create(self, request, context):
        ns = await asyncio.to_thread(self.store.create, request.namespace.name,
                                     dict(request.namespace.labels))
        self.events.publish(_caller_namespace(context, ns.name), "/namespaces/create",
                            events_pb.NamespaceCreate(name=ns.name, labels=ns.labels))
        return pb.CreateNamespaceResponse(namespace=_to_pb(ns))

    async def Update(self, request, context):
        name, labels = request.namespace.name, dict(request.namespace.labels)
        paths = list(request.update_mask.paths)
        if paths:
            changes = {}
            for path in paths:
                if not path.startswith("labels."):
                    raise InvalidArgument(f"cannot update {path!r} field")
                key = path[len("labels."):]
                changes[key] = labels.get(key, "")
            ns = await asyncio.to_thread(self.store.set_labels, name, changes, False)
        else:
            ns = await asyncio.to_thread(self.store.set_labels, name, labels, True)
        # As containerd: the event carries the request's labels, not the result.
        self.events.publish(_caller_namespace(context, name), "/namespaces/update",
                            events_pb.NamespaceUpdate(name=name, labels=labels))
        return pb.UpdateNamespaceResponse(namespace=_to_pb(ns))

    async def Delete(self, request, context):
        await asyncio.to_thread(self.store.delete, request.name)
        self.events.publish(request.name, "/namespaces/delete",
                            events_pb.NamespaceDelete(name=request.name))
        return empty_pb2.Empty()
