"""A task's stdio from the client's side, as containerd's ``cio`` package does it for ctr.

The client creates the FIFOs (:class:`FifoSet`: a fresh directory under a FIFO root, files
``<id>-stdin``, ``<id>-stdout``, ``<id>-stderr``), passes their paths in Tasks/Create or
Tasks/Exec, and the runtime's shim opens the other ends. :class:`Attach` copies between
them and the local streams, one thread per stream:

- stdout/stderr: a blocking open for reading (returns when the shim opens its write end,
  during Create), then copy until EOF (the shim closes its end when the process and all
  its children closed theirs);
- stdin: a blocking open for writing (returns when the shim opens its read end), copy the
  local input until EOF, close, then the ``on_stdin_eof`` callback (Tasks/CloseIO), so
  ``cat`` in the container sees EOF.

Lifecycle: ``Attach(...).start()`` before Tasks/Create; after the process exited,
``wait_output(timeout)`` drains stdout/stderr; ``close()`` always (it unblocks threads still
waiting in ``open`` by opening the other end themselves, so nothing hangs if Create failed);
``FifoSet.remove()`` deletes the directory.

:class:`RawTerminal` puts a local terminal in raw mode and restores it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import termios
import threading
import tty
from dataclasses import dataclass
from typing import Callable

DEFAULT_FIFO_ROOT = "/run/ctrctl/fifo"
_CHUNK = 32 << 10


@dataclass
class FifoSet:
    """The FIFO paths of one process ("" for a stream not connected) and their directory."""

    dir: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def create(cls, root: str, name: str, *, stdin: bool, stdout: bool = True,
               stderr: bool = True) -> FifoSet:
        """mkfifo the wanted streams (mode 0700 dir, 0600 FIFOs) in a new dir under ``root``."""
        os.makedirs(root, mode=0o700, exist_ok=True)
        d = tempfile.mkdtemp(dir=root)
        fs = cls(d)
        try:
            for stream, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
                if wanted:
                    path = os.path.join(d, f"{name}-{stream}")
                    os.mkfifo(path, 0o600)
                    setattr(fs, stream, path)
        except BaseException:
            fs.remove()
            raise
        return fs

    def remove(self) -> None:
        """Remove the FIFOs and their directory (only FIFOs are unlinked: the dir is ours)."""
        for p in (self.stdin, self.stdout, self.stderr):
            if p:
                try:
                    if stat.S_ISFIFO(os.lstat(p).st_mode):
                        os.unlink(p)
                except FileNotFoundError:
                    pass
        try:
            os.rmdir(self.dir)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.dir, ignore_errors=True)


class _Pipe(threading.Thread):
    """Opens one FIFO (blocking) and copies between it and a local fd."""

    def __init__(self, path: str, reading: bool, local_fd: int,
                 done: Callable[[], None] | None = None) -> None:
        super().__init__(daemon=True, name=f"stdio {os.path.basename(path)}")
        self.path, self.reading, self.local_fd, self.done = path, reading, local_fd, done
        self.closing = False
        self.opened = threading.Event()

    def run(self) -> None:
        try:
            fd = os.open(self.path, (os.O_RDONLY if self.reading else os.O_WRONLY)
                         | os.O_CLOEXEC)
        except OSError:
            return
        self.opened.set()
        try:
            if self.closing:
                return
            if self.reading:
                self._copy(fd, self.local_fd)
            else:
                self._copy(self.local_fd, fd)
        finally:
            os.close(fd)
        if not self.reading and self.done is not None and not self.closing:
            self.done()

    def _copy(self, src: int, dst: int) -> None:
        while not self.closing:
            try:
                data = os.read(src, _CHUNK)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                return
            if not data:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(dst, view)
                except OSError as e:  # EPIPE: the other side went away
                    if e.errno == errno.EINTR:
                        continue
                    return
                view = view[n:]

    def unblock(self) -> None:
        """Make a thread stuck in ``open`` return: open the other end ourselves."""
        self.closing = True
        if self.opened.is_set():
            return
        flags = (os.O_WRONLY if self.reading else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            os.close(os.open(self.path, flags))
        except OSError:
            pass  # ENXIO: no reader waiting yet (or the FIFO is gone)


class Attach:
    """Copies a process's FIFOs to and from local fds (see the module docstring)."""

    def __init__(self, fifos: FifoSet, *, stdin_fd: int | None = None, stdout_fd: int = 1,
                 stderr_fd: int = 2, on_stdin_eof: Callable[[], None] | None = None) -> None:
        self.fifos = fifos
        self.outputs: list[_Pipe] = []
        self.input: _Pipe | None = None
        if fifos.stdout:
            self.outputs.append(_Pipe(fifos.stdout, True, stdout_fd))
        if fifos.stderr:
            self.outputs.append(_Pipe(fifos.stderr, True, stderr_fd))
        if fifos.stdin and stdin_fd is not None:
            self.input = _Pipe(fifos.stdin, False, stdin_fd, on_stdin_eof)

    def start(self) -> Attach:
        for t in self.outputs:
            t.start()
        if self.input is not None:
            self.input.start()
        return self

    def wait_output(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds in all for stdout/stderr to reach EOF."""
        import time

        deadline = time.monotonic() + timeout
        for t in self.outputs:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.outputs)

    def close(self) -> None:
        """Stop copying; threads still blocked in ``open`` are released. The input thread
        may stay blocked reading the local stdin: it is a daemon thread and writes nowhere."""
        for t in self.outputs + ([self.input] if self.input else []):
            t.unblock()
        for t in self.outputs:
            t.join(1.0)
            if t.is_alive():
                t.unblock()


class RawTerminal:
    """Raw mode for the terminal on ``fd`` (if it is one) until :meth:`restore`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list | None = None

    def __enter__(self) -> RawTerminal:
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def restore(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None

    def __exit__(self, *exc: object) -> None:
        self.restore()


def terminal_size(fds: tuple[int, ...] = (1, 0, 2)) -> tuple[int, int] | None:
    """(columns, rows) of the first of ``fds`` that is a terminal, or None."""
    for fd in fds:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        return size.columns, size.lines
    return None
