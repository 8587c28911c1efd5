"""ctrd's built-in plugins, registered through the public ``ctrd.plugins`` entry point like any
third-party package (pyproject: ``builtin = "ctrd.plugins.builtin"``).

Each registration only wires: it imports its implementation inside ``init`` (so listing
plugins, e.g. ``ctrd config default``, imports nothing heavy) and hands it what it requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrd.config import setting
from ctrd.cri.config import CRIConfig
from ctrd.gc.config import SchedulerConfig
from ctrd.plugins.hookspec import hookimpl
from ctrd.plugins.registration import (CONTENT, EVENT, GC, GRPC, METADATA, RUNTIME_V2,
                                       SERVICE, SNAPSHOTTER, STREAMING, TRANSFER,
                                       InitContext, Registration)


# --- events -------------------------------------------------------------------------------

def _init_exchange(ic: InitContext):
    from ctrd.services.lazy import LazyObject

    def build():
        from ctrd.events.exchange import Exchange

        return Exchange()

    # Built when first published to or subscribed: its imports (protobuf, filters) are
    # ~50 ms that a daemon start does not need.
    return LazyObject(build)


def _init_events_service(ic: InitContext):
    from ctrd.services.lazy import LazyService

    exchange = ic.get_by_id(EVENT, "exchange")

    def build():
        from ctrd.services.events import EventsService

        return EventsService(exchange)

    return LazyService(build, ("containerd.services.events.v1.Events",),
                       ("containerd.services.events.ttrpc.v1.Events",))


# --- content --------------------------------------------------------------------------------

def _init_content(ic: InitContext):
    from ctrd.content.local import LocalStore

    return LocalStore(ic.root)


# --- snapshotters --------------------------------------------------------------------------

def _init_overlayfs(ic: InitContext):
    from ctrd.errdefs import SkipPlugin
    from ctrd.snapshots.overlay import OverlaySnapshotter, supported

    ic.meta.platforms.append(("linux", "amd64", ""))
    reason = supported(str(ic.root))
    if reason:
        raise SkipPlugin(f"overlayfs is not usable at {ic.root}: {reason}")
    return OverlaySnapshotter(str(ic.root), async_remove=True)  # as containerd: GC reclaims


def _init_native(ic: InitContext):
    from ctrd.snapshots.native import NativeSnapshotter

    ic.meta.platforms.append(("linux", "amd64", ""))
    return NativeSnapshotter(str(ic.root))


# --- metadata -----------------------------------------------------------------------------

def _positive(v: int) -> str | None:
    return None if v > 0 else "must be positive"


@dataclass
class MetadataConfig:
    """``[plugins."io.containerd.metadata.v1.lmdb"]``."""

    map_size: int = setting(1 << 32, check=_positive,
                            doc="LMDB map size in bytes: the metadata's maximum size "
                                "(address space, not disk)")


def _init_metadata(ic: InitContext):
    from ctrd.metadata.store import Metadata

    md = Metadata(str(ic.root / "meta.lmdb"), ic.get(CONTENT), map_size=ic.config.map_size)
    for name, snapshotter in ic.get_all(SNAPSHOTTER).items():
        md.add_snapshotter(name, snapshotter)
    return md


# --- garbage collection -------------------------------------------------------------------

async def _init_gc(ic: InitContext):
    from ctrd.gc.scheduler import Scheduler

    md = ic.get(METADATA)
    scheduler = Scheduler(md.collect, ic.config)
    md.db.on_mutation(scheduler.mutation)
    for k, v in vars(ic.config).items():
        ic.meta.exports[k] = str(v)
    scheduler.start()
    return scheduler


def _optional(ic: InitContext, type_: str):
    try:
        return ic.get(type_)
    except Exception:  # noqa: BLE001 - absent or failed: run without it
        return None


# --- namespaces ---------------------------------------------------------------------------

def _lazy(service: str, build):
    from ctrd.services.lazy import LazyService

    return LazyService(build, (service,))


def _init_namespaces_service(ic: InitContext):
    md, events = ic.get(METADATA), ic.get(EVENT)

    def build():
        from ctrd.services.namespaces import NamespacesService

        return NamespacesService(md.namespaces, events)

    return _lazy("containerd.services.namespaces.v1.Namespaces", build)


# --- content and leases services -------------------------------------------------------

def _init_content_service(ic: InitContext):
    md, events = ic.get(METADATA), ic.get(EVENT)

    def build():
        from ctrd.services.content import ContentService

        return ContentService(md.content, events)

    return _lazy("containerd.services.content.v1.Content", build)


def _init_snapshots_service(ic: InitContext):
    md, events = ic.get(METADATA), ic.get(EVENT)

    def build():
        from ctrd.services.snapshots import SnapshotsService

        return SnapshotsService(md.snapshotters, events)

    return _lazy("containerd.services.snapshots.v1.Snapshots", build)


def _init_images_service(ic: InitContext):
    md, events, gc = ic.get(METADATA), ic.get(EVENT), _optional(ic, GC)

    def build():
        from ctrd.services.images import ImagesService

        return ImagesService(md.images, events, gc)

    return _lazy("containerd.services.images.v1.Images", build)


def _init_containers_service(ic: InitContext):
    md, events, hooks = ic.get(METADATA), ic.get(EVENT), ic.hooks

    def build():
        from ctrd.metadata.containers import ContainerStore
        from ctrd.services.containers import ContainersService

        return ContainersService(ContainerStore(md.db), events, hooks)

    return _lazy("containerd.services.containers.v1.Containers", build)


def _positive_float(v: float) -> str | None:
    return None if v > 0 else "must be positive"


def _non_negative_int(v: int) -> str | None:
    return None if v >= 0 else "must not be negative"


@dataclass
class LocalTransferConfig:
    """``[plugins."io.containerd.transfer.v1.local"]``: containerd 2.x's local transferrer
    (pulls, pushes, imports and exports for the Transfer services)."""

    config_path: str = setting("", doc="registry hosts directory in containerd's certs.d "
                                        "layout (<dir>/<host>/hosts.toml); empty: none")
    progress_timeout: float = setting(30.0, check=_positive_float,
                                      doc="seconds a registry transfer may make no progress "
                                          "before it fails (ctrd's)")
    max_concurrent_downloads: int = setting(3, check=_non_negative_int)
    max_concurrent_uploaded_layers: int = setting(3, check=_non_negative_int)
    concurrent_layer_fetch_buffer: int = setting(0, check=_non_negative_int)
    max_concurrent_unpacks: int = setting(1, check=_non_negative_int)
    check_platform_supported: bool = setting(False)
    unpack_config: list[dict] = setting(default_factory=list,
                                        doc="[{platform, snapshotter, differ}] per platform")


def _init_stream_manager(ic: InitContext):
    from ctrd.streaming.manager import StreamManager

    return StreamManager()


def _init_local_transfer(ic: InitContext):
    from ctrd.transfer.context import TransferConfig

    c = ic.config
    return TransferConfig(config_path=c.config_path, progress_timeout=c.progress_timeout,
                          max_concurrent_downloads=c.max_concurrent_downloads,
                          max_concurrent_uploaded_layers=c.max_concurrent_uploaded_layers,
                          unpack_config=list(c.unpack_config),
                          check_platform_supported=c.check_platform_supported)


def _init_streaming(ic: InitContext):
    streams = ic.get_by_id(STREAMING, "manager")

    def build():
        from ctrd.services.streaming import StreamingService

        return StreamingService(streams)

    return _lazy("containerd.services.streaming.v1.Streaming", build)


def _init_transfer(ic: InitContext):
    md, tcfg = ic.get(METADATA), ic.get_by_id(TRANSFER, "local")
    streams = ic.get_by_id(STREAMING, "manager")
    events = ic.get_by_id(EVENT, "exchange")

    def build():
        from ctrd.services.transfer import TransferService
        from ctrd.services.transfer2 import ContainerdTransferService

        return _Both(TransferService(md, tcfg.config_path, tcfg.progress_timeout),
                     ContainerdTransferService(md, streams, tcfg, events))

    from ctrd.services.lazy import LazyService

    return LazyService(build, ("ctrd.v1.Transfer", "containerd.services.transfer.v1.Transfer"))


class _Both:
    """Two services built and registered together (one plugin serving both APIs)."""

    def __init__(self, *services) -> None:
        self.services = services

    def register_grpc(self, server) -> None:
        for s in self.services:
            s.register_grpc(server)


def _init_diff_service(ic: InitContext):
    md = ic.get(METADATA)

    def build():
        from ctrd.services.diff import DiffService

        return DiffService(md.content)

    return _lazy("containerd.services.diff.v1.Diff", build)


def _init_leases_service(ic: InitContext):
    md, gc = ic.get(METADATA), _optional(ic, GC)

    def build():
        from ctrd.services.leases import LeasesService

        return LeasesService(md.leases, gc)

    return _lazy("containerd.services.leases.v1.Leases", build)


# --- tasks: runtime v2 manager and the Tasks service --------------------------------------

@dataclass
class ShimSpec:
    """One ``[...task.shims."<runtime name>"]`` table."""

    binary: str = setting("", doc="shim binary: a name looked up next to ctrd's interpreter "
                                  "and on PATH, or a path")
    options: dict = setting(default_factory=dict,
                            doc="runtime options (containerd.runc.v1.Options fields, e.g. "
                                "BinaryName, Root, SystemdCgroup) used where a container "
                                "does not set them")


def _default_shims() -> dict:
    return {"io.containerd.runc.v2": ShimSpec("containerd-shim-ctrd-v2")}


@dataclass
class RuntimeConfig:
    """``[plugins."io.containerd.runtime.v2.task"]``."""

    shims: dict[str, ShimSpec] = setting(
        default_factory=_default_shims,
        doc="runtime names served by a given shim binary; other names resolve as in "
            "containerd (io.containerd.<x>.<v> -> containerd-shim-<x>-<v>)")


async def _init_task_manager(ic: InitContext):
    from ctrd.runtime.manager import TaskManager

    manager = TaskManager(str(ic.root), str(ic.state), ic.address, ic.ttrpc_address,
                          ic.get(EVENT), shims=ic.config.shims,
                          debug=ic.properties.get("debug", False))
    await manager.load()
    return manager


def _init_tasks_service(ic: InitContext):
    md, manager = ic.get(METADATA), ic.get(RUNTIME_V2)

    def build():
        from ctrd.metadata.containers import ContainerStore
        from ctrd.services.tasks import TasksService

        return TasksService(ContainerStore(md.db), manager)

    return _lazy("containerd.services.tasks.v1.Tasks", build)


# --- CRI ------------------------------------------------------------------------------------

class _CRIServices:
    """The CRI plugin's gRPC face: RuntimeService and ImageService over one core."""

    def __init__(self, runtime, image_service) -> None:
        from ctrd.cri.service import RuntimeService

        self.services = [RuntimeService(runtime), image_service]

    def register_grpc(self, server) -> None:
        for s in self.services:
            s.register_grpc(server)


