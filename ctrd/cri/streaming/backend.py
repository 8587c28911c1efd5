"""The CRI side of streaming sessions: exec, attach and port-forward on ctrd's containers.

- exec: a task exec whose stdio are FIFOs the daemon opens (``<state>/exec/<exec id>/``):
  stdin written from the client (its EOF closes ours and CloseIO's the shim's), stdout and
  stderr read into the client (a TTY exec has stdout only; resizes go to ResizePty). The exit
  status comes from Wait; the process is deleted afterwards and its FIFOs removed. A client
  that goes away gets its process killed (containerd's execInternal does the same).
- attach: the container's main process. Output from attach time on: with a log file,
  followed from its end (the shim writes it; lines ``<ts> <stdout|stderr> <P|F> <text>``);
  without one, from the output FIFOs the daemon reads (:mod:`.attach_io`). Input goes to the
  container's stdin FIFO (made at start when the container config has stdin). At the
  client's stdin EOF, ``stdin_once`` without a tty closes the container's stdin and the
  session lasts until the container stops; otherwise the client detaches (the session ends,
  the container's stdin stays open). The session also ends when the container stops or the
  client goes.
- port-forward: a TCP connection to 127.0.0.1:<port> (then [::1]) made inside the pod's
  network namespace (the socket is created there, :func:`ctrd.cri.netns.run_in_ns`), copied
  both ways with half-closes passed on.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.images import NAMESPACE
from ctrd.cri.streaming.portforward import ForwardError
from ctrd.cri.streaming.remotecommand import Streams

log = logging.getLogger("ctrd.cri.streaming")

CHUNK = 64 * 1024
OUTPUT_DRAIN = 5.0       # seconds to wait for an exited process's output to reach EOF
LOG_POLL = 0.05          # seconds between looks at a followed log file
CONNECT_TIMEOUT = 10.0
HALF_CLOSE_GRACE = 1.0   # containerd waits 1 s for the other direction after one ended


def stdin_fifo(state_dir: str, container_id: str) -> str:
    """Where a container's stdin FIFO lives (made by the CRI core at start)."""
    return os.path.join(state_dir, "containers", container_id, "stdin")


