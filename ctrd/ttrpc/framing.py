"""ttrpc wire framing (containerd/ttrpc 1.1), sans-IO.

A frame is a 10-byte big-endian header (uint32 payload length, uint32 stream id, uint8 type,
uint8 flags) and the payload. Requests (type 1) carry a ``ttrpc.Request`` protobuf, responses
(type 2) a ``ttrpc.Response``. Client-initiated streams have odd ids. Payloads are at most
4 MiB; a longer frame is skipped (its bytes are consumed) and reported as
:class:`OversizedFrame` so the receiver can answer that stream with RESOURCE_EXHAUSTED and
keep the connection.
"""

from __future__ import annotations

import struct

from ctrd import errdefs

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 4 << 20

TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3  # streaming (ttrpc 1.2); answered with UNIMPLEMENTED here

# The status an oversized frame gets; the number is errdefs' (the one table of codes).
RESOURCE_EXHAUSTED = errdefs.RESOURCE_EXHAUSTED


class ProtocolError(Exception):
    """The peer sent something that is not ttrpc: the connection must be closed."""


# Plain classes, not dataclasses: the shim imports this module, and ``dataclasses`` drags in
# inspect, ast, dis and tokenize in every process (bench/README.md, "Figures the code cites").
class Frame:
    __slots__ = ("stream_id", "type", "flags", "payload")

    def __init__(self, stream_id: int, type: int, flags: int, payload: bytes) -> None:
        self.stream_id, self.type, self.flags, self.payload = stream_id, type, flags, payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and (
            self.stream_id, self.type, self.flags, self.payload) == (
            other.stream_id, other.type, other.flags, other.payload)

    def __repr__(self) -> str:
        return (f"Frame(stream_id={self.stream_id}, type={self.type}, flags={self.flags}, "
                f"payload={self.payload!r})")


class OversizedFrame:
    __slots__ = ("stream_id", "type", "length")

    def __init__(self, stream_id: int, type: int, length: int) -> None:
        self.stream_id, self.type, self.length = stream_id, type, length

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OversizedFrame) and (
            self.stream_id, self.type, self.length) == (
            other.stream_id, other.type, other.length)

    def __repr__(self) -> str:
        return (f"OversizedFrame(stream_id={self.stream_id}, type={self.type}, "
                f"length={self.length})")

    @property
    def message(self) -> str:
        """The RESOURCE_EXHAUSTED status message, worded as Go ttrpc's (containerd 1.6)."""
        return f"message length {self.length} exceed maximum message size of {MAX_PAYLOAD}"


def encode(stream_id: int, type_: int, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"ttrpc message of {len(payload)} bytes exceeds the maximum "
                         f"of {MAX_PAYLOAD}")
    return HEADER.pack(len(payload), stream_id, type_, flags) + payload


class Decoder:
    """Feed bytes as they arrive; get whole frames back."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized payload still to discard

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self._buf += data
        out: list[Frame | OversizedFrame] = []
        while len(self._buf) >= HEADER_SIZE:
            length, sid, type_, flags = HEADER.unpack_from(self._buf)
            if length > MAX_PAYLOAD:
                out.append(OversizedFrame(sid, type_, length))
                available = len(self._buf) - HEADER_SIZE
                if available >= length:
                    del self._buf[:HEADER_SIZE + length]
                else:
                    self._skip = length - available
                    self._buf.clear()
                continue
            if len(self._buf) < HEADER_SIZE + length:
                break
            payload = bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])
            del self._buf[:HEADER_SIZE + length]
            out.append(Frame(sid, type_, flags, payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes of a partial frame held (0 at a frame boundary)."""
        return len(self._buf) + self._skip
