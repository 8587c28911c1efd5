"""The content store contract: records and Protocols (see the package docstring for the
lifecycle). Every method is blocking (file I/O, hashing): async callers run them in a worker
thread. Errors are ``ctrd.errdefs`` errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from ctrd.errdefs import InvalidArgument

# OCI digests: algorithm ":" encoded. sha256 (and sha512) are what registries and ctr use.
_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
ALGORITHMS = {"sha256": 64, "sha512": 128}


def validate_digest(digest: str) -> tuple[str, str]:
    """Split and check a digest string; InvalidArgument names what is wrong."""
    m = _DIGEST.fullmatch(digest or "")
    if m is None:
        raise InvalidArgument(f"invalid digest {digest!r}: expected <algorithm>:<hex>")
    alg, hexpart = m.group(1), m.group(2)
    if alg not in ALGORITHMS:
        raise InvalidArgument(f"unsupported digest algorithm {alg!r} in {digest!r}")
    if len(hexpart) != ALGORITHMS[alg] or not re.fullmatch(r"[a-f0-9]+", hexpart):
        raise InvalidArgument(f"invalid {alg} digest {digest!r}: expected {ALGORITHMS[alg]} "
                              "lowercase hex characters")
    return alg, hexpart


@dataclass
class Info:
    """A committed blob. ``labels`` are per namespace (filled in by the metadata layer; the
    local store keeps none)."""

    digest: str
    size: int
    created_at: float  # seconds since the epoch
    updated_at: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Status:
    """An ingest in progress."""

    ref: str
    offset: int
    total: int  # 0 when unknown
    expected: str  # "" when unknown
    started_at: float
    updated_at: float


class ReaderAt(Protocol):
    """Random access to one committed blob; close it when done."""

    size: int

    def read_at(self, offset: int, n: int) -> bytes: ...

    def close(self) -> None: ...


class Writer(Protocol):
    """An open ingest, held exclusively until ``close`` (or a successful ``commit``)."""

    def write(self, data: bytes) -> int: ...

    def digest(self) -> str:
        """The digest of what was written so far."""

    def status(self) -> Status: ...

    def truncate(self, size: int) -> None:
        """Only ``truncate(0)`` needs to be supported (containerd's local store too)."""

    def commit(self, size: int, expected: str, labels: dict[str, str] | None = None) -> str:
        """Verify (``size`` 0 / ``expected`` "" skip that check) and publish the blob; return
        its digest. Mismatch: ``FailedPrecondition`` naming both values, nothing published,
        the ingest stays so the client may fix it up. Already present: ``AlreadyExists``
        (the ingest is removed)."""

    def close(self) -> None:
        """Release the ref (the ingest stays on disk for a later resume)."""


class Store(Protocol):
    def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer: ...

    def status(self, ref: str) -> Status: ...

    def list_statuses(self, match: Callable[[Status], bool] | None = None) -> list[Status]: ...

    def abort(self, ref: str) -> None: ...

    def reader(self, digest: str) -> ReaderAt: ...

    def info(self, digest: str) -> Info: ...

    def walk(self) -> Iterator[Info]: ...

    def delete(self, digest: str) -> None: ...
