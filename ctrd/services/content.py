"""containerd.services.content.v1.Content over the namespaced content store.

Write follows containerd's session protocol (what ``ctr content ingest`` and ``ctr pull``
drive): the first message names the ref; each message is a STAT, WRITE or COMMIT and gets one
response carrying the writer's offset; a WRITE at an offset other than the current one is
OUT_OF_RANGE, except offset 0, which restarts the ingest; an ``expected`` digest that is
already present ends the session with ALREADY_EXISTS; COMMIT ends it.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from ctrd.api.containerd.events import content_pb2 as events_pb
from ctrd.api.containerd.services.content.v1 import content_pb2 as pb
from ctrd.api.containerd.services.content.v1 import content_pb2_grpc as pb_grpc
from ctrd.content.store import Info, Status, validate_digest
from ctrd.errdefs import InvalidArgument, NotFound
from ctrd.events.exchange import Exchange
from ctrd.metadata.content import ContentStore
from ctrd.services.grpcutil import lease, namespace

READ_CHUNK = 1 << 20  # as containerd's read buffer
LIST_BATCH = 100
INLINE_READ = 64 << 10  # blobs up to this size are read on the loop (Read)


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(digest=info.digest, size=info.size, created_at=_ts(info.created_at),
                   updated_at=_ts(info.updated_at), labels=info.labels)


def status_to_pb(st: Status) -> pb.Status:
    return pb.Status(ref=st.ref, offset=st.offset, total=st.total, expected=st.expected,
                     started_at=_ts(st.started_at), updated_at=_ts(st.updated_at))


def _info_matcher(filters_: list[str]):
    if not filters_:
        return None
    from ctrd import filters

    match = filters.parse_all(*filters_)
    return lambda info: match.match(filters.adaptor_from(
        {"digest": info.digest, "size": str(info.size)}, info.labels))


class ContentService(pb_grpc.ContentServicer):
    def __init__(self, store: ContentStore, events: Exchange) -> None:
        self.store = store
        self.events = events

    def register_grpc(self, server) -> None:
        pb_grpc.add_ContentServicer_to_server(self, server)

    async def Info(self, request, context):
        validate_digest(request.digest)
        info = self.store.info(namespace(context), request.digest)  # one record: on the loop
        return pb.InfoResponse(info=info_to_pb(info))

    async def Update(self, request, context):
        validate_digest(request.info.digest)
        info = await asyncio.to_thread(self.store.update, namespace(context),
                                       request.info.digest, dict(request.info.labels),
                                       list(request.update_mask.paths))
        return pb.UpdateResponse(info=info_to_pb(info))

    async def List(self, request, context):
        match = _info_matcher(list(request.filters))
        infos = await asyncio.to_thread(self.store.walk, namespace(context), match)
        for i in range(0, len(infos), LIST_BATCH):
            yield pb.ListContentResponse(info=[info_to_pb(x)
                                               for x in infos[i:i + LIST_BATCH]])

    async def Delete(self, request, context):
        validate_digest(request.digest)
        ns = namespace(context)
        await asyncio.to_thread(self.store.delete, ns, request.digest, lease(context))
        self.events.publish(ns, "/content/delete", events_pb.ContentDelete(digest=request.digest))
        return empty_pb2.Empty()

    async def Read(self, request, context):
        validate_digest(request.digest)
        if request.offset < 0:
            raise InvalidArgument(f"ReadContentRequest.Offset cannot be negative: "
                                  f"{request.offset}")
        if request.size < 0:
            raise InvalidArgument(f"ReadContentRequest.Size cannot be negative: {request.size}")
        ns = namespace(context)
        # A manifest, index or config (what clients read most, one after another: ``ctr
        # images ls`` reads three per image) is opened and read on the loop: a read of a few
        # KiB from the page cache costs less than the thread hop (~0.3 ms a call). Larger
        # blobs: opening and the first chunk in one worker-thread hop.
        if self.store.info(ns, request.digest).size <= INLINE_READ:
            reader, data = self._open_read(ns, request.digest, request.offset, request.size)
        else:
            reader, data = await asyncio.to_thread(self._open_read, ns, request.digest,
                                                   request.offset, request.size)
        try:
            if request.offset > reader.size:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, "read past object length "
                                    f"{reader.size} bytes")
            end = reader.size if request.size == 0 else min(reader.size,
                                                            request.offset + request.size)
            offset = request.offset
            while offset < end:
                if data is None:
                    data = await asyncio.to_thread(reader.read_at, offset,
                                                   min(READ_CHUNK, end - offset))
                if not data:
                    break
                yield pb.ReadContentResponse(offset=offset, data=data)
                offset += len(data)
                data = None
        finally:
            reader.close()

    def _open_read(self, ns: str, digest: str, offset: int, size: int):
        """The reader of ``digest`` and its first chunk from ``offset`` (None when the
        offset is past the end: the caller reports that)."""
        reader = self.store.reader(ns, digest)
        try:
            if offset > reader.size:
                return reader, None
            end = reader.size if size == 0 else min(reader.size, offset + size)
            return reader, reader.read_at(offset, min(READ_CHUNK, end - offset))
        except BaseException:
            reader.close()
            raise

    async def Status(self, request, context):
        st = await asyncio.to_thread(self.store.status, namespace(context), request.ref)
        return pb.StatusResponse(status=status_to_pb(st))

    async def ListStatuses(self, request, context):
        match = None
        if request.filters:
            from ctrd import filters

            f = filters.parse_all(*request.filters)
            match = lambda st: f.match(filters.adaptor_from(  # noqa: E731
                {"ref": st.ref, "expected": st.expected}))
        found = await asyncio.to_thread(self.store.list_statuses, namespace(context), match)
        return pb.ListStatusesResponse(statuses=[status_to_pb(s) for s in found])

    async def Abort(self, request, context):
        await asyncio.to_thread(self.store.abort, namespace(context), request.ref,
                                lease(context))
        return empty_pb2.Empty()

    async def Write(self, request_iterator, context):
        ns, lease_id = namespace(context), lease(context)
        it = request_iterator.__aiter__()
        try:
            req = await it.__anext__()
        except StopAsyncIteration:
            return
        if not req.ref:
            raise InvalidArgument("first message must have a reference")
        ref, total, expected = req.ref, req.total, req.expected
        if expected:
            validate_digest(expected)
        writer = await asyncio.to_thread(self.store.writer, ns, ref, total, expected, lease_id)
        try:
            while True:
                resp = pb.WriteContentResponse(action=req.action)
                st = writer.status()
                resp.offset = st.offset
                if req.expected:
                    validate_digest(req.expected)
                    expected = req.expected
                    try:
                        await asyncio.to_thread(self.store.info, ns, expected)
                    except NotFound:
                        pass
                    else:
                        await asyncio.to_thread(self._abort_quietly, writer, ns, ref)
                        await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                            f"blob with expected digest {expected} exists")
                if req.total > 0:
                    total = req.total
                if req.action == pb.STAT:
                    resp.digest = writer.digest()
                    resp.started_at.CopyFrom(_ts(st.started_at))
                    resp.updated_at.CopyFrom(_ts(st.updated_at))
                    resp.total = total
                elif req.action in (pb.WRITE, pb.COMMIT):
                    if req.offset > 0 and req.offset != st.offset:
                        await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                            f"write @{req.offset} must occur at current "
                                            f"offset {st.offset}")
                    if req.offset == 0 and st.offset > 0:
                        await asyncio.to_thread(writer.truncate, 0)
                        resp.offset = 0
                    if req.data:
                        n = await asyncio.to_thread(writer.write, req.data)
                        resp.offset += n
                    if req.action == pb.COMMIT:
                        await asyncio.to_thread(writer.commit, total, expected,
                                                dict(req.labels) or None)
                    resp.digest = writer.digest()
                    if req.action == pb.COMMIT:
                        # containerd 2.x's metadata writer publishes each committed blob
                        self.events.publish(ns, "/content/create", events_pb.ContentCreate(
                            digest=resp.digest, size=resp.offset))
                else:
                    raise InvalidArgument(f"unknown write action {req.action}")
                yield resp
                if req.action == pb.COMMIT:
                    return
                try:
                    req = await it.__anext__()
                except StopAsyncIteration:
                    return
        finally:
            await asyncio.to_thread(writer.close)

    def _abort_quietly(self, writer, ns: str, ref: str) -> None:
        writer.close()
        try:
            self.store.abort(ns, ref)
        except NotFound:
            pass
