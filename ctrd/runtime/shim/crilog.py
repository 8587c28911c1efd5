"""Container output in the kubelet's CRI log format, written by the shim.

A stdio URI ``file:///abs/path?format=cri&max_line=N&stream=stdout|stderr`` (the CRI plugin's;
the path percent-encoded) asks for it. Each line the process prints becomes

    <RFC3339Nano local time> <stdout|stderr> <F|P> <content>\\n

as containerd's ``pkg/cri/io/logger.go`` writes it: ``\\n`` and ``\\r\\n`` end a line (both are
dropped); a line longer than ``max_line`` bytes is cut into ``P`` chunks of ``max_line`` bytes
and a last ``F`` chunk; output that does not end in a newline at EOF is written as ``P``;
``max_line`` <= 0 (the CRI config's -1) means no limit.

Lifecycle and threads: :class:`LogFile` is the one writer of a path (shared, refcounted, by the
stdout and stderr of a process: both URIs name the same file), :class:`Stream` copies one pipe
into it. The process writes into the pipe (its write end is the runtime's fd 1 or 2); the
stream's thread reads it, formats whole lines and appends them under the file's lock, so lines
of stdout and stderr never interleave mid-line. Disk writes happen on that thread, never on the
shim's loop: a slow disk stalls the thread, then the pipe, then the container's writes (the
back-pressure containerd's goroutines give), and the shim keeps answering. A stream ends at
EOF (every copy of the write end closed) or when :meth:`Stream.stop` is called; it tells the
loop through ``on_done`` (run with ``loop.call_soon_threadsafe``).

Reopen (:meth:`LogFile.reopen`, ReopenContainerLog after the kubelet renamed the file): the new
file is opened (created) on the caller's thread, so errors reach the caller; the writer swaps
it in before its next write, or at once when the lock is free.
"""

from __future__ import annotations

import _thread
import errno
import os
import select
import time

from ctrd import errdefs

FORMAT_CRI = "cri"
STREAMS = ("stdout", "stderr")
_READ = 65536
_FILE_MODE = 0o640  # containerd's CRI opens log files with the same mode


# --- URIs --------------------------------------------------------------------------------

def unquote(s: str) -> str:
    """Percent-decoding (url.Parse's path unescaping; ``+`` stays ``+`` in a path)."""
    if "%" not in s:
        return s
    out = bytearray()
    b = s.encode()
    i = 0
    while i < len(b):
        if b[i] == 0x25:  # %
            try:
                out.append(int(b[i + 1:i + 3], 16))
                if len(b[i + 1:i + 3]) != 2:
                    raise ValueError
            except ValueError:
                raise errdefs.InvalidArgument(f"invalid URL escape in {s!r}") from None
            i += 3
        else:
            out.append(b[i])
            i += 1
    return out.decode(errors="surrogateescape")


def parse_file_uri(uri: str) -> tuple[str, dict[str, str]]:
    """``file://PATH?QUERY`` -> (decoded absolute path, query parameters)."""
    rest = uri[len("file://"):]
    rest, _, query = rest.partition("?")
    path = unquote(rest)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    params: dict[str, str] = {}
    for part in query.split("&") if query else ():
        k, _, v = part.partition("=")
        params[unquote(k.replace("+", " "))] = unquote(v.replace("+", " "))
    return path, params


class CriOptions:
    """The CRI log parameters of one stdio URI."""

    __slots__ = ("stream", "max_line")

    def __init__(self, stream: str, max_line: int) -> None:
        self.stream, self.max_line = stream, max_line


def cri_options(params: dict[str, str], slot: str, uri: str) -> CriOptions | None:
    """None for a plain ``file://`` URI; the CRI options for ``format=cri``; InvalidArgument
    naming the problem otherwise."""
    fmt = params.get("format", "")
    if not fmt:
        return None
    if fmt != FORMAT_CRI:
        raise errdefs.InvalidArgument(f"{slot} {uri!r}: unknown log format {fmt!r} "
                                      f"(supported: {FORMAT_CRI})")
    stream = params.get("stream", slot)
    if stream not in STREAMS:
        raise errdefs.InvalidArgument(f"{slot} {uri!r}: stream must be stdout or stderr, "
                                      f"not {stream!r}")
    try:
        max_line = int(params.get("max_line", "0"))
    except ValueError:
        raise errdefs.InvalidArgument(f"{slot} {uri!r}: max_line must be an integer, not "
                                      f"{params['max_line']!r}") from None
    return CriOptions(stream, max_line)


# --- the format ----------------------------------------------------------------------------

_ts_cache: list = [-1, b""]