async def _init_cri(ic: InitContext):
    from ctrd.cri.core import CRIRuntime

    md, manager, events = ic.get(METADATA), ic.get(RUNTIME_V2), ic.get(EVENT)
    gc = _optional(ic, GC)
    cfg = ic.config
    if cfg.containerd.snapshotter not in md.snapshotters:
        from ctrd.errdefs import FailedPrecondition

        raise FailedPrecondition(f"cri: snapshotter {cfg.containerd.snapshotter!r} is not "
                                 "loaded")
    runtime = CRIRuntime(md, manager, events, cfg, str(ic.root), str(ic.state), ic.hooks)
    await runtime.load()
    snap_root = str(ic.root.parent / f"io.containerd.snapshotter.v1.{cfg.containerd.snapshotter}")

    def build():
        from ctrd.cri.image_service import ImageService

        return _CRIServices(runtime, ImageService(md, cfg, snap_root, gc=gc))

    from ctrd.services.lazy import LazyService

    # Not warmed at idle: ~50 ms of imports (CRI protos, registry client) that would hold up
    # the first ctr call after boot; the kubelet's first call pays them once.
    return LazyService(build, ("runtime.v1.RuntimeService", "runtime.v1.ImageService"),
                       warm=False)


def _service(id_: str):
    """The init of a gRPC plugin that serves the service plugin ``id_``."""
    return lambda ic: ic.get_by_id(SERVICE, id_)


