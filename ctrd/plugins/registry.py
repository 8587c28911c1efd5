"""The plugin registry: collects registrations, orders them by requirements, initialises them.

Lifecycle (one daemon start):

1. :meth:`Registry.discover` asks every entry point of group ``ctrd.plugins`` (ctrd's built-ins
   included) for its registrations through the ``ctrd_plugin_registrations`` hook;
2. :meth:`Registry.graph` drops disabled plugins and orders the rest so each plugin comes after
   every plugin of each type it requires (a cycle is a :class:`PluginGraphError` naming it);
3. :meth:`Registry.load` decodes each plugin's config section, runs its init once, and records
   the outcome in a :class:`PluginSet`; a failure is recorded and loading goes on, except for a
   plugin listed in ``required_plugins``, which stops the load with :class:`RequiredPluginError`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Iterable

import pluggy

from ctrd.config import ConfigError, ServerConfig, decode
from ctrd.errdefs import CtrdError, InvalidArgument
from ctrd.plugins import hookspec
from ctrd.plugins.discovery import GROUP, entry_points
from ctrd.plugins.registration import ALL, InitContext, Plugin, Registration

log = logging.getLogger("ctrd.plugins")


class PluginGraphError(InvalidArgument):
    """Registrations that cannot be ordered or registered (cycle, duplicate, bad requires)."""


class RequiredPluginError(CtrdError):
    """A plugin named in ``required_plugins`` failed or is not there: the daemon must stop."""

    kind = "required plugin"


class PluginSet:
    """Outcomes of plugin inits, in initialisation order."""

    def __init__(self) -> None:
        self.ordered: list[Plugin] = []
        self._by_type: dict[str, list[Plugin]] = {}

    def add(self, plugin: Plugin) -> None:
        self.ordered.append(plugin)
        self._by_type.setdefault(plugin.registration.type, []).append(plugin)

    def by_type(self, type_: str) -> list[Plugin]:
        return self._by_type.get(type_, [])

    def get(self, uri: str) -> Plugin | None:
        type_, _, id_ = uri.rpartition(".")
        return next((p for p in self.by_type(type_) if p.registration.id == id_), None)

    def __iter__(self):
        return iter(self.ordered)

    def __len__(self) -> int:
        return len(self.ordered)


def new_hook_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspec.PROJECT)
    pm.add_hookspecs(hookspec)
    return pm


class Registry:
    """Registrations known to one daemon (no global state: tests build their own)."""

    def __init__(self, hooks: pluggy.PluginManager | None = None) -> None:
        self.hooks = hooks or new_hook_manager()
        self._regs: dict[str, Registration] = {}

    @property
    def registrations(self) -> list[Registration]:
        return list(self._regs.values())

    def register(self, reg: Registration) -> None:
        if not reg.type or not reg.id:
            raise PluginGraphError(f"registration {reg!r}: type and id must be set")
        if "." in reg.id:
            # "<type>.<id>" must split unambiguously at its last dot.
            raise PluginGraphError(f"plugin {reg.uri}: id must not contain '.'")
        if ALL in reg.requires and len(reg.requires) != 1:
            raise PluginGraphError(f"plugin {reg.uri}: '*' must be its only requirement")
        if reg.uri in self._regs:
            raise PluginGraphError(f"plugin {reg.uri}: registered twice")
        self._regs[reg.uri] = reg

    def discover(self, group: str = GROUP, path: list[str] | None = None) -> list[str]:
        """Load every entry point of ``group`` into the hook manager, then collect their
        registrations. Returns a message per entry point that could not be loaded (a broken
        third-party package must not stop the daemon)."""
        problems = []
        for ep in entry_points(group, path):
            if self.hooks.has_plugin(ep.name) or self.hooks.is_blocked(ep.name):
                continue
            try:
                self.hooks.register(ep.load(), name=ep.name)
            except Exception as e:  # noqa: BLE001 - any import failure of foreign code
                problems.append(f"entry point {ep.name} = {ep.value} ({ep.dist}): {e!r}")
        for regs in self.hooks.hook.ctrd_plugin_registrations():
            for reg in regs or ():
                self.register(reg)
        return problems

    def graph(self, disabled: Iterable[str] = ()) -> list[Registration]:
        """Enabled registrations, each after every plugin of the types it requires.

        Disabled plugins (by URI, as containerd's v2 config) are left out; a requirement on a
        type no enabled plugin has is not an error here (the plugin's init finds out).
        """
        off = set(disabled)
        regs = [r for r in self._regs.values() if r.uri not in off]
        ordered: list[Registration] = []
        done: set[str] = set()
        visiting: list[str] = []

        def visit(reg: Registration) -> None:
            if reg.uri in done:
                return
            if reg.uri in visiting:
                cycle = visiting[visiting.index(reg.uri):] + [reg.uri]
                raise PluginGraphError("plugin dependency cycle: " + " -> ".join(cycle))
            visiting.append(reg.uri)
            for t in reg.requires:
                for dep in regs:
                    if dep.uri != reg.uri and (t == ALL or dep.type == t):
                        if t == ALL and ALL in dep.requires:
                            continue  # two "*" plugins do not depend on each other
                        visit(dep)
            visiting.pop()
            done.add(reg.uri)
            ordered.append(reg)

        for reg in regs:
            visit(reg)
        return ordered

    def default_configs(self) -> dict[str, Any]:
        """Each registration's default config object, by URI (``ctrd config default``)."""
        return {r.uri: r.config() for r in self._regs.values() if r.config is not None}

    async def load(self, config: ServerConfig, warnings: list[str] | None = None,
                   properties: dict[str, Any] | None = None) -> PluginSet:
        """Initialise every enabled plugin in order; see the module docstring."""
        warnings = warnings if warnings is not None else []
        for uri in config.plugins:
            if uri not in self._regs:
                warnings.append(f'plugins."{uri}": no such plugin; section ignored')
        plugins = PluginSet()
        required = set(config.required_plugins)
        for reg in self.graph(config.disabled_plugins):
            plugin_config = None
            if reg.config is not None:
                # A bad value fails the daemon, as containerd's config.Decode does.
                found: list[str] = []
                try:
                    plugin_config = decode(reg.config, config.plugins.get(reg.uri, {}),
                                           f'plugins."{reg.uri}"', found)
                except ConfigError as e:
                    raise ConfigError(config.rename(e.detail)) from None
                warnings += [config.rename(w) for w in found]
            elif config.plugins.get(reg.uri):
                warnings.append(f'plugins."{reg.uri}": this plugin takes no config')
            ic = InitContext(reg, root=config.root, state=config.state, config=plugin_config,
                             address=config.grpc.address, ttrpc_address=config.ttrpc_address,
                             plugins=plugins, hooks=self.hooks, properties=properties or {})
            log.debug("loading plugin", extra={"id": reg.uri, "type": reg.type})
            plugin = Plugin(reg, plugin_config, ic.meta)
            try:
                result = reg.init(ic)
                if inspect.isawaitable(result):
                    result = await result
                plugin.instance = result
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - recorded, reported by Introspection
                plugin.error = e
                if plugin.status == "skip":
                    log.info("skip loading plugin", extra={"id": reg.uri, "reason": str(e)})
                else:
                    log.warning("failed to load plugin", extra={"id": reg.uri, "error": str(e)},
                                exc_info=not isinstance(e, CtrdError))
            plugins.add(plugin)
            if reg.uri in required:
                if plugin.error is not None:
                    raise RequiredPluginError(f"load required plugin {reg.uri}: "
                                              f"{plugin.error}")
                required.discard(reg.uri)
        if required:
            raise RequiredPluginError(f"required plugin {', '.join(sorted(required))} "
                                      "not included (unknown or disabled)")
        return plugins
