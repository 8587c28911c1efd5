"""SPDY/3.1 framing and connection state, without I/O.

The kubelet's streaming protocols (exec, attach, port-forward) run over SPDY/3.1 after an
HTTP/1.1 ``Upgrade: SPDY/3.1``; no maintained Python library speaks it, so this module holds
the protocol: frames (draft 3.1), the zlib header-block compression with the SPDY/3
dictionary (one deflate stream per direction, shared by every header block of the
connection), stream ids and states, PING answers, GOAWAY, and flow-control windows.

Usage (either side)::

    conn = Connection(client=False)
    events = conn.receive_data(bytes_from_socket)     # -> [StreamOpened, DataReceived, ...]
    conn.reply(stream_id, {})                         # queue frames ...
    accepted = conn.send_data(stream_id, b"out")      # ... bounded by the send window
    sock.sendall(conn.data_to_send())                 # ... and write them out

Flow control. Kubernetes' SPDY library (moby/spdystream) neither sends WINDOW_UPDATE nor
honours one: a sender that stopped at the 64 KiB initial window would stall it forever. So
send windows are tracked from the start but *enforced* only once the peer has shown it does
flow control (it sent a WINDOW_UPDATE or an INITIAL_WINDOW_SIZE setting). Receive windows
are announced (WINDOW_UPDATE as the application consumes data, :meth:`Connection.consumed`)
but a peer that overruns them is not reset; the I/O layer applies backpressure by not
reading the socket while too much is buffered.

Errors: a malformed frame or header block raises :class:`ProtocolError` from
:meth:`Connection.receive_data` after queueing a GOAWAY(PROTOCOL_ERROR); the connection is
then unusable and its socket should be closed once the queued bytes are written. Stream-level
mistakes of the peer (data on an unknown stream, a bad stream id) queue a RST_STREAM and are
not raised.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

# control frame types
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
FRAME_TOO_LARGE = 11

# GOAWAY status codes
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

# SETTINGS ids
SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_INITIAL_WINDOW_SIZE = 7

DEFAULT_WINDOW = 64 * 1024
MAX_WINDOW = (1 << 31) - 1
MAX_LENGTH = (1 << 24) - 1
MAX_STREAM_ID = (1 << 31) - 1
DATA_CHUNK = 64 * 1024          # payload of the data frames we write
MAX_HEADER_BLOCK = 256 * 1024   # decompressed size of one header block we accept
MAX_CONTROL_LENGTH = 1 << 20    # a longer control frame is an attack, not a header block


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft 3, 2.6.10.1): length-prefixed
    common header names and values, then a run of common value fragments. 1423 bytes."""
    words = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status").split()
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive",
              "origin"]
    out = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    out += (b"100101201202205206300302303304305306307402405406407408409410411412413414415416"
            b"417502504505203 Non-Authoritative Information204 No Content301 Moved "
            b"Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 "
            b"Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr "
            b"May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, "
            b"GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,"
            b"application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,"
            b"deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
    return out


DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """The peer broke the protocol at the session level (the connection must go)."""


Headers = dict  # lowercase name -> list of values (SPDY joins several values with NUL)


def header(headers: Headers, name: str) -> str:
    """The first value of ``name`` (case-insensitive), "" when absent."""
    v = headers.get(name.lower())
    return v[0] if v else ""


# --- frames ---------------------------------------------------------------------------------

@dataclass
class SynStream:
    stream_id: int
    headers: Headers
    flags: int = 0
    associated_id: int = 0
    priority: int = 0
    slot: int = 0


@dataclass
class SynReply:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass
class RstStream:
    stream_id: int
    status: int
    flags: int = 0


@dataclass
class Settings:
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # (flags, id, value)
    flags: int = 0


@dataclass
class Ping:
    id: int
    flags: int = 0


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK
    flags: int = 0


@dataclass
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int
    flags: int = 0


@dataclass
class Data:
    stream_id: int
    data: bytes
    flags: int = 0


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | \
    WindowUpdate | Data


class Codec:
    """Frame bytes <-> frame objects for one connection (it owns the two zlib streams)."""

    def __init__(self, max_header_block: int = MAX_HEADER_BLOCK) -> None:
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                         zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._buf = bytearray()
        self.max_header_block = max_header_block

    # -- writing
    def _header_block(self, headers: Headers) -> bytes:
        parts = [struct.pack(">I", len(headers))]
        for name, values in headers.items():
            if isinstance(values, str):
                values = [values]
            n = name.lower().encode()
            v = b"\x00".join(x.encode() for x in values)
            parts += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        raw = b"".join(parts)
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control(ftype: int, flags: int, payload: bytes) -> bytes:
        if len(payload) > MAX_LENGTH:
            raise ValueError("frame too large")
        return struct.pack(">HHI", 0x8000 | VERSION, ftype,
                           (flags << 24) | len(payload)) + payload

    def encode(self, f: Frame) -> bytes:
        if isinstance(f, Data):
            if len(f.data) > MAX_LENGTH:
                raise ValueError("data frame too large")
            return struct.pack(">II", f.stream_id & MAX_STREAM_ID,
                               (f.flags << 24) | len(f.data)) + f.data
        if isinstance(f, SynStream):
            body = struct.pack(">IIBB", f.stream_id, f.associated_id, (f.priority & 7) << 5,
                               f.slot) + self._header_block(f.headers)
            return self._control(SYN_STREAM, f.flags, body)
        if isinstance(f, SynReply):
            return self._control(SYN_REPLY, f.flags,
                                 struct.pack(">I", f.stream_id) + self._header_block(f.headers))
        if isinstance(f, HeadersFrame):
            return self._control(HEADERS, f.flags,
                                 struct.pack(">I", f.stream_id) + self._header_block(f.headers))
        if isinstance(f, RstStream):
            return self._control(RST_STREAM, f.flags, struct.pack(">II", f.stream_id, f.status))
        if isinstance(f, Settings):
            body = struct.pack(">I", len(f.entries)) + b"".join(
                struct.pack(">I", (fl << 24) | (i & 0xFFFFFF)) + struct.pack(">I", v)
                for fl, i, v in f.entries)
            return self._control(SETTINGS, f.flags, body)
        if isinstance(f, Ping):
            return self._control(PING, f.flags, struct.pack(">I", f.id))
        if isinstance(f, GoAway):
            return self._control(GOAWAY, f.flags,
                                 struct.pack(">II", f.last_good_stream_id, f.status))
        if isinstance(f, WindowUpdate):
            return self._control(WINDOW_UPDATE, f.flags,
                                 struct.pack(">II", f.stream_id, f.delta))
        raise TypeError(f"not a SPDY frame: {f!r}")

    # -- reading
    def _parse_headers(self, block: bytes) -> Headers:
        try:
            raw = self._inflate.decompress(block, self.max_header_block + 1)
        except zlib.error as e:
            raise ProtocolError(f"header block: {e}") from None
        if len(raw) > self.max_header_block or self._inflate.unconsumed_tail:
            raise ProtocolError("header block too large")
        try:
            (n,) = struct.unpack_from(">I", raw, 0)
            pos = 4
            headers: Headers = {}
            for _ in range(n):
                (ln,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4:pos + 4 + ln]
                pos += 4 + ln
                (lv,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4:pos + 4 + lv]
                pos += 4 + lv
                if len(name) != ln or len(value) != lv or pos > len(raw):
                    raise struct.error("truncated")
                if not name or name != name.lower():
                    raise ProtocolError(f"header name {name!r} is empty or not lowercase")
                key = name.decode("utf-8", "replace")
                if key in headers:
                    raise ProtocolError(f"header {key!r} appears twice")
                headers[key] = value.decode("utf-8", "replace").split("\x00")
        except struct.error:
            raise ProtocolError("truncated header block") from None
        if pos != len(raw):
            raise ProtocolError("trailing bytes after the header block")
        return headers

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by ``data`` (a partial frame waits for more)."""
        self._buf += data
        out: list[Frame] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 8:
            w0, w1 = struct.unpack_from(">II", buf, pos)
            flags, length = w1 >> 24, w1 & 0xFFFFFF
            if w0 & 0x80000000:  # judge a control frame by its header, before its body
                if (w0 >> 16) & 0x7FFF != VERSION:
                    raise ProtocolError(f"unsupported SPDY version {(w0 >> 16) & 0x7FFF}")
                if length > MAX_CONTROL_LENGTH:
                    raise ProtocolError(f"control frame of {length} bytes is too large")
            if len(buf) - pos - 8 < length:
                break
            payload = bytes(buf[pos + 8:pos + 8 + length])
            pos += 8 + length
            if not w0 & 0x80000000:
                out.append(Data(w0 & MAX_STREAM_ID, payload, flags))
                continue
            f = self._control_frame(w0 & 0xFFFF, flags, payload)
            if f is not None:
                out.append(f)
        del buf[:pos]
        return out

    def _control_frame(self, ftype: int, flags: int, p: bytes) -> Frame | None:
        n = len(p)

        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ProtocolError(f"invalid {what} frame ({n} bytes)")

        if ftype == SYN_STREAM:
            need(n >= 10, "SYN_STREAM")
            sid, assoc, prio, slot = struct.unpack_from(">IIBB", p)
            return SynStream(sid & MAX_STREAM_ID, self._parse_headers(p[10:]), flags,
                             assoc & MAX_STREAM_ID, prio >> 5, slot)
        if ftype in (SYN_REPLY, HEADERS):
            need(n >= 4, "SYN_REPLY/HEADERS")
            (sid,) = struct.unpack_from(">I", p)
            cls = SynReply if ftype == SYN_REPLY else HeadersFrame
            return cls(sid & MAX_STREAM_ID, self._parse_headers(p[4:]), flags)
        if ftype == RST_STREAM:
            need(n == 8, "RST_STREAM")
            sid, status = struct.unpack(">II", p)
            return RstStream(sid & MAX_STREAM_ID, status, flags)
        if ftype == SETTINGS:
            need(n >= 4, "SETTINGS")
            (count,) = struct.unpack_from(">I", p)
            need(n == 4 + 8 * count, "SETTINGS")
            entries = []
            for i in range(count):
                a, v = struct.unpack_from(">II", p, 4 + 8 * i)
                entries.append((a >> 24, a & 0xFFFFFF, v))
            return Settings(entries, flags)
        if ftype == PING:
            need(n == 4, "PING")
            return Ping(struct.unpack(">I", p)[0], flags)
        if ftype == GOAWAY:
            need(n == 8, "GOAWAY")
            last, status = struct.unpack(">II", p)
            return GoAway(last & MAX_STREAM_ID, status, flags)
        if ftype == WINDOW_UPDATE:
            need(n == 8, "WINDOW_UPDATE")
            sid, delta = struct.unpack(">II", p)
            return WindowUpdate(sid & MAX_STREAM_ID, delta & MAX_WINDOW, flags)
        return None  # unknown control frames are ignored (draft 3, 2.2.1)


# --- events ---------------------------------------------------------------------------------

@dataclass
class StreamOpened:
    """The peer opened a stream (answer with :meth:`Connection.reply` or reset it)."""
    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False


@dataclass
class StreamReplied:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class HeadersReceived:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class DataReceived:
    """Data (possibly empty) on a stream; ``fin``: the peer's half is closed."""
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass
class StreamReset:
    stream_id: int
    status: int


@dataclass
class WindowUpdated:
    """A send window grew (stream 0: the session's); data held back may go now."""
    stream_id: int
    delta: int


@dataclass
class PingAcknowledged:
    id: int


@dataclass
class SettingsReceived:
    entries: list[tuple[int, int, int]]


@dataclass
class GoAwayReceived:
    last_good_stream_id: int
    status: int


Event = StreamOpened | StreamReplied | HeadersReceived | DataReceived | StreamReset | \
    WindowUpdated | PingAcknowledged | SettingsReceived | GoAwayReceived


@dataclass
class StreamState:
    id: int
    local: bool                  # opened by us
    headers: Headers
    replied: bool = False        # SYN_REPLY sent (remote stream) / received (local stream)
    local_closed: bool = False   # we sent FIN
    remote_closed: bool = False  # the peer sent FIN
    send_window: int = DEFAULT_WINDOW
    recv_pending: int = 0        # bytes consumed but not yet given back by WINDOW_UPDATE


class Connection:
    """One SPDY session's state. Not thread-safe; every call may queue bytes for
    :meth:`data_to_send`. A stream is forgotten once both halves are closed or it is reset."""

    def __init__(self, client: bool = False, recv_window: int = DEFAULT_WINDOW) -> None:
        self.codec = Codec()
        self.client = client
        self.streams: dict[int, StreamState] = {}
        self._out = bytearray()
        self._next_id = 1 if client else 2
        self._next_ping = 1 if client else 2
        self.last_remote_id = 0
        self.initial_send_window = DEFAULT_WINDOW
        self.session_send_window = DEFAULT_WINDOW
        self.recv_window = recv_window
        self._session_recv_pending = 0
        self.flow_control = False  # enforce send windows (see the module doc)
        self.goaway_sent = False
        self.goaway_received = False
        self.broken = False

    # -- output
    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _send(self, f: Frame) -> None:
        self._out += self.codec.encode(f)

    def _is_remote_id(self, sid: int) -> bool:
        # client-initiated streams are odd
        return (sid % 2 == 1) != self.client

    def _forget_if_done(self, st: StreamState) -> None:
        if st.local_closed and st.remote_closed:
            self.streams.pop(st.id, None)

    # -- input
    def receive_data(self, data: bytes) -> list[Event]:
        if self.broken:
            return []
        try:
            frames = self.codec.feed(data)
        except ProtocolError:
            self.broken = True
            self._send(GoAway(self.last_remote_id, GOAWAY_PROTOCOL_ERROR))
            raise
        events: list[Event] = []
        for f in frames:
            ev = self._handle(f)
            if ev is not None:
                events.append(ev)
        return events

    def _reset_quietly(self, sid: int, status: int) -> None:
        self.streams.pop(sid, None)
        self._send(RstStream(sid, status))

    def _handle(self, f: Frame) -> Event | None:
        if isinstance(f, Data):
            st = self.streams.get(f.stream_id)
            if st is None:
                # a stream we reset or finished may still get frames in flight: ignore
                # those; data for a stream that never existed is the peer's mistake
                if f.stream_id > (self.last_remote_id if self._is_remote_id(f.stream_id)
                                  else self._next_id - 2):
                    self._send(RstStream(f.stream_id, INVALID_STREAM))
                return None
            if st.remote_closed:
                self._reset_quietly(st.id, STREAM_ALREADY_CLOSED)
                return StreamReset(st.id, STREAM_ALREADY_CLOSED)
            fin = bool(f.flags & FLAG_FIN)
            if fin:
                st.remote_closed = True
                self._forget_if_done(st)
            return DataReceived(st.id, f.data, fin)
        if isinstance(f, SynStream):
            sid = f.stream_id
            if sid == 0 or not self._is_remote_id(sid) or sid <= self.last_remote_id:
                self._send(RstStream(sid, PROTOCOL_ERROR))
                return None
            self.last_remote_id = sid
            if self.goaway_sent or self.goaway_received:
                self._send(RstStream(sid, REFUSED_STREAM))
                return None
            fin = bool(f.flags & FLAG_FIN)
            uni = bool(f.flags & FLAG_UNIDIRECTIONAL)
            st = StreamState(sid, False, f.headers, send_window=self.initial_send_window,
                             remote_closed=fin, local_closed=uni)
            self.streams[sid] = st
            self._forget_if_done(st)
            return StreamOpened(sid, f.headers, fin, uni)
        if isinstance(f, SynReply):
            st = self.streams.get(f.stream_id)
            if st is None or not st.local:
                if st is None and self._is_remote_id(f.stream_id):
                    self._send(RstStream(f.stream_id, PROTOCOL_ERROR))
                return None
            if st.replied:
                self._reset_quietly(st.id, STREAM_IN_USE)
                return StreamReset(st.id, STREAM_IN_USE)
            st.replied = True
            fin = bool(f.flags & FLAG_FIN)
            if fin:
                st.remote_closed = True
                self._forget_if_done(st)
            return StreamReplied(st.id, f.headers, fin)
        if isinstance(f, HeadersFrame):
            st = self.streams.get(f.stream_id)
            if st is None:
                return None
            fin = bool(f.flags & FLAG_FIN)
            if fin:
                st.remote_closed = True
                self._forget_if_done(st)
            return HeadersReceived(st.id, f.headers, fin)
        if isinstance(f, RstStream):
            if self.streams.pop(f.stream_id, None) is None:
                return None
            return StreamReset(f.stream_id, f.status)
        if isinstance(f, Ping):
            if (f.id % 2 == 1) == self.client:  # one of ours coming back
                return PingAcknowledged(f.id)
            self._send(Ping(f.id))
            return None
        if isinstance(f, Settings):
            for _flags, sid, value in f.entries:
                if sid == SETTINGS_INITIAL_WINDOW_SIZE and value <= MAX_WINDOW:
                    delta = value - self.initial_send_window
                    self.initial_send_window = value
                    for st in self.streams.values():
                        st.send_window += delta
                    self.flow_control = True
            return SettingsReceived(f.entries)
        if isinstance(f, WindowUpdate):
            self.flow_control = True
            if f.stream_id == 0:
                if f.delta == 0 or self.session_send_window + f.delta > MAX_WINDOW:
                    self.broken = True
                    self._send(GoAway(self.last_remote_id, GOAWAY_PROTOCOL_ERROR))
                    raise ProtocolError("invalid session WINDOW_UPDATE")
                self.session_send_window += f.delta
                return WindowUpdated(0, f.delta)
            st = self.streams.get(f.stream_id)
            if st is None:
                return None
            if f.delta == 0 or st.send_window + f.delta > MAX_WINDOW:
                self._reset_quietly(st.id, FLOW_CONTROL_ERROR)
                return StreamReset(st.id, FLOW_CONTROL_ERROR)
            st.send_window += f.delta
            return WindowUpdated(st.id, f.delta)
        if isinstance(f, GoAway):
            self.goaway_received = True
            return GoAwayReceived(f.last_good_stream_id, f.status)
        return None

    # -- actions
    def open_stream(self, headers: Headers, fin: bool = False, priority: int = 0) -> int:
        if self.goaway_sent or self.goaway_received:
            raise ProtocolError("the session is going away")
        sid = self._next_id
        if sid > MAX_STREAM_ID:
            raise ProtocolError("stream ids exhausted")
        self._next_id += 2
        self.streams[sid] = StreamState(sid, True, headers, local_closed=fin,
                                        send_window=self.initial_send_window)
        self._send(SynStream(sid, headers, FLAG_FIN if fin else 0, priority=priority))
        return sid

    def reply(self, stream_id: int, headers: Headers | None = None, fin: bool = False) -> None:
        st = self.streams[stream_id]
        st.replied = True
        self._send(SynReply(stream_id, headers or {}, FLAG_FIN if fin else 0))
        if fin:
            st.local_closed = True
            self._forget_if_done(st)

    def send_window(self, stream_id: int) -> int:
        """How many bytes :meth:`send_data` would accept now."""
        st = self.streams.get(stream_id)
        if st is None or st.local_closed:
            return 0
        if not self.flow_control:
            return MAX_WINDOW
        return max(0, min(st.send_window, self.session_send_window))

    def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> int:
        """Queue data frames; returns how many bytes of ``data`` were taken (fewer when the
        send window is short: wait for :class:`WindowUpdated`). FIN goes only with the last
        byte. Raises KeyError for a stream that is gone or already half-closed by us."""
        st = self.streams.get(stream_id)
        if st is None or st.local_closed:
            raise KeyError(stream_id)
        n = len(data)
        if self.flow_control:
            n = min(n, max(0, min(st.send_window, self.session_send_window)))
        view = memoryview(data)
        pos = 0
        while pos < n:
            chunk = view[pos:min(n, pos + DATA_CHUNK)]
            pos += len(chunk)
            last = pos == len(data)
            self._send(Data(stream_id, bytes(chunk), FLAG_FIN if (fin and last) else 0))
        st.send_window -= n
        self.session_send_window -= n
        if fin and n == len(data):
            if not data:
                self._send(Data(stream_id, b"", FLAG_FIN))
            st.local_closed = True
            self._forget_if_done(st)
        return n

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (an empty data frame with FIN); no-op if already done."""
        st = self.streams.get(stream_id)
        if st is None or st.local_closed:
            return
        self.send_data(stream_id, b"", fin=True)

    def consumed(self, stream_id: int, n: int) -> None:
        """The application processed ``n`` received bytes of the stream: give the window
        back (a WINDOW_UPDATE once half of it was used)."""
        if n <= 0:
            return
        self._session_recv_pending += n
        if self._session_recv_pending >= self.recv_window // 2:
            self._send(WindowUpdate(0, self._session_recv_pending))
            self._session_recv_pending = 0
        st = self.streams.get(stream_id)
        if st is None or st.remote_closed:
            return
        st.recv_pending += n
        if st.recv_pending >= self.recv_window // 2:
            self._send(WindowUpdate(stream_id, st.recv_pending))
            st.recv_pending = 0

    def reset(self, stream_id: int, status: int = CANCEL) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._send(RstStream(stream_id, status))

    def ping(self) -> int:
        pid = self._next_ping
        self._next_ping += 2
        self._send(Ping(pid))
        return pid

    def goaway(self, status: int = GOAWAY_OK) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            self._send(GoAway(self.last_remote_id, status))

    def settings(self, entries: list[tuple[int, int, int]]) -> None:
        for _fl, sid, value in entries:
            if sid == SETTINGS_INITIAL_WINDOW_SIZE:
                self.recv_window = value
        self._send(Settings(entries))
