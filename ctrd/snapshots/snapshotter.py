"""The snapshotter contract: records and Protocol (see the package docstring for the
lifecycle). Methods are blocking (file system work): async callers use worker threads, except
that a snapshotter whose ``quick_reads`` attribute is true (ours: their metadata is a local
LMDB) has ``stat`` and ``mounts`` cheap enough to call on the event loop.
Errors are ``ctrd.errdefs`` errors: NotFound, AlreadyExists, FailedPrecondition (e.g. removing
a snapshot with children, committing a view), InvalidArgument."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol


class Kind(enum.IntEnum):
    """containerd's snapshot kinds, with the same numbers as its API enum."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass
class Info:
    """A snapshot as Stat/Walk report it."""

    name: str  # the key of an active snapshot or view, the name of a committed one
    kind: Kind
    parent: str = ""  # name of the committed parent ("" for none)
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0  # seconds since the epoch
    updated_at: float = 0.0


@dataclass
class Usage:
    """Disk usage of a snapshot's own layer."""

    size: int = 0  # bytes
    inodes: int = 0


@dataclass
class Mount:
    """What to mount: ``mount -t <type> <source> <target> -o <options>``."""

    type: str
    source: str
    options: list[str] = field(default_factory=list)
    target: str = ""


class Snapshotter(Protocol):
    def stat(self, key: str) -> Info: ...

    def update(self, info: Info, fieldpaths: list[str] | None = None) -> Info:
        """Only labels can change: all of them (no paths, or ``labels``) or
        ``labels.<key>``."""

    def usage(self, key: str) -> Usage: ...

    def mounts(self, key: str) -> list[Mount]: ...

    def prepare(self, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Mount]: ...

    def view(self, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]: ...

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None,
               parent: str = "") -> None:
        """Commit active ``key`` as ``name``; ``parent``: rebase a parentless snapshot."""

    def remove(self, key: str) -> None: ...

    def walk(self, match: Callable[[Info], bool] | None = None) -> Iterator[Info]: ...

    def cleanup(self) -> None:
        """Reclaim the space of removed snapshots (removal may defer it)."""

    def close(self) -> None: ...
