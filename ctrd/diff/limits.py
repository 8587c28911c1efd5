"""Unpack limits: how far one layer may expand, and how much disk an unpack must leave free.

A layer blob is hostile input: a 2 MB gzip (or a few KB of zstd) can inflate to gigabytes of
zeros. The walking differ (``[plugins."io.containerd.differ.v1.walking"]``) therefore bounds
every apply, whoever asks for it (``ctr``'s client-side unpack through Diff.Apply, ctrctl's
import, daemon-side pulls, the CRI, Transfer):

- ``max_unpacked_bytes`` and ``max_expansion_ratio``: a layer may unpack to at most
  ``max(max_unpacked_bytes, max_expansion_ratio x its compressed size)`` bytes of tar stream
  (headers included). The floor lets any layer up to 1 GiB through whatever its ratio (a
  1 GiB file of zeros is a real thing); above it a layer must be compressed no better than
  100:1, which every real image layer is (typical ratios are 2-5, sparse data rarely 20) and
  a bomb is not (gzip reaches ~1000:1, zstd far more). ``max_unpacked_bytes = 0`` turns the
  limit off.
- ``min_free_bytes``: the filesystem being written must keep this much free; checked before
  the first byte and then every :data:`FREE_CHECK_EVERY` uncompressed bytes (a statvfs, not
  per chunk). 0 turns it off.

The bound is computed once per layer from the blob's real size (not the descriptor's claim)
and compared once per decompressed chunk (~1 MiB), so enforcing it costs nothing measurable.
The layer is refused before the byte past the limit is written; what it wrote is removed by
the applier, the snapshot by whoever prepared it.

:func:`configure` installs the daemon's limits (the differ plugin's init does); :func:`current`
is what an apply uses when not given limits explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ctrd.errdefs import InvalidArgument, ResourceExhausted

SECTION = 'plugins."io.containerd.differ.v1.walking"'
DEFAULT_MAX_UNPACKED = 1 << 30
DEFAULT_MAX_RATIO = 100.0
DEFAULT_MIN_FREE = 128 << 20
FREE_CHECK_EVERY = 64 << 20  # uncompressed bytes between free-space checks


class UnpackRefused(InvalidArgument):
    """A layer unpacks past its limit (a decompression bomb, or limits set too tight)."""


class DiskReserve(ResourceExhausted):
    """Unpacking would eat into the free-disk reserve."""


@dataclass(frozen=True)
class UnpackLimits:
    """The differ's limits; see the module docstring for the rule."""

    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED
    max_expansion_ratio: float = DEFAULT_MAX_RATIO
    min_free_bytes: int = DEFAULT_MIN_FREE

    def allowed(self, compressed_size: int) -> int | None:
        """Uncompressed bytes a layer blob of ``compressed_size`` bytes may unpack to (None:
        unlimited)."""
        if self.max_unpacked_bytes <= 0:
            return None
        return max(self.max_unpacked_bytes, int(self.max_expansion_ratio * compressed_size))

    def accepts(self, compressed_size: int, unpacked_size: int) -> bool:
        """Whether a layer of these sizes is within the limit (the rule, on its numbers)."""
        limit = self.allowed(compressed_size)
        return limit is None or unpacked_size <= limit

    def refused(self, layer: str, compressed_size: int) -> UnpackRefused:
        """The error for ``layer`` (a digest) going past its limit: names the layer, the
        limit and the config keys that set it."""
        limit = self.allowed(compressed_size)
        return UnpackRefused(
            f"layer {layer} unpacks to more than {limit} bytes, its limit as a "
            f"{compressed_size}-byte blob: max(max_unpacked_bytes = "
            f"{self.max_unpacked_bytes}, max_expansion_ratio = {self.max_expansion_ratio:g} "
            f"x compressed size) in [{SECTION}] (decompression bomb?)")

    def check_free(self, layer: str, path: str) -> None:
        """DiskReserve when the filesystem holding ``path`` has less than
        ``min_free_bytes`` available."""
        if self.min_free_bytes <= 0:
            return
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        if free < self.min_free_bytes:
            raise DiskReserve(
                f"layer {layer}: {free} bytes free on the filesystem of {path}, less than "
                f"min_free_bytes = {self.min_free_bytes} in [{SECTION}]")


_current = UnpackLimits()


def configure(limits: UnpackLimits) -> None:
    """Install ``limits`` as the daemon's (the walking differ plugin does, at init)."""
    global _current
    _current = limits


def current() -> UnpackLimits:
    """The limits applies use unless given their own."""
    return _current


__all__ = ["UnpackLimits", "UnpackRefused", "DiskReserve", "configure", "current",
           "SECTION"]
