"""Layer media types and streaming decompression.

:func:`open_decompressed` turns a layer blob stream into its uncompressed tar stream. As
containerd's ``images.DiffCompression`` + ``compression.DecompressStream`` do, the media type
decides whether the blob is compressed at all; when it says gzip or zstd (or is Docker's
ambiguous ``...diff.tar``), the compression is detected from the magic bytes, so a
mislabelled layer still unpacks. Nothing is buffered whole: every read decompresses a bounded
amount, and the uncompressed size is capped so a small blob cannot expand without limit.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Callable, Protocol

from ctrd.errdefs import InvalidArgument

try:  # isal's inflate is ~4x zlib's here; fall back to the stdlib when it is missing.
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _gzip_lib_error
except ImportError:  # pragma: no cover - isal is a declared dependency
    import gzip as _gzip  # type: ignore[no-redef]
    from zlib import error as _gzip_lib_error  # type: ignore[assignment]

import zstandard

MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = MEDIA_TYPE_OCI_LAYER + "+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = MEDIA_TYPE_OCI_LAYER + "+zstd"
MEDIA_TYPE_OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Compression kinds.
UNCOMPRESSED = "uncompressed"
GZIP = "gzip"
ZSTD = "zstd"
DETECT = "detect"  # the media type does not say; look at the magic bytes

#: Default cap on a layer's uncompressed size. Generous: real layers are far smaller, and the
#: cap only exists so that a hostile blob fails instead of filling the disk.
DEFAULT_MAX_SIZE = 64 << 30

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_SIZE = 1 << 20


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def compression_of(media_type: str) -> str:
    """The compression a layer of ``media_type`` is in: UNCOMPRESSED, GZIP, ZSTD or DETECT.

    Follows containerd's ``images.DiffCompression``; an unknown or wrapped (e.g. encrypted)
    media type is refused with InvalidArgument naming it.
    """
    base, _, rest = media_type.partition("+")
    ext = sorted(rest.split("+")) if rest else []
    if base in (MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_DOCKER_LAYER_FOREIGN) and not ext:
        return DETECT  # may have been compressed without saying so
    if base in (MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_LAYER_FOREIGN_GZIP) and not ext:
        return GZIP
    if base in (MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_NONDIST):
        if not ext:
            return UNCOMPRESSED
        if ext == ["gzip"]:
            return GZIP
        if ext == ["zstd"]:
            return ZSTD
    raise InvalidArgument(f"unsupported layer media type {media_type!r}")


def detect_compression(prefix: bytes) -> str:
    """UNCOMPRESSED, GZIP or ZSTD from a stream's first bytes (containerd's DetectCompression)."""
    if prefix.startswith(_GZIP_MAGIC):
        return GZIP
    if prefix.startswith(_ZSTD_MAGIC):
        return ZSTD
    if len(prefix) >= 4 and (struct.unpack_from("<I", prefix)[0] & 0xFFFFFFF0) == 0x184D2A50:
        return ZSTD  # starts with a zstd skippable frame
    return UNCOMPRESSED


class _Source:
    """The compressed input: a prefix already read for detection, then the stream; counted."""

    def __init__(self, prefix: bytes, stream: Readable) -> None:
        self._prefix = prefix
        self._stream = stream
        self.consumed = 0
        self.watch: _ZstdFrameWalker | None = None

    def read(self, n: int = -1, /) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            if 0 <= n < len(data):
                data, self._prefix = data[:n], data[n:]
        else:
            data = self._stream.read(n)
        self.consumed += len(data)
        if self.watch is not None and data:
            self.watch.feed(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # for io.BufferedReader users
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _ZstdFrameWalker:
    """Follows zstd frame and block headers as the compressed bytes pass, so the end of input
    can be told apart from the end of a frame: python-zstandard's stream reader treats a
    truncated frame as a clean end of stream."""

    def __init__(self) -> None:
        self._buf = b""  # an incomplete header being collected
        self._skip = 0  # bytes of block/frame content still to pass
        self._state = "frame"  # "frame" | "fhd" | "block" | "lost"
        self._after_last = 0  # checksum bytes after the last block
        self._hdr_need = 4

    @property
    def at_boundary(self) -> bool:
        return self._state in ("frame", "lost") and not self._buf and self._skip == 0

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self._state != "lost":
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._hdr_need - len(self._buf), end - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if len(self._buf) < self._hdr_need:
                return
            hdr, self._buf = self._buf, b""
            self._header(hdr)

    def _header(self, hdr: bytes) -> None:
        if self._state == "frame":
            magic = struct.unpack("<I", hdr)[0]
            if magic == 0xFD2FB528:
                self._state, self._hdr_need = "fhd", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._hdr_need = "skippable", 4
            else:
                self._state = "lost"  # the decompressor reports it
        elif self._state == "skippable":
            self._skip = struct.unpack("<I", hdr)[0]
            self._state, self._hdr_need = "frame", 4
        elif self._state == "fhd":
            fhd = hdr[0]
            single = (fhd >> 5) & 1
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            self._skip = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            self._after_last = 4 if fhd & 4 else 0
            self._state, self._hdr_need = "block", 3
        elif self._state == "block":
            h = hdr[0] | hdr[1] << 8 | hdr[2] << 16
            btype, size = (h >> 1) & 3, h >> 3
            self._skip = 1 if btype == 1 else size
            if h & 1:  # last block of the frame
                self._skip += self._after_last
                self._state, self._hdr_need = "frame", 4


class DecompressedStream:
    """A layer's uncompressed bytes; ``read(n)`` returns at most ``n`` bytes, b"" at the end.

    Errors in the compressed data (corruption, truncation, exceeding ``max_size``) raise
    InvalidArgument saying what went wrong.
    """

    def __init__(self, source: _Source, compression: str, max_size: int,
                 max_ratio: float | None, refuse: Callable[[], Exception] | None = None,
                 checkpoint: Callable[[], None] | None = None,
                 checkpoint_every: int = 0) -> None:
        self.compression = compression
        self.max_size = max_size
        self.max_ratio = max_ratio
        self.size = 0  # uncompressed bytes returned so far
        self._refuse = refuse
        self._checkpoint = checkpoint
        self._every = checkpoint_every if checkpoint is not None else 0
        self._next_checkpoint = self._every or max_size + 1
        # The one compare per chunk: past it, _slow_check sorts out which bound was reached.
        self._next = min(max_size, self._next_checkpoint)
        self._source = source
        self._walker: _ZstdFrameWalker | None = None
        if compression == GZIP:
            self._reader: Readable = _gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[arg-type]
        elif compression == ZSTD:
            self._walker = source.watch = _ZstdFrameWalker()
            self._reader = zstandard.ZstdDecompressor().stream_reader(
                source, read_size=1 << 17, read_across_frames=True)
        else:
            self._reader = source

    @property
    def compressed_size(self) -> int:
        return self._source.consumed

    def read(self, n: int = _READ_SIZE, /) -> bytes:
        if n < 0:
            n = _READ_SIZE
        try:
            data = self._reader.read(n)
        except EOFError as e:
            raise InvalidArgument(f"truncated {self.compression} layer: {e}") from None
        except (OSError, _gzip_lib_error, zstandard.ZstdError) as e:
            raise InvalidArgument(f"corrupt {self.compression} layer: {e}") from None
        if not data:
            if self._walker is not None and not self._walker.at_boundary:
                raise InvalidArgument("truncated zstd layer: input ends inside a frame")
            return data
        self.size += len(data)
        if self.size > self._next:
            self._slow_check()
        if (self.max_ratio is not None and self.size > (1 << 20)
                and self.size > self.max_ratio * max(self._source.consumed, 1)):
            raise InvalidArgument(
                f"layer expands more than {self.max_ratio:g}x its compressed size "
                "(decompression bomb?)")
        return data

    def _slow_check(self) -> None:
        """The size passed a bound: refuse past ``max_size`` (before the data is handed
        on), else run the checkpoint and move on to the next bound."""
        if self.size > self.max_size:
            if self._refuse is not None:
                raise self._refuse()
            raise InvalidArgument(
                f"layer expands past the {self.max_size}-byte uncompressed size limit "
                "(decompression bomb?)")
        while self._every and self.size >= self._next_checkpoint:
            self._next_checkpoint += self._every
            self._checkpoint()  # type: ignore[misc]
        self._next = min(self.max_size, self._next_checkpoint)

    def close(self) -> None:
        close = getattr(self._reader, "close", None)
        if close is not None and self._reader is not self._source:
            close()


def open_decompressed(stream: Readable | BinaryIO, media_type: str, *,
                      max_size: int = DEFAULT_MAX_SIZE,
                      max_ratio: float | None = None,
                      refuse: Callable[[], Exception] | None = None,
                      checkpoint: Callable[[], None] | None = None,
                      checkpoint_every: int = 0) -> DecompressedStream:
    """The uncompressed tar stream of a layer blob ``stream`` of ``media_type``.

    ``max_size`` caps the uncompressed size: the read that would pass it raises (``refuse()``
    when given, else InvalidArgument) instead of returning data; ``max_ratio`` (off by
    default: gzip cannot pass ~1032x anyway, and legitimate zstd layers of zeros go far
    beyond) caps uncompressed over compressed size once past 1 MiB. ``checkpoint`` is called
    each time another ``checkpoint_every`` uncompressed bytes have been read (the differ's
    free-space check). Unknown media types raise InvalidArgument.
    """
    kind = compression_of(media_type)
    prefix = b""
    if kind != UNCOMPRESSED:
        while len(prefix) < 4:
            chunk = stream.read(4 - len(prefix))
            if not chunk:
                break
            prefix += chunk
        kind = detect_compression(prefix)
    return DecompressedStream(_Source(prefix, stream), kind, max_size, max_ratio, refuse,
                              checkpoint, checkpoint_every)
