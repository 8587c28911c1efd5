"""Daemon configuration: containerd's TOML (versions 1 to 4), decoded into typed dataclasses.

Contract:
- :func:`load` reads a file (or nothing: defaults) into a :class:`ServerConfig`, with the files
  its ``imports`` name merged in as containerd does; every version is brought to one shape
  first (:mod:`ctrd.config_versions`), a version 1 or 2 file reported as a deprecation. Top-level keys
  are containerd's (``root``, ``state``, ``[grpc]``, ``[ttrpc]``, ``[debug]``,
  ``disabled_plugins``, ``required_plugins``, ``[plugins."<type>.<id>"]``); plugin sections
  stay raw until the registry decodes each one into that plugin's own config dataclass with
  :func:`decode`.
- An unknown key is a warning (collected, logged by the daemon; containerd ignores them too); a
  value of the wrong type or out of range is a :class:`ConfigError` naming the key.
- :func:`encode` turns a config dataclass back into TOML-ready dicts (``ctrd config default``).

Config dataclasses declare their TOML names and checks with :func:`setting`. Give each one a
docstring: ``@dataclass`` builds a missing one from ``inspect.signature``, paid at every
daemon start.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ctrd.config_keys import ConfigError, join_key


DEFAULT_ROOT = "/var/lib/ctrd"
DEFAULT_STATE = "/run/ctrd"
DEFAULT_ADDRESS = "/run/ctrd/ctrd.sock"
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")


def setting(default: Any = dataclasses.MISSING, *, key: str | None = None, doc: str = "",
            check: Callable[[Any], str | None] | None = None,
            default_factory: Any = dataclasses.MISSING, text: bool = False) -> Any:
    """A config field. ``key`` is its TOML name when it differs from the attribute name;
    ``check`` returns an error text for a value of the right type that is still unusable.
    ``text``: a TOML integer or float given for this string field is read as its text, as
    go-toml hands a number to a Go ``TextUnmarshaler`` (containerd's ``tomlext.Duration``
    fields: ``0`` is a duration there, ``100`` fails the check for its missing unit)."""
    meta = {"key": key, "doc": doc, "check": check, "text": text}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"
    return check


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"
    return check


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must not be negative"


@dataclass
class GRPCConfig:
    """``[grpc]``: the API socket."""

    address: str = setting(DEFAULT_ADDRESS, doc="unix socket path of the gRPC API")
    uid: int = setting(0, check=_non_negative, doc="owner of the socket")
    gid: int = setting(0, check=_non_negative, doc="group of the socket (mode 0660)")
    max_recv_message_size: int = setting(16 << 20, check=_non_negative)
    max_send_message_size: int = setting(16 << 20, check=_non_negative)


@dataclass
class TTRPCConfig:
    """``[ttrpc]``: the socket shims publish events to."""

    address: str = setting("", doc='ttrpc socket for shims; "" means "<grpc address>.ttrpc"')
    uid: int = setting(0, check=_non_negative)
    gid: int = setting(0, check=_non_negative)


@dataclass
class DebugConfig:
    """``[debug]``: logging."""

    level: str = setting("info", check=_one_of("", *LOG_LEVELS), doc='"": info')
    format: str = setting("text", check=_one_of("", "text", "json"), doc='"": text')


@dataclass
class MetricsConfig:
    """``[metrics]`` (version 3; version 4: ``io.containerd.server.v1.metrics`` and
    ``io.containerd.metrics.v1.grpc-prometheus``): Prometheus metrics, off when no address."""

    address: str = setting("", doc='host:port serving GET /v1/metrics; "" serves none')
    grpc_histogram: bool = setting(False, doc="gRPC handling-time histograms")


@dataclass
class ServerConfig:
    """The whole file; plugin sections stay raw tables until the registry decodes them."""

    version: int = setting(3, check=_between(1, 4),
                           doc="config schema version: 1 and 2 (containerd 1.x, migrated "
                               "in memory), 3 and 4 (containerd 2.x)")
    root: str = setting(DEFAULT_ROOT, doc="persistent data: content, metadata, snapshots")
    state: str = setting(DEFAULT_STATE, doc="ephemeral data: sockets, bundles, FIFOs")
    grpc: GRPCConfig = setting(default_factory=GRPCConfig)
    ttrpc: TTRPCConfig = setting(default_factory=TTRPCConfig)
    debug: DebugConfig = setting(default_factory=DebugConfig)
    metrics: MetricsConfig = setting(default_factory=MetricsConfig)
    disabled_plugins: list[str] = setting(default_factory=list)
    required_plugins: list[str] = setting(default_factory=list)
    plugins: dict[str, dict] = setting(default_factory=dict)
    imports: list[str] = setting(default_factory=list,
                                 doc="more config files (globs; relative to this file's "
                                     "directory) merged over this one")
    # Not from the file (no TOML key): what loading it found.
    deprecations: list[str] = field(default_factory=list, metadata={"internal": True})
    renames: Any = field(default=None, metadata={"internal": True})

    def rename(self, text: str) -> str:
        """A message about a plugin section with the key named as the file spells it (the
        CRI sections of a version 3 file are folded into one before they are decoded)."""
        return self.renames.apply(text) if self.renames is not None else text

    @property
    def ttrpc_address(self) -> str:
        return self.ttrpc.address or self.grpc.address + ".ttrpc"


@dataclass
class LoadResult:
    """What :func:`load` read, and the warnings it had."""

    config: ServerConfig
    warnings: list[str]


def _read_toml(path: Path) -> dict:
    import tomllib

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not UTF-8 text at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"config {path}: invalid TOML: nested too deeply") from None


def _imports(parent: Path, data: dict) -> list[Path]:
    """The files ``data``'s ``imports`` names (containerd's resolveImports: relative to the
    parent's directory, globs expanded, a glob that matches nothing is no error)."""
    import glob
    import os

    names = data.get("imports", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("imports: expected an array of strings")
    out = []
    for name in names:
        p = os.path.normpath(os.path.join(parent.parent, name))
        out += [Path(m) for m in sorted(glob.glob(p))] if "*" in p else [Path(p)]
    return out


def _merge(to: dict, frm: dict) -> None:
    """Merge an imported file over ``to`` as containerd's mergeConfig: scalars replaced,
    arrays joined (no duplicates), tables merged, plugin sections replaced whole."""
    for key, value in frm.items():
        if key == "version":
            continue
        old = to.get(key)
        if key == "plugins" and isinstance(old, dict) and isinstance(value, dict):
            old.update(value)
        elif isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            to[key] = old + [v for v in value if v not in old]
        else:
            to[key] = value


def load(path: str | Path | None) -> LoadResult:
    """Read and decode a config file (and its imports); ``None`` gives the defaults."""
    if path is None:
        return LoadResult(ServerConfig(), [])
    from ctrd import config_versions as cv
    from ctrd import deprecation

    path = Path(path)
    data = _read_toml(path)
    try:
        version = cv.file_version(data)
        data = cv.to_v2(data) if version <= 2 else cv.to_v3(data)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e.detail}") from None
    pending, seen = _imports(path, data), {path.resolve()}
    while pending:
        imp = pending.pop(0)
        if imp.resolve() in seen:
            continue
        seen.add(imp.resolve())
        more = _read_toml(imp)
        try:
            v = cv.file_version(more)
            if v > version:
                raise ConfigError(f"version = {v}: higher than the version of {path} "
                                  f"({version})")
            more = cv.to_v2(more) if version <= 2 else cv.to_v3(more)
        except ConfigError as e:
            raise ConfigError(f"config {imp}: {e.detail}") from None
        pending += _imports(imp, more)
        _merge(data, more)
    data["version"] = version
    deprecations: list[str] = []
    renames = None
    if version <= 2:
        deprecations.append(deprecation.CONFIG_VERSION)
    elif isinstance(data.get("plugins"), dict):
        renames = cv.Renames()
        try:
            cv.fold_cri(data["plugins"], renames, deprecations)
        except ConfigError as e:
            raise ConfigError(f"config {path}: {e.detail}") from None
    if version >= 3:
        cv.cri_plugin_names(data)
    warnings: list[str] = []
    try:
        cfg = decode(ServerConfig, data, "", warnings)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e.detail}") from None
    cfg.deprecations, cfg.renames = deprecations, renames
    return LoadResult(cfg, [f"config {path}: {w}" for w in warnings])