# --- introspection, version, health -------------------------------------------------------

def _init_introspection(ic: InitContext):
    plugins, root = ic.plugins, ic.root

    def build():
        from ctrd.services.introspection import IntrospectionService

        return IntrospectionService(plugins, root)

    return _lazy("containerd.services.introspection.v1.Introspection", build)


def _init_version(ic: InitContext):
    def build():
        from ctrd.services.version import VersionService

        return VersionService()

    return _lazy("containerd.services.version.v1.Version", build)


def _init_health(ic: InitContext):
    def build():
        from ctrd.services.health import HealthService

        return HealthService()

    return _lazy("grpc.health.v1.Health", build)


REGISTRATIONS = [
    Registration(CONTENT, "content", _init_content),
    Registration(SNAPSHOTTER, "native", _init_native),
    Registration(SNAPSHOTTER, "overlayfs", _init_overlayfs),
    Registration(EVENT, "exchange", _init_exchange),
    Registration(GRPC, "events", _init_events_service, requires=(EVENT,)),
    Registration(METADATA, "lmdb", _init_metadata, requires=(CONTENT, SNAPSHOTTER),
                 config=MetadataConfig),
    Registration(GC, "scheduler", _init_gc, requires=(METADATA,), config=SchedulerConfig),
    Registration(SERVICE, "namespaces-service", _init_namespaces_service,
                 requires=(METADATA, EVENT)),
    Registration(SERVICE, "content-service", _init_content_service,
                 requires=(METADATA, EVENT)),
    Registration(SERVICE, "snapshots-service", _init_snapshots_service,
                 requires=(METADATA, EVENT)),
    Registration(SERVICE, "leases-service", _init_leases_service, requires=(METADATA, GC)),
    Registration(SERVICE, "diff-service", _init_diff_service, requires=(METADATA,)),
    Registration(SERVICE, "images-service", _init_images_service,
                 requires=(METADATA, EVENT, GC)),
    Registration(SERVICE, "containers-service", _init_containers_service,
                 requires=(METADATA, EVENT)),
    Registration(RUNTIME_V2, "task", _init_task_manager, requires=(EVENT,),
                 config=RuntimeConfig),
    Registration(SERVICE, "tasks-service", _init_tasks_service,
                 requires=(METADATA, RUNTIME_V2)),
    Registration(GRPC, "namespaces", _service("namespaces-service"), requires=(SERVICE,)),
    Registration(GRPC, "content", _service("content-service"), requires=(SERVICE,)),
    Registration(GRPC, "leases", _service("leases-service"), requires=(SERVICE,)),
    Registration(GRPC, "snapshots", _service("snapshots-service"), requires=(SERVICE,)),
    Registration(GRPC, "diff", _service("diff-service"), requires=(SERVICE,)),
    Registration(GRPC, "images", _service("images-service"), requires=(SERVICE,)),
    Registration(GRPC, "tasks", _service("tasks-service"), requires=(SERVICE,)),
    Registration(GRPC, "cri", _init_cri, requires=(METADATA, RUNTIME_V2, EVENT, GC),
                 config=CRIConfig),
    Registration(GRPC, "containers", _service("containers-service"), requires=(SERVICE,)),
    Registration(STREAMING, "manager", _init_stream_manager),
    Registration(TRANSFER, "local", _init_local_transfer, requires=(METADATA,),
                 config=LocalTransferConfig),
    Registration(GRPC, "streaming", _init_streaming, requires=(STREAMING,)),
    Registration(GRPC, "transfer", _init_transfer, requires=(METADATA, TRANSFER, STREAMING,
                                                             EVENT)),
    Registration(GRPC, "introspection", _init_introspection),
    Registration(GRPC, "version", _init_version),
    Registration(GRPC, "healthcheck", _init_health),
]


@hookimpl
def ctrd_plugin_registrations():
    return REGISTRATIONS
