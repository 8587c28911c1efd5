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
from ctrd.plugins.registration import (CONTENT, DIFFER, EVENT, GC, GRPC, METADATA, PODSANDBOX,
                                       RUNTIME_V2, SANDBOX_CONTROLLER, SANDBOX_STORE,
                                       SERVICE, SNAPSHOTTER, STREAMING, TRANSFER, WARNING,
                                       InitContext, Registration)


# --- events -------------------------------------------------------------------------------

def _init_exchange(ic: InitContext):
    from ctrd.services.lazy import LazyObject

    def build():
        from ctrd.events.exchange import Exchange

        return Exchange()

    # Built when first published to or subscribed: its imports (protobuf, filters) are
    # time a daemon start does not need (bench/README.md, "Figures the code cites").
    return LazyObject(build)


def _init_events_service(ic: InitContext):
    from ctrd.services.lazy import LazyService

    exchange = ic.get_by_id(EVENT, "exchange")

    def build():
        from ctrd.services.events import EventsService

        return EventsService(exchange)

    return LazyService(build, ("containerd.services.events.v1.Events",),
                       ("containerd.services.events.ttrpc.v1.Events",))


# --- deprecations ---------------------------------------------------------------------------

def _init_deprecations(ic: InitContext):
    from ctrd.deprecation import Deprecations

    warnings = Deprecations()
    for id_ in ic.properties.get("deprecations", ()):  # what loading the config found
        warnings.emit(id_)
    return warnings


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
    import os

    from ctrd.transfer import spool
    from ctrd.transfer.context import TransferConfig

    c = ic.config
    root = ic.properties.get("root", "")
    work_dir = os.path.join(root, ic.registration.uri) if root else ""
    if work_dir:
        spool.remove_stale(work_dir)  # a daemon that died mid-import left them
    return TransferConfig(config_path=c.config_path, progress_timeout=c.progress_timeout,
                          max_concurrent_downloads=c.max_concurrent_downloads,
                          max_concurrent_uploaded_layers=c.max_concurrent_uploaded_layers,
                          unpack_config=list(c.unpack_config),
                          check_platform_supported=c.check_platform_supported,
                          work_dir=work_dir)


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


def _non_negative_float(v: float) -> str | None:
    return None if v >= 0 else "must not be negative"


@dataclass
class DifferConfig:
    """``[plugins."io.containerd.differ.v1.walking"]``: the layer applier behind Diff.Apply,
    daemon-side pulls, imports and Transfer. Its unpack limits are ctrd's (containerd has
    none): see :mod:`ctrd.diff.limits` for the rule."""

    max_unpacked_bytes: int = setting(
        1 << 30, check=_non_negative_int,
        doc="a layer may unpack to max(this, max_expansion_ratio x its compressed size) "
            "bytes of tar; 0: no limit")
    max_expansion_ratio: float = setting(
        100.0, check=_non_negative_float,
        doc="uncompressed over compressed size a layer past max_unpacked_bytes may reach")
    min_free_bytes: int = setting(
        128 << 20, check=_non_negative_int,
        doc="bytes an unpack leaves free on the snapshot's filesystem; 0: no reserve")


def _init_walking_differ(ic: InitContext):
    from ctrd.diff import limits

    c = ic.config
    lim = limits.UnpackLimits(c.max_unpacked_bytes, float(c.max_expansion_ratio),
                              c.min_free_bytes)
    limits.configure(lim)  # every apply in this daemon reads them
    for k, v in vars(c).items():
        ic.meta.exports[k] = str(v)
    return lim


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
    ksm_pacing: bool = setting(
        True, doc="set ksmd's pace (/sys/kernel/mm/ksm/sleep_millisecs) fast while shims "
                  "start and slow at rest, when ksmd runs at the kernel's default pace "
                  "(ctrd/runtime/ksmpace.py); false leaves it alone")