def _key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


_TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array",
               dict: "table"}


def _tname(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def decode(cls: type, data: Any, where: str, warnings: list[str]) -> Any:
    """Build dataclass ``cls`` from a TOML table; ``where`` is the key path for messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {_tname(data)}")
    hints = typing.get_type_hints(cls)
    fields = {_key_of(f): f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            warnings.append(f"unknown key {join_key(where, key)} ignored")
            continue
        path = join_key(where, key)
        if f.metadata.get("text") and isinstance(value, (int, float)) and \
                not isinstance(value, bool):
            value = str(value)
        value = _convert(hints[f.name], value, path, warnings)
        check = f.metadata.get("check")
        if check is not None and (problem := check(value)):
            raise ConfigError(f"{path} = {value!r}: {problem}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str, warnings: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, path, warnings)
    if dataclasses.is_dataclass(tp):
        return decode(tp, value, path, warnings)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected an array, got {_tname(value)}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]", warnings) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {_tname(value)}")
        _, item = typing.get_args(tp)
        return {k: _convert(item, v, join_key(path, k), warnings) for k, v in value.items()}
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {_tname(value)}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass in Python but not in TOML: keep them apart.
    if type(value) is not tp:
        raise ConfigError(f"{path}: expected {_TYPE_NAMES.get(tp, str(tp))}, got {_tname(value)} {value!r}")
    return value


def encode(obj: Any) -> dict[str, Any]:
    """A config dataclass as a TOML-ready dict (None values dropped: TOML has no null)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = encode(value)
        elif isinstance(value, dict):
            value = {k: encode(v) if dataclasses.is_dataclass(v) else v for k, v in value.items()}
        if value is not None:
            out[_key_of(f)] = value
    return out