def timestamp(ns: int) -> bytes:
    """Go's ``time.RFC3339Nano`` of a local time: trailing zeros of the fraction dropped (no
    dot at all for a whole second), ``Z`` for UTC, else ``+hh:mm``."""
    sec, frac = divmod(ns, 1_000_000_000)
    if _ts_cache[0] != sec:
        t = time.localtime(sec)
        off = t.tm_gmtoff or 0
        if off == 0:
            tz = "Z"
        else:
            sign = "+" if off > 0 else "-"
            h, m = divmod(abs(off) // 60, 60)
            tz = f"{sign}{h:02d}:{m:02d}"
        _ts_cache[0] = sec
        _ts_cache[1] = (time.strftime("%Y-%m-%dT%H:%M:%S", t), tz)
    base, tz = _ts_cache[1]
    if frac:
        return f"{base}.{frac:09d}".rstrip("0").encode() + tz.encode()
    return (base + tz).encode()


class Formatter:
    """Bytes in, CRI log lines out (pure; no I/O). ``feed`` returns the lines completed by
    ``data``; :meth:`eof` returns what is left as a partial line."""

    __slots__ = ("tag", "max_line", "pending")

    def __init__(self, stream: str, max_line: int) -> None:
        self.tag = stream.encode()
        self.max_line = max_line if max_line > 0 else 0
        self.pending = b""  # the current line's bytes not yet written

    def _line(self, ts: bytes, kind: bytes, content: bytes) -> bytes:
        return b"%s %s %s %s\n" % (ts, self.tag, kind, content)

    def _chunks(self, ts: bytes, line: bytes, out: list[bytes]) -> bytes:
        """Write the P chunks of an over-long ``line``; returns what remains."""
        n = self.max_line
        while n and len(line) > n:
            out.append(self._line(ts, b"P", line[:n]))
            line = line[n:]
        return line

    def feed(self, data: bytes, ts: bytes) -> bytes:
        out: list[bytes] = []
        buf = self.pending + data if self.pending else data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl  # \r\n
            rest = self._chunks(ts, buf[start:end], out)
            out.append(self._line(ts, b"F", rest))
            start = nl + 1
        tail = buf[start:]
        n = self.max_line
        # Cut what cannot become a full line any more; keep a trailing \r that may be half
        # of a \r\n (containerd's reader unreads it too).
        while n and len(tail) > n and not (len(tail) == n + 1 and tail.endswith(b"\r")):
            out.append(self._line(ts, b"P", tail[:n]))
            tail = tail[n:]
        self.pending = tail
        return b"".join(out)

    def eof(self, ts: bytes) -> bytes:
        """The unterminated rest, as P chunks (nothing when there is none)."""
        if not self.pending:
            return b""
        out: list[bytes] = []
        rest = self._chunks(ts, self.pending, out)
        if rest:
            out.append(self._line(ts, b"P", rest))
        self.pending = b""
        return b"".join(out)


# --- files and streams ---------------------------------------------------------------------

def open_log(path: str) -> int:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    except OSError as e:
        raise errdefs.InvalidArgument(f"open log file {path}: {e.strerror}") from None


class LogFile:
    """The single writer of one log path. Get it with :func:`acquire`, give it back with
    :meth:`release` (the last release closes it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_log(path)
        self.lock = _thread.allocate_lock()
        self.refs = 0
        self._next = -1  # a reopened fd waiting to be swapped in

    def write(self, fmt: Formatter, data: bytes | None) -> None:
        """Format ``data`` (None: EOF) and append the lines, atomically w.r.t. the other
        streams of this file. Write errors are dropped: the output must keep draining."""
        with self.lock:
            self._swap()
            ts = timestamp(time.time_ns())
            out = fmt.eof(ts) if data is None else fmt.feed(data, ts)
            view = memoryview(out)
            while view:
                try:
                    n = os.write(self.fd, view)
                except InterruptedError:
                    continue
                except OSError:
                    break  # disk full, file gone: containerd logs and goes on, too
                view = view[n:]

    def _swap(self) -> None:
        if self._next >= 0:
            old, self.fd, self._next = self.fd, self._next, -1
            os.close(old)

    def reopen(self) -> None:
        """Open the path again (creating it) and use it from now on."""
        fd = open_log(self.path)
        if self.lock.acquire(False):
            try:
                if self._next >= 0:
                    os.close(self._next)
                self._next = fd
                self._swap()
            finally:
                self.lock.release()
        else:
            # A writer holds the lock (perhaps stuck on a slow disk): it swaps before its
            # next write. Never wait for it on the loop.
            prev, self._next = self._next, fd
            if prev >= 0:
                os.close(prev)

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            _files.pop(self.path, None)
            with self.lock:
                self._swap()
                os.close(self.fd)
                self.fd = -1


_files: dict[str, LogFile] = {}


def acquire(path: str) -> LogFile:
    f = _files.get(path)
    if f is None:
        f = _files[path] = LogFile(path)
    f.refs += 1
    return f


class Stream:
    """Copies a pipe into a :class:`LogFile` on its own thread. Lifecycle: ``Stream(file,
    options)`` makes the pipe; give :attr:`write_fd` to the process (the creator closes its
    copy with :meth:`close_write`), :meth:`start`; ``on_done`` runs once the stream ended
    (EOF or :meth:`stop`) and everything read was written, on the stream's thread (or the
    caller's, for a stream never started): the owner then releases the file on its loop.
    """

    def __init__(self, file: LogFile, options: CriOptions) -> None:
        self.file = file
        self.fmt = Formatter(options.stream, options.max_line)
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.done = False
        self.on_done = None  # set by the owner; called on the thread: use call_soon_threadsafe
        self._started = False

    def close_write(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def start(self) -> None:
        self._started = True
        _thread.start_new_thread(self._run, ())

    def stop(self) -> None:
        """End the copy now (what is already read is still written)."""
        if not self._started:
            self._finish()
            return
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def _run(self) -> None:
        p = select.poll()
        p.register(self.read_fd, select.POLLIN)
        p.register(self._stop_r, select.POLLIN)
        try:
            while True:
                try:
                    ready = p.poll()
                except InterruptedError:
                    continue
                if any(fd == self._stop_r for fd, _ in ready):
                    break
                try:
                    data = os.read(self.read_fd, _READ)
                except InterruptedError:
                    continue
                except OSError as e:
                    if e.errno == errno.EAGAIN:
                        continue
                    data = b""
                if not data:
                    break
                self.file.write(self.fmt, data)
            self.file.write(self.fmt, None)
        finally:
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        for fd in (self.read_fd, self._stop_r, self._stop_w):
            os.close(fd)
        self.read_fd = self._stop_r = self._stop_w = -1
        self.close_write()
        cb = self.on_done
        if cb is not None:
            cb()