async def _init_task_manager(ic: InitContext):
    from ctrd.runtime.manager import TaskManager

    warnings = _optional(ic, WARNING)
    if warnings is not None:
        from ctrd.deprecation import CGROUP_V1, cgroup_v1_host

        if cgroup_v1_host():  # as containerd 2.3.4's task manager
            warnings.emit(CGROUP_V1)
    from ctrd.runtime.ksmpace import KsmPacer

    pacer = KsmPacer(enabled=ic.config.ksm_pacing)
    pacer.open()
    manager = TaskManager(str(ic.root), str(ic.state), ic.address, ic.ttrpc_address,
                          ic.get(EVENT), shims=ic.config.shims,
                          debug=ic.properties.get("debug", False), pacer=pacer)
    await manager.load()
    return manager


def _init_tasks_service(ic: InitContext):
    md, manager, warnings = ic.get(METADATA), ic.get(RUNTIME_V2), _optional(ic, WARNING)

    def build():
        from ctrd.metadata.containers import ContainerStore
        from ctrd.services.tasks import TasksService

        return TasksService(ContainerStore(md.db), manager, warnings)

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
    warnings = _optional(ic, WARNING)
    if warnings is not None:
        from ctrd.cri.config import deprecated_settings

        for id_ in deprecated_settings(cfg):
            warnings.emit(id_)
        runtime.deprecation_source = warnings
    await runtime.load()
    snap_root = str(ic.root.parent / f"io.containerd.snapshotter.v1.{cfg.containerd.snapshotter}")

    def build():
        from ctrd.cri.image_service import ImageService

        return _CRIServices(runtime, ImageService(md, cfg, snap_root, gc=gc))

    from ctrd.services.lazy import LazyService

    # Not warmed at idle: imports (CRI protos, registry client; bench/README.md) that would hold up
    # the first ctr call after boot; the kubelet's first call pays them once.
    service = LazyService(build, ("runtime.v1.RuntimeService", "runtime.v1.ImageService"),
                          warm=False)
    # The core, for the podsandbox sandbox controller (an instance attribute: found without
    # building the lazy service).
    object.__setattr__(service, "runtime", runtime)
    return service


# --- sandboxes (containerd 2.x) ------------------------------------------------------------

def _init_sandbox_store(ic: InitContext):
    from ctrd.services.lazy import LazyObject

    md = ic.get(METADATA)

    def build():
        from ctrd.metadata.sandboxes import SandboxStore

        return SandboxStore(md.db)

    return LazyObject(build)


def _init_sandboxes_service(ic: InitContext):
    store = ic.get_by_id(SANDBOX_STORE, "local")

    def build():
        from ctrd.services.sandbox_store import SandboxStoreService

        return SandboxStoreService(store)

    return _lazy("containerd.services.sandbox.v1.Store", build)


async def _init_shim_sandboxer(ic: InitContext):
    import os

    root, state, manager = str(ic.root), str(ic.state), ic.get(RUNTIME_V2)

    def build():
        from ctrd.sandbox.shim import ShimController

        return ShimController(root, state, manager)

    # Shims of an earlier daemon to reconnect to: now. None (the usual start): built on
    # first use, so a daemon start does not import the controller.
    if any(os.listdir(os.path.join(state, ns)) for ns in os.listdir(state)
           if os.path.isdir(os.path.join(state, ns))):
        controller = build()
        await controller.load()
        return controller
    from ctrd.services.lazy import LazyObject

    return LazyObject(build)


def _init_podsandbox(ic: InitContext):
    from ctrd.services.lazy import LazyObject

    plugins = ic.plugins

    def cri_runtime():
        """The CRI plugin's core, looked up when first needed: the CRI plugin is a gRPC
        plugin initialised after this one (the controller service, also gRPC, needs us)."""
        p = plugins.get(f"{GRPC}.cri")
        if p is None or p.error is not None:
            from ctrd.errdefs import FailedPrecondition

            raise FailedPrecondition("podsandbox: the CRI plugin is not loaded"
                                     + (f": {p.error}" if p is not None else ""))
        return p.instance.runtime

    def build():
        from ctrd.sandbox.podsandbox import PodSandboxController

        return PodSandboxController(cri_runtime)

    return LazyObject(build)  # imported on first use, not at daemon start


