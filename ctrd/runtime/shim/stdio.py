"""A process's stdio: what the client asked for (FIFO paths, ``file://`` URIs), opened for the
OCI runtime, and the pty copy of terminal processes.

Without a terminal, output is not copied: the opened fds become the runtime's fds 1-2 and the
runtime passes them through to the process.

- stdin (a FIFO path): copied by the shim into a pipe the process reads (see
  :class:`ProcessIO` for why, and for its EOF rules) — the one copy of non-terminal I/O.
- stdout/stderr FIFO: opened read-write, which never blocks and keeps the FIFO usable while
  no client reads (output waits in the pipe instead of killing the process with SIGPIPE, as
  with containerd's shim).
- ``file:///path``: opened for appending (created with its directory if needed).
- ``file:///path?format=cri&max_line=N&stream=S`` (the CRI plugin's): the kubelet's log
  format, written by :mod:`.crilog` from a pipe the process writes into (a copy, on a thread
  per stream; see there). The one other copy of non-terminal output.
- ``binary://``: not implemented (UNIMPLEMENTED with a message saying so).

With a terminal the runtime sends the pty master over a console socket
(:class:`ConsoleSocket`); :class:`PtyCopy` copies stdin -> master -> stdout on the loop with
back-pressure (a slow reader pauses the pty, never the shim).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import socket
import stat
import struct

from ctrd import errdefs
from ctrd.runtime.shim import crilog, log
from ctrd.runtime.shim.loop import Loop

_BUF = 32768


class Stdio:
    """The client's view: paths as given, and whether there is a terminal."""

    __slots__ = ("stdin", "stdout", "stderr", "terminal")

    def __init__(self, stdin: str = "", stdout: str = "", stderr: str = "",
                 terminal: bool = False) -> None:
        self.stdin, self.stdout, self.stderr, self.terminal = stdin, stdout, stderr, terminal


def _scheme(uri: str) -> tuple[str, str]:
    if "://" not in uri:
        return "fifo", uri
    scheme, _, rest = uri.partition("://")
    if scheme == "file":
        return "file", "/" + rest.lstrip("/") if rest else ""
    return scheme, rest


def _open_output(uri: str, name: str, streams: list) -> int:
    """The fd a process writes ``name`` into; a CRI log's :class:`~.crilog.Stream` (whose
    pipe that fd is) is appended to ``streams``."""
    scheme, path = _scheme(uri)
    if scheme == "binary":
        raise errdefs.NotImplemented_(f"{name} {uri!r}: binary:// logging is not supported "
                                      f"by containerd-shim-ctrd-v2")
    if scheme == "file":
        path, params = crilog.parse_file_uri(uri)
        if not path or not os.path.isabs(path):
            raise errdefs.InvalidArgument(f"{name} {uri!r}: file:// needs an absolute path")
        cri = crilog.cri_options(params, name, uri)
        if cri is not None:
            f = crilog.acquire(path)
            try:
                st = crilog.Stream(f, cri)
            except BaseException:
                f.release()
                raise
            streams.append(st)
            fd, st.write_fd = st.write_fd, -1  # the caller's now
            return fd
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise errdefs.InvalidArgument(f"{name} {path}: {e.strerror}") from None
    if scheme != "fifo":
        raise errdefs.InvalidArgument(f"{name} {uri!r}: unknown STDIO scheme {scheme}")
    return _open_fifo(path, name, os.O_RDWR)


