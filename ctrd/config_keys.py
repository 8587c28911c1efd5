"""What config messages are made of: the error kind and how a key path is spelled (shared by
:mod:`ctrd.config` and :mod:`ctrd.config_versions`, which must not import each other)."""

from __future__ import annotations

from ctrd.errdefs import InvalidArgument


class ConfigError(InvalidArgument):
    """A config file or value ctrd cannot use; the message names the file and key."""


def join_key(prefix: str, key: str) -> str:
    """``prefix.key`` as messages name a key (quoted where TOML would need it)."""
    part = key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'
    return f"{prefix}.{part}" if prefix else part