def _init_sandbox_controllers(ic: InitContext):
    # by sandboxer name (the plugin ids); those whose init failed are left out
    controllers = {**ic.get_all(PODSANDBOX), **ic.get_all(SANDBOX_CONTROLLER)}
    if not controllers:
        from ctrd.errdefs import SkipPlugin

        raise SkipPlugin("no sandbox controllers initialized")
    events = ic.get(EVENT)

    def build():
        from ctrd.services.sandbox_controller import SandboxControllerService

        return SandboxControllerService(controllers, events)

    return _lazy("containerd.services.sandbox.v1.Controller", build)


def _service(id_: str):
    """The init of a gRPC plugin that serves the service plugin ``id_``."""
    return lambda ic: ic.get_by_id(SERVICE, id_)


# --- introspection, version, health -------------------------------------------------------

def _init_introspection(ic: InitContext):
    plugins, root, warnings = ic.plugins, ic.root, _optional(ic, WARNING)

    def build():
        from ctrd.services.introspection import IntrospectionService

        return IntrospectionService(plugins, root, warnings)

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
    Registration(WARNING, "deprecations", _init_deprecations),
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
    Registration(DIFFER, "walking", _init_walking_differ, config=DifferConfig),
    Registration(SERVICE, "diff-service", _init_diff_service, requires=(METADATA, DIFFER)),
    Registration(SERVICE, "images-service", _init_images_service,
                 requires=(METADATA, EVENT, GC)),
    Registration(SERVICE, "containers-service", _init_containers_service,
                 requires=(METADATA, EVENT)),
    Registration(RUNTIME_V2, "task", _init_task_manager, requires=(EVENT, WARNING),
                 config=RuntimeConfig),
    Registration(SERVICE, "tasks-service", _init_tasks_service,
                 requires=(METADATA, RUNTIME_V2, WARNING)),
    Registration(GRPC, "namespaces", _service("namespaces-service"), requires=(SERVICE,)),
    Registration(GRPC, "content", _service("content-service"), requires=(SERVICE,)),
    Registration(GRPC, "leases", _service("leases-service"), requires=(SERVICE,)),
    Registration(GRPC, "snapshots", _service("snapshots-service"), requires=(SERVICE,)),
    Registration(GRPC, "diff", _service("diff-service"), requires=(SERVICE,)),
    Registration(GRPC, "images", _service("images-service"), requires=(SERVICE,)),
    Registration(GRPC, "tasks", _service("tasks-service"), requires=(SERVICE,)),
    Registration(GRPC, "cri", _init_cri, requires=(METADATA, RUNTIME_V2, EVENT, GC, WARNING),
                 config=CRIConfig),
    Registration(GRPC, "containers", _service("containers-service"), requires=(SERVICE,)),
    Registration(STREAMING, "manager", _init_stream_manager),
    Registration(TRANSFER, "local", _init_local_transfer, requires=(METADATA,),
                 config=LocalTransferConfig),
    Registration(GRPC, "streaming", _init_streaming, requires=(STREAMING,)),
    Registration(GRPC, "transfer", _init_transfer, requires=(METADATA, TRANSFER, STREAMING,
                                                             EVENT)),
    Registration(SANDBOX_STORE, "local", _init_sandbox_store, requires=(METADATA,)),
    Registration(GRPC, "sandboxes", _init_sandboxes_service, requires=(SANDBOX_STORE,)),
    Registration(SANDBOX_CONTROLLER, "shim", _init_shim_sandboxer,
                 requires=(RUNTIME_V2, EVENT)),
    Registration(PODSANDBOX, "podsandbox", _init_podsandbox),
    Registration(GRPC, "sandbox-controllers", _init_sandbox_controllers,
                 requires=(PODSANDBOX, SANDBOX_CONTROLLER, EVENT)),
    Registration(GRPC, "introspection", _init_introspection, requires=(WARNING,)),
    Registration(GRPC, "version", _init_version),
    Registration(GRPC, "healthcheck", _init_health),
]


@hookimpl
def ctrd_plugin_registrations():
    return REGISTRATIONS
