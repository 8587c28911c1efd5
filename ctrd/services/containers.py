"""containerd.services.containers.v1.Containers over the metadata container store.

Create runs the ``ctrd_container_create`` hooks (:func:`run_create_hooks`) on an OCI JSON
spec before the record is stored, then publishes ``/containers/create``; Update and Delete
publish ``/containers/update`` and ``/containers/delete`` (containerd's event payloads).
List and ListStream take containerd's container filters: ``id``, ``image``,
``runtime.name``, ``labels.<key>`` (containerd's adaptor knows no other field).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

from google.protobuf import any_pb2, empty_pb2

from ctrd.api.containerd.events import container_pb2 as events_pb
from ctrd.api.containerd.services.containers.v1 import containers_pb2 as pb
from ctrd.api.containerd.services.containers.v1 import containers_pb2_grpc as pb_grpc
from ctrd.errdefs import CtrdError, InvalidArgument, quote
from ctrd.metadata.containers import AnyValue, Container, ContainerStore, Runtime, validate
from ctrd.services.content import _ts
from ctrd.services.grpcutil import namespace
from ctrd.typeurl import OCI_SPEC

log = logging.getLogger("ctrd.containers")

def _any_to_pb(a: AnyValue | None) -> any_pb2.Any | None:
    return None if a is None else any_pb2.Any(type_url=a.type_url, value=a.value)


def _any_from_pb(msg, field: str) -> AnyValue | None:
    if not msg.HasField(field):
        return None
    a = getattr(msg, field)
    return AnyValue(a.type_url, a.value)


def fill_record_pb(p, runtime: Runtime, spec: AnyValue | None,
                   extensions: dict[str, AnyValue]) -> None:
    """Set the fields a container and a sandbox message share: containerd always sends a
    runtime message (options only when set), a spec when there is one, the extensions."""
    p.runtime.name = runtime.name
    if runtime.options is not None:
        p.runtime.options.CopyFrom(_any_to_pb(runtime.options))
    if spec is not None:
        p.spec.CopyFrom(_any_to_pb(spec))
    for k, v in extensions.items():
        p.extensions[k].CopyFrom(_any_to_pb(v))


def container_to_pb(c: Container) -> pb.Container:
    p = pb.Container(id=c.id, labels=c.labels, image=c.image, snapshotter=c.snapshotter,
                     snapshot_key=c.snapshot_key, created_at=_ts(c.created_at),
                     updated_at=_ts(c.updated_at), sandbox=c.sandbox)
    fill_record_pb(p, c.runtime, c.spec, c.extensions)
    return p


def container_from_pb(p: pb.Container) -> Container:
    runtime = Runtime()
    if p.HasField("runtime"):
        runtime = Runtime(p.runtime.name, _any_from_pb(p.runtime, "options"))
    return Container(id=p.id, runtime=runtime, spec=_any_from_pb(p, "spec"),
                     labels=dict(p.labels), image=p.image, snapshotter=p.snapshotter,
                     snapshot_key=p.snapshot_key,
                     extensions={k: AnyValue(v.type_url, v.value)
                                 for k, v in p.extensions.items()},
                     sandbox=p.sandbox)


def is_oci_spec(a: AnyValue | None) -> bool:
    """An Any holding an OCI runtime spec as JSON (bare or ``type.googleapis.com/`` URL)."""
    return a is not None and (a.type_url == OCI_SPEC or a.type_url.endswith("/" + OCI_SPEC))


def run_create_hooks(hooks, ns: str, c: Container) -> Container:
    """Let every ``ctrd_container_create`` implementation adjust ``c``'s OCI spec.

    Implementations run in pluggy's call order; each sees the spec as the previous ones
    left it (changed in place, or replaced by the dict it returned). A spec that is not OCI
    JSON (another type URL, or bytes that are not a JSON object) is passed over. If nothing
    changed, the client's bytes are kept as they are; otherwise the spec is re-encoded as
    JSON. An implementation that raises fails the create: a :class:`CtrdError` keeps its kind,
    anything else reads as unknown; both name the plugin.
    """
    if hooks is None or not is_oci_spec(c.spec):
        return c
    impls = [i for i in hooks.hook.ctrd_container_create.get_hookimpls()
             if not (i.hookwrapper or i.wrapper)]
    if not impls:
        return c
    try:
        spec = json.loads(c.spec.value)
    except (ValueError, UnicodeDecodeError):
        return c
    if not isinstance(spec, dict):
        return c
    original = copy.deepcopy(spec)
    for impl in reversed(impls):  # pluggy calls the last registered first
        kwargs: dict[str, Any] = {"namespace": ns, "container": c, "spec": spec}
        try:
            result = impl.function(*[kwargs[a] for a in impl.argnames])
        except CtrdError as e:
            raise type(e)(f"container create hook {quote(impl.plugin_name)}: "
                          f"{e.detail or e.kind}") from e
        except Exception as e:  # noqa: BLE001 - a third party's bug fails only this create
            log.warning("container create hook %s failed", impl.plugin_name, exc_info=e)
            raise CtrdError(f"container create hook {quote(impl.plugin_name)}: "
                            f"{type(e).__name__}: {e}") from e
        if result is not None:
            if not isinstance(result, dict):
                raise CtrdError(f"container create hook {quote(impl.plugin_name)}: returned "
                                f"{type(result).__name__}, not a spec dict or None")
            spec = result
    if spec == original:
        return c
    try:
        value = json.dumps(spec, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise CtrdError(f"container create hooks left a spec that is not JSON: {e}") from e
    c.spec = AnyValue(c.spec.type_url, value)
    return c


def _matcher(filters_: list[str]):
    if not filters_:
        return None
    from ctrd import filters

    f = filters.parse_store_filters(filters_)

    def adapt(c: Container):
        def runtime(path: tuple[str, ...]) -> str | None:
            # containerd: runtime.name (and anything below it) is the name; runtime alone
            # or another subfield is absent.
            return (c.runtime.name or None) if path[:1] == ("name",) else None

        return filters.adaptor_from({"id": c.id, "image": c.image, "runtime": runtime},
                                    c.labels)

    return lambda c: f.match(adapt(c))


class ContainersService(pb_grpc.ContainersServicer):
    """``hooks`` is the daemon's pluggy manager (None: no create hooks)."""

    def __init__(self, containers: ContainerStore, events, hooks=None) -> None:
        self.containers = containers
        self.events = events
        self.hooks = hooks

    def register_grpc(self, server) -> None:
        pb_grpc.add_ContainersServicer_to_server(self, server)

    async def Get(self, request, context):
        c = self.containers.get(namespace(context), request.id)  # one record: on the loop
        return pb.GetContainerResponse(container=container_to_pb(c))

    async def _list(self, request, context) -> list[Container]:
        match = _matcher(list(request.filters))
        return await asyncio.to_thread(self.containers.list, namespace(context), match)

    async def List(self, request, context):
        found = await self._list(request, context)
        return pb.ListContainersResponse(containers=[container_to_pb(c) for c in found])

    async def ListStream(self, request, context):
        for c in await self._list(request, context):
            yield pb.ListContainerMessage(container=container_to_pb(c))

    def _create(self, ns: str, c: Container) -> Container:
        try:
            validate(c)  # hooks only see containers that could be stored
        except InvalidArgument as e:
            raise InvalidArgument(f"create container failed validation: {e.detail}") from None
        return self.containers.create(ns, run_create_hooks(self.hooks, ns, c))

    async def Create(self, request, context):
        ns = namespace(context)
        c = await asyncio.to_thread(self._create, ns, container_from_pb(request.container))
        ev = events_pb.ContainerCreate(id=c.id, image=c.image)
        ev.runtime.name = c.runtime.name
        if c.runtime.options is not None:
            ev.runtime.options.CopyFrom(_any_to_pb(c.runtime.options))
        self.events.publish(ns, "/containers/create", ev)
        return pb.CreateContainerResponse(container=container_to_pb(c))

    async def Update(self, request, context):
        if not request.container.id:
            raise InvalidArgument("Container.ID required")
        ns = namespace(context)
        c = await asyncio.to_thread(self.containers.update, ns,
                                    container_from_pb(request.container),
                                    list(request.update_mask.paths))
        self.events.publish(ns, "/containers/update", events_pb.ContainerUpdate(
            id=c.id, image=c.image, labels=c.labels, snapshot_key=c.snapshot_key))
        return pb.UpdateContainerResponse(container=container_to_pb(c))

    async def Delete(self, request, context):
        ns = namespace(context)
        await asyncio.to_thread(self.containers.delete, ns, request.id)
        self.events.publish(ns, "/containers/delete", events_pb.ContainerDelete(id=request.id))
        return empty_pb2.Empty()