class FifoReader:
    """The read end of a FIFO (made here), non-blocking on the loop. ``read()`` returns
    ``b""`` once every writer that came has gone (before any writer came it just waits)."""

    def __init__(self, path: str) -> None:
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._seen_data = False

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(self.fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            loop.remove_reader(self.fd)

    async def read(self) -> bytes:
        while True:
            if self.fd < 0:
                return b""
            if not self._seen_data:
                # before any writer came, read() would say EOF: wait for poll to say so
                await self._readable()
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                await self._readable()
                continue
            self._seen_data = True
            return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FdWriter:
    """A non-blocking write end (a FIFO), written on the loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            if self.fd < 0:
                raise BrokenPipeError("closed")
            try:
                n = os.write(self.fd, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            fut = loop.create_future()
            loop.add_writer(self.fd, lambda: fut.done() or fut.set_result(None))
            try:
                await fut
            finally:
                loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def _pump_out(src, dst) -> None:
    """Copy a FIFO into a client channel until EOF; a client that is gone ends it."""
    while True:
        data = await src.read()
        if not data:
            return
        try:
            await dst.write(data)
        except ConnectionError:
            return


async def _resize_loop(queue: asyncio.Queue, fn) -> None:
    while True:
        size = await queue.get()
        try:
            await fn(size.width, size.height)
        except errdefs.CtrdError as e:
            log.debug("resize: %s", e)


async def _cancel(*tasks) -> None:
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if live:
        await asyncio.gather(*live, return_exceptions=True)


async def _drain(src) -> None:
    """Read a client channel nobody uses to its EOF (so it never fills the session)."""
    while await src.read():
        pass


async def _relay_out(sub, s: Streams) -> None:
    """A log-less container's output (:mod:`.attach_io`) into the client's stdout/stderr
    until it ended; a client that went away ends it."""
    while True:
        item = await sub.get()
        if item is None:
            return
        stream, data = item
        dst = s.stdout if (stream == "stdout" or s.tty) else s.stderr
        if dst is not None:
            try:
                await dst.write(data)
            except ConnectionError:
                return


def parse_cri_log_line(line: bytes) -> tuple[str, bytes] | None:
    """(stream, content with its newline when the line was full) of one log line."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    stream, tag = parts[1].decode("ascii", "replace"), parts[2]
    content = parts[3] if len(parts) == 4 else b""
    if stream not in ("stdout", "stderr"):
        return None
    return stream, content + (b"\n" if tag == b"F" else b"")


class CRIBackend:
    """Exec, attach and port-forward for the streaming server, on a :class:`CRIRuntime`."""

    def __init__(self, rt) -> None:
        self.rt = rt

    def _running(self, container_id: str):
        meta, status = self.rt.records.container(container_id)
        if status.state != st.RUNNING:
            raise errdefs.FailedPrecondition(f"container {meta.id} is not running")
        return meta, self.rt.manager.get(NAMESPACE, meta.id)

    # --- validation at the CRI call (before a URL is handed out) -----------------------

    def check_container(self, container_id: str) -> None:
        meta, status = self.rt.records.container(container_id)
        if status.state != st.RUNNING:
            from ctrd.cri.helpers import STATE_NAMES

            raise errdefs.FailedPrecondition(
                f"container is in {STATE_NAMES.get(status.state, 'unknown')} state")

    def check_sandbox(self, sandbox_id: str) -> None:
        meta, status = self.rt.records.sandbox(sandbox_id)
        if status.state != st.SANDBOX_READY:
            raise errdefs.FailedPrecondition(f"sandbox {meta.id} is not running")

    # --- exec -----------------------------------------------------------------------------

    async def exec(self, req, s: Streams) -> int:
        from google.protobuf import any_pb2

        from ctrd.cri import spec as cri_spec

        meta, task = self._running(req.container_id)
        c = await asyncio.to_thread(self.rt.containers.get, NAMESPACE, meta.id)
        process = cri_spec.exec_process(json.loads(c.spec.value), list(req.cmd), tty=s.tty)
        spec_any = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps(process).encode())
        exec_id = secrets.token_hex(16)
        d = os.path.join(self.rt.state, "exec", exec_id)
        os.makedirs(d, mode=0o700)
        out = err = stdin = None
        pumps: list[asyncio.Task] = []
        try:
            paths = {"stdin": "", "stdout": "", "stderr": ""}
            if s.stdout is not None:
                paths["stdout"] = os.path.join(d, "stdout")
                out = FifoReader(paths["stdout"])
            if s.stderr is not None and not s.tty:
                paths["stderr"] = os.path.join(d, "stderr")
                err = FifoReader(paths["stderr"])
            if s.stdin is not None:
                paths["stdin"] = os.path.join(d, "stdin")
                os.mkfifo(paths["stdin"], 0o600)
                # O_RDWR: opening never waits for (or fails without) the shim's reader
                stdin = FdWriter(os.open(paths["stdin"],
                                         os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
            await task.exec(exec_id, terminal=s.tty, spec=spec_any, **paths)
            try:
                waiter = asyncio.ensure_future(task.wait(exec_id))
                try:
                    await task.start(exec_id)
                except BaseException:
                    waiter.cancel()
                    raise
                if out is not None:
                    pumps.append(asyncio.ensure_future(_pump_out(out, s.stdout)))
                if err is not None:
                    pumps.append(asyncio.ensure_future(_pump_out(err, s.stderr)))
                extra = []
                if stdin is not None:
                    extra.append(asyncio.ensure_future(
                        self._pump_in(s.stdin, stdin, task, exec_id)))
                if s.resize is not None:
                    extra.append(asyncio.ensure_future(_resize_loop(
                        s.resize, lambda w, h: task.resize_pty(exec_id, w, h))))
                gone = asyncio.ensure_future(s.gone.wait())
                try:
                    await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                if not waiter.done():  # the client went away: the process goes too
                    try:
                        await task.kill(signal.SIGKILL, exec_id=exec_id)
                    except errdefs.CtrdError:
                        pass
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter), 10)
                    except TimeoutError:
                        waiter.cancel()
                        raise errdefs.DeadlineExceeded("exec process did not exit") from None
                elif pumps:
                    await asyncio.wait(pumps, timeout=OUTPUT_DRAIN)
                await _cancel(*extra)
                return waiter.result().exit_status
            finally:
                await _cancel(*pumps)
                try:
                    await task.delete_process(exec_id)
                except errdefs.CtrdError:
                    pass
        finally:
            for x in (out, err, stdin):
                if x is not None:
                    x.close()
            shutil.rmtree(d, ignore_errors=True)

    async def _pump_in(self, src, dst: FdWriter, task, exec_id: str,
                       close_io: bool = True) -> None:
        """Client stdin into a FIFO; at its EOF close our end and CloseIO (the shim then
        closes its own writer and the process reads EOF)."""
        try:
            while True:
                data = await src.read()
                if not data:
                    break
                await dst.write(data)
        except OSError as e:
            log.debug("stdin of %s: %s", exec_id or "init", e)
        finally:
            dst.close()
        if close_io:
            try:
                await task.close_io(exec_id, stdin=True)
            except errdefs.CtrdError as e:
                log.debug("close stdin of %s: %s", exec_id or "init", e)

    # --- attach ---------------------------------------------------------------------------

    async def attach(self, req, s: Streams) -> None:
        """containerd's ContainerIO.Attach: output from now on until it ends (the container
        stopped) or the client goes; the client's stdin (when the container has one) goes
        to the container's stdin FIFO. At the client's stdin EOF (SPDY FIN, v5 close
        signal): with ``stdin_once`` and no tty the container's stdin is closed (CloseIO) and
        the output still flows until the container stops; otherwise the client detaches --
        the session ends and the container's stdin stays open for the next attach."""
        meta, task = self._running(req.container_id)
        config = st.config_of(meta)
        if s.stdout is None and s.stderr is None and not (s.stdin is not None and config.stdin):
            return None  # nothing to copy either way (containerd returns at once too)
        relay = None if meta.log_path else self.rt.attach_io.get(meta.id)
        sub = relay.subscribe() if relay is not None else None
        events = self.rt.subscribe_container_events() if sub is None else None
        extra: list[asyncio.Task] = []
        writer = None
        try:
            if sub is not None:
                output = asyncio.ensure_future(_relay_out(sub, s))
            else:
                stopped = asyncio.Event()
                if self.rt.records.container(meta.id)[1].state != st.RUNNING:
                    stopped.set()
                extra.append(asyncio.ensure_future(self._watch_stop(events, meta.id, stopped)))
                output = asyncio.ensure_future(self._follow_log(meta.log_path, s, stopped))
            ends = {output}
            if s.stdin is not None and config.stdin:
                try:
                    fd = os.open(stdin_fifo(self.rt.state, meta.id),
                                 os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as e:
                    raise errdefs.FailedPrecondition(f"container stdin: {e.strerror}") from None
                writer = FdWriter(fd)
                once = config.stdin_once and not s.tty
                stdin = asyncio.ensure_future(
                    self._pump_in(s.stdin, writer, task, "", close_io=once))
                if once:
                    extra.append(stdin)  # the output goes on until the container stops
                else:
                    ends.add(stdin)      # stdin EOF: the client detaches
                if s.stdout is None and s.stderr is None:
                    ends = {stdin}
            elif s.stdin is not None:  # the container has no stdin: the client's is dropped
                extra.append(asyncio.ensure_future(_drain(s.stdin)))
            if s.resize is not None:
                extra.append(asyncio.ensure_future(_resize_loop(
                    s.resize, lambda w, h: task.resize_pty("", w, h))))
            gone = asyncio.ensure_future(s.gone.wait())
            try:
                await asyncio.wait(ends | {gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                await _cancel(*ends)
            if output.done() and not output.cancelled() and output.exception() is not None:
                raise output.exception()
            return None
        finally:
            await _cancel(*extra)
            if writer is not None:
                writer.close()
            if sub is not None:
                relay.unsubscribe(sub)
            if events is not None:
                self.rt.unsubscribe_container_events(events)

    @staticmethod
    async def _watch_stop(events: asyncio.Queue, container_id: str,
                          stopped: asyncio.Event) -> None:
        while True:
            kind, cid, _sid, _ts = await events.get()
            if cid == container_id and kind in ("stopped", "deleted"):
                stopped.set()
                return

    async def _follow_log(self, path: str, s: Streams, stopped: asyncio.Event) -> None:
        """Copy the container's log lines written from now on into the client's stdout /
        stderr (a tty session: all into stdout) until the container stopped."""
        if not path:
            await stopped.wait()
            return
        f = None
        pending = b""
        try:
            try:
                f = open(path, "rb")
                f.seek(0, os.SEEK_END)
            except FileNotFoundError:
                f = None
            while True:
                final = stopped.is_set()
                data = f.read(CHUNK) if f is not None else b""
                if data:
                    pending += data
                    lines = pending.split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        parsed = parse_cri_log_line(line)
                        if parsed is None:
                            continue
                        stream, content = parsed
                        dst = s.stdout if (stream == "stdout" or s.tty) else s.stderr
                        if dst is not None and content:
                            try:
                                await dst.write(content)
                            except ConnectionError:
                                return
                    continue
                if final:
                    return
                # rotated (ReopenContainerLog) or not there yet: follow the new file
                try:
                    ino = os.stat(path).st_ino
                except FileNotFoundError:
                    ino = None
                if ino is not None and (f is None or os.fstat(f.fileno()).st_ino != ino):
                    if f is not None:
                        f.close()
                    f = open(path, "rb")
                    pending = b""
                    continue
                try:
                    await asyncio.wait_for(stopped.wait(), LOG_POLL)
                except TimeoutError:
                    pass
        finally:
            if f is not None:
                f.close()

    # --- port-forward ---------------------------------------------------------------------

    async def port_forward(self, sandbox_id: str, port: int, stream,
                           gone: asyncio.Event) -> None:
        meta, status = self.rt.records.sandbox(sandbox_id)
        if status.state != st.SANDBOX_READY:
            raise ForwardError(f"sandbox {meta.id} is not running")
        if meta.netns:
            from ctrd.cri import netns

            try:
                sock = await asyncio.to_thread(netns.run_in_ns, meta.netns, _connect, port,
                                               meta.id)
            except errdefs.NotFound as e:
                raise ForwardError(str(e)) from None
        else:
            sock = await asyncio.to_thread(_connect, port, meta.id)
        sock.setblocking(False)
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            await _copy_both_ways(reader, writer, stream, gone)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def _connect(port: int, sandbox_id: str) -> socket.socket:
    """Connect to localhost:<port> (IPv4, then IPv6), in the calling thread's netns."""
    errs = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect((host, port))
            return s
        except OSError as e:
            s.close()
            errs.append(f"dial tcp{4 if family == socket.AF_INET else 6} "
                        f"{host if family == socket.AF_INET else '[::1]'}:{port}: connect: "
                        f"{(e.strerror or str(e)).lower()}")
            if family == socket.AF_INET and e.errno not in (errno.ECONNREFUSED,
                                                            errno.ENETUNREACH,
                                                            errno.EADDRNOTAVAIL):
                break
    raise ForwardError(f'failed to connect to localhost:{port} inside namespace "{sandbox_id}", '
                       f"IPv4: {errs[0]} IPv6 {errs[1] if len(errs) > 1 else 'not tried'}")


async def _copy_both_ways(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream,
                          gone: asyncio.Event) -> None:
    async def to_pod():
        while True:
            data = await stream.read()
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def to_client():
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            await stream.write(data)
        await stream.close()

    a = asyncio.ensure_future(to_pod())
    b = asyncio.ensure_future(to_client())
    g = asyncio.ensure_future(gone.wait())
    try:
        done, _ = await asyncio.wait({a, b, g}, return_when=asyncio.FIRST_COMPLETED)
        if g in done:
            return
        if a in done and b not in done:
            if a.exception() is not None:
                return  # the client's side broke: tear the connection down
            # the client half-closed: the pod may still answer, until it closes
            await asyncio.wait({b, g}, return_when=asyncio.FIRST_COMPLETED)
            return
        # the pod closed (or the client's stream broke): what the client still sends gets
        # a short grace, as containerd gives (a client may wait for the error stream's EOF
        # before it closes its data stream)
        if not a.done():
            await asyncio.wait({a, g}, timeout=HALF_CLOSE_GRACE,
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel(a, b, g)
