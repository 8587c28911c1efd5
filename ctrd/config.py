"""Daemon configuration: containerd's TOML (version 2), decoded into typed dataclasses.

Contract:
- :func:`load` reads a file (or nothing: defaults) into a :class:`ServerConfig`. Top-level keys
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

from ctrd.errdefs import InvalidArgument

DEFAULT_ROOT = "/var/lib/ctrd"
DEFAULT_STATE = "/run/ctrd"
DEFAULT_ADDRESS = "/run/ctrd/ctrd.sock"
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")


class ConfigError(InvalidArgument):
    """A config file or value ctrd cannot use; the message names the file and key."""


def setting(default: Any = dataclasses.MISSING, *, key: str | None = None, doc: str = "",
            check: Callable[[Any], str | None] | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field. ``key`` is its TOML name when it differs from the attribute name;
    ``check`` returns an error text for a value of the right type that is still unusable."""
    meta = {"key": key, "doc": doc, "check": check}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"
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

    level: str = setting("info", check=_one_of(*LOG_LEVELS))
    format: str = setting("text", check=_one_of("text", "json"))


@dataclass
class ServerConfig:
    """The whole file; plugin sections stay raw tables until the registry decodes them."""

    version: int = setting(2, check=_one_of(2), doc="config schema version (only 2)")
    root: str = setting(DEFAULT_ROOT, doc="persistent data: content, metadata, snapshots")
    state: str = setting(DEFAULT_STATE, doc="ephemeral data: sockets, bundles, FIFOs")
    grpc: GRPCConfig = setting(default_factory=GRPCConfig)
    ttrpc: TTRPCConfig = setting(default_factory=TTRPCConfig)
    debug: DebugConfig = setting(default_factory=DebugConfig)
    disabled_plugins: list[str] = setting(default_factory=list)
    required_plugins: list[str] = setting(default_factory=list)
    plugins: dict[str, dict] = setting(default_factory=dict)

    @property
    def ttrpc_address(self) -> str:
        return self.ttrpc.address or self.grpc.address + ".ttrpc"


@dataclass
class LoadResult:
    """What :func:`load` read, and the warnings it had."""

    config: ServerConfig
    warnings: list[str]


def load(path: str | Path | None) -> LoadResult:
    """Read and decode a config file; ``None`` gives the defaults."""
    if path is None:
        return LoadResult(ServerConfig(), [])
    import tomllib

    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not UTF-8 text at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"config {path}: invalid TOML: nested too deeply") from None
    version = data.get("version", 1)
    if version != 2:
        raise ConfigError(f"config {path}: version = {version!r}: only version = 2 "
                          "(containerd 1.5+ format) is supported")
    warnings: list[str] = []
    try:
        cfg = decode(ServerConfig, data, "", warnings)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e.detail}") from None
    return LoadResult(cfg, [f"config {path}: {w}" for w in warnings])


def _key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _join(prefix: str, key: str) -> str:
    part = key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'
    return f"{prefix}.{part}" if prefix else part


_TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array",
               dict: "table"}


def _tname(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def decode(cls: type, data: Any, where: str, warnings: list[str]) -> Any:
    """Build dataclass ``cls`` from a TOML table; ``where`` is the key path for messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {_tname(data)}")
    hints = typing.get_type_hints(cls)
    fields = {_key_of(f): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            warnings.append(f"unknown key {_join(where, key)} ignored")
            continue
        path = _join(where, key)
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
        return {k: _convert(item, v, _join(path, k), warnings) for k, v in value.items()}
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
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = encode(value)
        elif isinstance(value, dict):
            value = {k: encode(v) if dataclasses.is_dataclass(v) else v for k, v in value.items()}
        if value is not None:
            out[_key_of(f)] = value
    return out