def _open_fifo(path: str, name: str, mode: int) -> int:
    try:
        fd = os.open(path, mode | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise errdefs.InvalidArgument(f"open {name} fifo {path}: {e.strerror}") from None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise errdefs.InvalidArgument(f"{name} {path}: not a fifo")
    return fd


def _blocking(fd: int) -> int:
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
    return fd


class ProcessIO:
    """The opened stdio of one process. Lifecycle: ``ProcessIO(stdio)`` opens everything (a
    failure closes what was opened); :meth:`runtime_fds` for the runtime command, then
    :meth:`handed_over` (non-terminal) or :class:`PtyCopy` takes the fds over;
    :meth:`close_stdin` on CloseIO; :meth:`close` at delete.

    stdin is copied (FIFO -> pipe -> process) rather than handed over, to give containerd's
    EOF semantics: the process sees EOF when the client closed its end before the process
    was created, or later once the client closed and CloseIO closed the shim's own writer
    (which keeps a detaching client from ending the process's input).

    CRI log streams (:mod:`.crilog`) run from creation until their pipe's EOF;
    :meth:`when_drained` tells when everything the process wrote is in the file,
    :meth:`reopen_logs` reopens their files.
    """

    def __init__(self, stdio: Stdio, loop: Loop | None = None) -> None:
        self.stdio = stdio
        self.loop = loop
        self.stdin_path = ""
        self.stdin_r = self.stdin_keep = self.pipe_r = self.pipe_w = self.out = self.err = -1
        self._copy: _Pipe | None = None
        self.streams: list[crilog.Stream] = []
        self._drained: list = []
        self._drain_timer = None
        try:
            if stdio.stdin:
                scheme, path = _scheme(stdio.stdin)
                if scheme != "fifo":
                    raise errdefs.InvalidArgument(f"stdin {stdio.stdin!r}: must be a fifo")
                self.stdin_path = path
                self.stdin_r = _open_fifo(path, "stdin", os.O_RDONLY)
                if not stdio.terminal:
                    self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC)
            if stdio.stdout:
                self.out = _open_output(stdio.stdout, "stdout", self.streams)
            if stdio.stderr and not stdio.terminal:
                self.err = (os.dup(self.out) if stdio.stderr == stdio.stdout
                            else _open_output(stdio.stderr, "stderr", self.streams))
            if self.streams:
                if loop is None:
                    raise errdefs.InvalidArgument("CRI log format needs the shim's loop")
                loop.enable_threads()
                for st in self.streams:
                    st.on_done = lambda st=st: loop.call_soon_threadsafe(self._stream_done, st)
                    st.start()
        except BaseException:
            self.close()
            raise

    # -- CRI log streams
    def _stream_done(self, st: "crilog.Stream") -> None:
        st.file.release()
        if all(s.done for s in self.streams):
            self._fire_drained()

    @property
    def draining(self) -> bool:
        """True while a CRI log stream is still copying."""
        return any(not s.done for s in self.streams)

    def when_drained(self, callback, timeout: float) -> None:
        """``callback()`` on the loop once every CRI log stream ended, or after ``timeout``
        seconds (a daemonized child may hold the pipe forever; containerd waits 2 s too)."""
        if not self.draining:
            callback()
            return
        self._drained.append(callback)
        if self._drain_timer is None and self.loop is not None:
            self._drain_timer = self.loop.call_later(timeout, self._fire_drained)

    def _fire_drained(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        cbs, self._drained = self._drained, []
        for cb in cbs:
            cb()

    def reopen_logs(self) -> None:
        files = {id(s.file): s.file for s in self.streams if not s.done}
        if not files:
            raise errdefs.FailedPrecondition("the task has no CRI log file to reopen")
        for f in files.values():
            f.reopen()

    def runtime_fds(self, devnull: int) -> tuple[int, int, int]:
        """fds 0-2 of the runtime command (blocking, as a process expects its stdio)."""
        return tuple(_blocking(fd) if fd >= 0 else devnull
                     for fd in (self.pipe_r, self.out, self.err))  # type: ignore[return-value]

    def handed_over(self, loop: Loop) -> None:
        """The process holds its own copies now: drop ours, start copying stdin."""
        for attr in ("pipe_r", "out", "err"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        if self.stdin_r >= 0:
            self.keep_stdin()
            self._copy = _Pipe(loop, self.stdin_r, self.pipe_w, self._stdin_eof)

    def keep_stdin(self) -> None:
        """Open the shim's own writer on the stdin FIFO, unless the client already came and
        went (POLLHUP: a writer connected and closed), whose EOF must reach the process."""
        p = select.poll()
        p.register(self.stdin_r, select.POLLIN)
        if any(ev & select.POLLHUP for _, ev in p.poll(0)):
            return
        self.stdin_keep = os.open(self.stdin_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def _stdin_eof(self) -> None:
        for attr in ("stdin_r", "pipe_w"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        self._copy = None

    def close_stdin(self) -> None:
        if self.stdin_keep >= 0:
            os.close(self.stdin_keep)
            self.stdin_keep = -1

    def close(self) -> None:
        self.close_stdin()
        if self._copy is not None:
            self._copy.stop()
        self._stdin_eof()
        for attr in ("pipe_r", "out", "err"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        for st in self.streams:
            if st.done:
                continue
            st.stop()  # what was read is still written; the file is released when it ended
            if st.on_done is None:
                st.file.release()  # set up failed before the stream got its callback


class ConsoleSocket:
    """A unix socket the runtime connects to, to send the pty master (``--console-socket``).
    Lifecycle: create, pass :attr:`path`, :meth:`receive_master` after the runtime command,
    :meth:`close` (removes the socket file) always."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o711, exist_ok=True)
        self.path = os.path.join(directory, "pty-" + os.urandom(8).hex())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)

    def receive_master(self, timeout: float = 10.0) -> int:
        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except socket.timeout:
            raise errdefs.CtrdError("failed to retrieve console master: timed out") from None
        with conn:
            conn.settimeout(timeout)
            fds = array.array("i")
            msg, anc, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
            for level, type_, data in anc:
                if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if not fds:
            raise errdefs.CtrdError("failed to retrieve console master: no fd received")
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def resize(fd: int, width: int, height: int) -> None:
    import termios  # only terminal tasks pay for it

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class _Pipe:
    """One direction of a copy: read src when dst can take it, hold at most one buffer."""

    __slots__ = ("loop", "src", "dst", "buf", "eof", "on_eof")

    def __init__(self, loop: Loop, src: int, dst: int, on_eof) -> None:
        self.loop, self.src, self.dst, self.buf, self.eof = loop, src, dst, b"", False
        self.on_eof = on_eof
        os.set_blocking(src, False)
        os.set_blocking(dst, False)
        loop.add_reader(src, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.src, _BUF)
        except BlockingIOError:
            return
        except OSError as e:
            # EIO: the pty's other side is closed (the process exited).
            if e.errno not in (errno.EIO, errno.EBADF):
                log.warning("pty copy read failed", error=e.strerror)
            data = b""
        if not data:
            self.stop()
            self.on_eof()
            return
        self.buf = data
        self._writable()

    def _writable(self) -> None:
        while self.buf:
            try:
                n = os.write(self.dst, self.buf)
            except BlockingIOError:
                self.loop.remove_reader(self.src)
                self.loop.add_writer(self.dst, self._writable)
                return
            except OSError:
                self.buf = b""  # reader gone: drop, keep draining the pty
                break
            self.buf = self.buf[n:]
        self.loop.remove_writer(self.dst)
        if not self.eof:
            self.loop.add_reader(self.src, self._readable)

    def stop(self) -> None:
        self.eof = True
        self.loop.remove_reader(self.src)
        self.loop.remove_writer(self.dst)


class PtyCopy:
    """Copies between a pty master and a process's stdio FIFOs/file. Lifecycle: start after
    the master arrived; it ends itself when the master reports EOF/EIO (all slave ends
    closed), closing its output so the client sees EOF; :meth:`close` at delete."""

    def __init__(self, loop: Loop, master: int, io: ProcessIO) -> None:
        self.loop, self.master, self.io = loop, master, io
        # Ours now: the output is closed when the pty is drained, so the client sees EOF.
        self.out = io.out if io.out >= 0 else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        if io.stdin_r >= 0:
            io.keep_stdin()
        stdin, io.out, io.stdin_r = io.stdin_r, -1, -1
        self._in = None
        self._out = _Pipe(loop, master, self.out, self._out_done)
        if stdin >= 0:
            self._in = _Pipe(loop, stdin, os.dup(master), self._in_done)

    def _out_done(self) -> None:
        if self.out >= 0:
            os.close(self.out)
            self.out = -1

    def _in_done(self) -> None:
        if self._in is not None:
            self._in.stop()
            os.close(self._in.src)
            os.close(self._in.dst)
            self._in = None

    def resize(self, width: int, height: int) -> None:
        resize(self.master, width, height)

    def close(self) -> None:
        self._out.stop()
        self._out_done()
        self._in_done()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
