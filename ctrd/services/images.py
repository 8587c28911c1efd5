"""containerd.services.images.v1.Images over the metadata image store; Delete with ``sync``
returns only after a garbage collection (``ctr images rm --sync``)."""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from ctrd.api.containerd.events import image_pb2 as events_pb
from ctrd.api.containerd.services.images.v1 import images_pb2 as pb
from ctrd.api.containerd.services.images.v1 import images_pb2_grpc as pb_grpc
from ctrd.api.containerd.types import descriptor_pb2
from ctrd.metadata.images import Descriptor, Image, ImageStore
from ctrd.services.content import _ts
from ctrd.services.grpcutil import namespace


def image_to_pb(img: Image) -> pb.Image:
    t = img.target
    return pb.Image(name=img.name, labels=img.labels, created_at=_ts(img.created_at),
                    updated_at=_ts(img.updated_at),
                    target=descriptor_pb2.Descriptor(media_type=t.media_type, digest=t.digest,
                                                     size=t.size, annotations=t.annotations))


def image_from_pb(p: pb.Image) -> Image:
    t = p.target
    return Image(p.name, Descriptor(t.media_type, t.digest, t.size, dict(t.annotations)),
                 dict(p.labels))


def _epoch(request) -> float | None:
    """The request's ``source_date_epoch`` in seconds (None: not set)."""
    if not request.HasField("source_date_epoch"):
        return None
    return request.source_date_epoch.ToNanoseconds() / 1e9


class ImagesService(pb_grpc.ImagesServicer):
    def __init__(self, images: ImageStore, events, gc) -> None:
        self.images = images
        self.events = events
        self.gc = gc

    def register_grpc(self, server) -> None:
        pb_grpc.add_ImagesServicer_to_server(self, server)

    async def Get(self, request, context):
        img = self.images.get(namespace(context), request.name)  # one record: on the loop
        return pb.GetImageResponse(image=image_to_pb(img))

    async def List(self, request, context):
        match = None
        if request.filters:
            from ctrd import filters

            f = filters.parse_all(*request.filters)
            match = lambda i: f.match(filters.adaptor_from(  # noqa: E731
                {"name": i.name, "target": {"digest": i.target.digest,
                                            "mediatype": i.target.media_type}}, i.labels))
        found = await asyncio.to_thread(self.images.list, namespace(context), match)
        return pb.ListImagesResponse(images=[image_to_pb(i) for i in found])

    async def Create(self, request, context):
        ns = namespace(context)
        img = await asyncio.to_thread(self.images.create, ns, image_from_pb(request.image),
                                      _epoch(request))
        self.events.publish(ns, "/images/create", events_pb.ImageCreate(
            name=img.name, labels=img.labels))
        return pb.CreateImageResponse(image=image_to_pb(img))

    async def Update(self, request, context):
        ns = namespace(context)
        img = await asyncio.to_thread(self.images.update, ns, image_from_pb(request.image),
                                      list(request.update_mask.paths), _epoch(request))
        self.events.publish(ns, "/images/update", events_pb.ImageUpdate(
            name=img.name, labels=img.labels))
        return pb.UpdateImageResponse(image=image_to_pb(img))

    async def Delete(self, request, context):
        ns = namespace(context)
        target = request.target.digest if request.HasField("target") else ""
        await asyncio.to_thread(self.images.delete, ns, request.name, target)
        self.events.publish(ns, "/images/delete", events_pb.ImageDelete(name=request.name))
        if request.sync and self.gc is not None:
            await self.gc.schedule_and_wait()
        return empty_pb2.Empty()
