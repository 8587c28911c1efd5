"""What a plugin is: a :class:`Registration` (declared), a :class:`Plugin` (its init result).

Lifecycle: a package's entry point (group ``ctrd.plugins``) implements the
``ctrd_plugin_registrations`` hook and returns Registrations; the registry
(:mod:`ctrd.plugins.registry`) orders them by ``requires``, decodes each one's config section,
calls ``init`` once with an :class:`InitContext`, and records the outcome as a :class:`Plugin`
(instance, or the error, or a skip). Instances that have ``register_grpc(server)`` /
``register_ttrpc(server)`` methods are then bound to the daemon's sockets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from ctrd.errdefs import NotFound, SkipPlugin

if TYPE_CHECKING:
    import pluggy

    from ctrd.plugins.registry import PluginSet

# containerd's plugin type strings.
INTERNAL = "io.containerd.internal.v1"
RUNTIME_V2 = "io.containerd.runtime.v2"
SERVICE = "io.containerd.service.v1"
GRPC = "io.containerd.grpc.v1"
TTRPC = "io.containerd.ttrpc.v1"
SNAPSHOTTER = "io.containerd.snapshotter.v1"
MONITOR = "io.containerd.monitor.v1"
DIFFER = "io.containerd.differ.v1"
METADATA = "io.containerd.metadata.v1"
CONTENT = "io.containerd.content.v1"
GC = "io.containerd.gc.v1"
LEASE = "io.containerd.lease.v1"
EVENT = "io.containerd.event.v1"
WARNING = "io.containerd.warning.v1"
STREAMING = "io.containerd.streaming.v1"
TRANSFER = "io.containerd.transfer.v1"
SANDBOX_STORE = "io.containerd.sandbox.store.v1"
SANDBOX_CONTROLLER = "io.containerd.sandbox.controller.v1"
PODSANDBOX = "io.containerd.podsandbox.controller.v1"

ALL = "*"


@dataclass(frozen=True)
class Registration:
    """A plugin declaration.

    ``requires`` lists plugin *types* (or the single entry ``"*"``: every other plugin) that
    must be initialised first. ``config`` is a dataclass type whose defaults are the plugin's
    default config; the init context carries the decoded instance. ``init`` may be a plain or
    an async function; it returns the plugin's instance, or raises (``SkipPlugin`` when the
    plugin does not apply on this host).
    """

    type: str
    id: str
    init: Callable[["InitContext"], Any | Awaitable[Any]]
    requires: tuple[str, ...] = ()
    config: type | None = None

    @property
    def uri(self) -> str:
        return f"{self.type}.{self.id}"


@dataclass
class Meta:
    """What a plugin tells clients about itself (Introspection.Plugins)."""

    platforms: list[tuple[str, str, str]] = field(default_factory=list)  # (os, arch, variant)
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)


@dataclass
class Plugin:
    """The outcome of one plugin's init: an instance or an error (a skip is an error too)."""

    registration: Registration
    config: Any
    meta: Meta
    instance: Any = None
    error: BaseException | None = None

    @property
    def status(self) -> str:
        """``ok``, ``skip`` or ``error`` (what ``ctr plugins ls`` shows)."""
        if self.error is None:
            return "ok"
        return "skip" if isinstance(self.error, SkipPlugin) else "error"

    def get(self) -> Any:
        """The instance, or raise the init error."""
        if self.error is not None:
            raise self.error
        return self.instance


class InitContext:
    """Everything a plugin's init receives.

    ``root``/``state`` are the plugin's own directories, ``<root>/<type>.<id>`` and
    ``<state>/<type>.<id>``, created (mode 0700) the first time they are asked for, so a plugin
    that keeps nothing on disk leaves nothing behind.
    """

    def __init__(self, registration: Registration, *, root: str, state: str, config: Any,
                 address: str, ttrpc_address: str, plugins: "PluginSet",
                 hooks: "pluggy.PluginManager", properties: dict[str, Any]) -> None:
        self.registration = registration
        self._root = Path(root) / registration.uri
        self._state = Path(state) / registration.uri
        self.config = config
        self.address = address
        self.ttrpc_address = ttrpc_address
        self.meta = Meta()
        self.hooks = hooks
        # Daemon-wide values plugins may read (e.g. "root", "state"); not for plugin output.
        self.properties = properties
        self._plugins = plugins

    @property
    def plugins(self) -> "PluginSet":
        """Every outcome so far (live: later plugins appear as they load)."""
        return self._plugins

    @property
    def root(self) -> Path:
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        return self._root

    @property
    def state(self) -> Path:
        os.makedirs(self._state, mode=0o700, exist_ok=True)
        return self._state

    def get(self, type_: str) -> Any:
        """The instance of the first initialised plugin of ``type_`` (its init error if it
        failed; NotFound if there is none)."""
        plugins = self._plugins.by_type(type_)
        if not plugins:
            raise NotFound(f"no plugins registered for {type_}")
        ok = [p for p in plugins if p.error is None]
        return (ok[0] if ok else plugins[0]).get()

    def get_by_id(self, type_: str, id_: str) -> Any:
        for p in self._plugins.by_type(type_):
            if p.registration.id == id_:
                return p.get()
        raise NotFound(f"no {type_} plugins with id {id_}")

    def get_all(self, type_: str) -> dict[str, Any]:
        """Every initialised plugin of ``type_`` by id (failed ones left out)."""
        return {p.registration.id: p.instance for p in self._plugins.by_type(type_)
                if p.error is None}


class GRPCService(Protocol):
    """A plugin instance that serves gRPC services on the daemon's main socket."""

    def register_grpc(self, server: Any) -> None: ...


class TTRPCService(Protocol):
    """A plugin instance that serves ttrpc services on the daemon's ttrpc socket (for shims)."""

    def register_ttrpc(self, server: Any) -> None: ...
