"""exec and attach sessions: the kubelet's remotecommand protocols, on SPDY and WebSocket.

SPDY (``X-Stream-Protocol-Version``; the client's first choice the server knows):

- ``channel.k8s.io`` (v1), ``v2.channel.k8s.io``: streams ``error``, ``stdin``, ``stdout``,
  ``stderr`` (the ``streamtype`` header); a failure is written to the error stream as text.
- ``v3.channel.k8s.io``: adds ``resize`` (a sequence of JSON ``{"Width":w,"Height":h}``).
- ``v4.channel.k8s.io``: the error stream carries a metav1.Status JSON (Success, or Failure
  with reason NonZeroExitCode and an ExitCode cause holding the exit code).

The server waits (the stream creation timeout) for the streams the request asked for: error,
stdin/stdout/stderr as set, resize with a tty (v3+). Then the backend runs; at the end the
status goes to the error stream, every stream is half-closed, the session closed.

WebSocket (subprotocol, the client's first one the server knows; none offered: ""):
channels are message prefixes 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; ``base64.*``
variants send text (an ASCII digit, then base64; a message that is not base64 is dropped);
``v4.*``/``v5`` report a Status JSON, others text. ``v5.channel.k8s.io`` lets the client
half-close a channel with (255, n) -- stdin's EOF, which ends an exec's input and detaches
an attach; a close signal of another length or for a channel past 4 fails the connection
(wsstream ends it too). Messages for other channels, or for stdin/resize when not asked for,
are dropped. The server first sends an empty message on the lowest writable channel (stdout,
else stderr, else error). A client that breaks the framing or sends a message over the
server's limit gets the connection failed (1002/1009), and the session ends as if it had
gone away (an exec's process is killed).

containerd 2.3.4's embedded kubelet streaming server offers "", ``channel.k8s.io``,
``base64.channel.k8s.io``, ``v4.channel.k8s.io`` and ``v4.base64.channel.k8s.io`` on
WebSocket; ctrd also serves ``v5.channel.k8s.io`` (what kubectl speaks to an API server),
so a client offering v5 first gets v5 here where containerd would pick its next offer.

The backend is ``async fn(streams: Streams) -> int | None`` (an exit code for exec, None for
attach); it must return soon after ``streams.gone`` is set (the client went away).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from ctrd.cri.streaming.channels import InChannel, SpdySession, SpdyStream, WsSession

log = logging.getLogger("ctrd.cri.streaming")

V1 = "channel.k8s.io"
V2 = "v2.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
SPDY_PROTOCOLS = [V4, V3, V2, V1]
WS_PROTOCOLS = [V5, V4, "v4.base64.channel.k8s.io", V1, "base64.channel.k8s.io"]

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


@dataclass
class Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass
class TerminalSize:
    width: int
    height: int


class Output:
    """A writable channel: ``await write(data)``, ``await close()``."""

    async def write(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Streams:
    """What a backend gets: the client's channels (None when not requested)."""

    stdin: InChannel | SpdyStream | None
    stdout: Output | None
    stderr: Output | None
    resize: asyncio.Queue | None      # TerminalSize items (tty sessions)
    tty: bool
    gone: asyncio.Event               # set when the client went away


Backend = Callable[[Streams], Awaitable[int | None]]


class ExecError(Exception):
    """A failure the backend reports to the client (an InternalError status)."""


# --- statuses (metav1.Status as the kubelet writes them) -----------------------------------

def status_success() -> dict:
    return {"metadata": {}, "status": "Success"}


def status_exit(code: int, message: str) -> dict:
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: {message}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def status_internal(message: str) -> dict:
    return {"metadata": {}, "status": "Failure",
            "message": f"Internal error occurred: {message}", "reason": "InternalError",
            "details": {"causes": [{"message": message}]}, "code": 500}


def encode_status(status: dict, structured: bool) -> bytes:
    """The error stream's bytes: the Status JSON (v4+), else a failure's message (and
    nothing for success)."""
    if structured:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return status.get("message", "").encode()


RESIZE_VALUE_LIMIT = 4096  # bytes of one resize JSON value still being waited for


def parse_size(obj) -> TerminalSize | None:
    """A resize value as the kubelet decodes it (Go's encoding/json into ``{Width, Height
    uint16}``: names matched case-insensitively, the exact one first; a missing or null
    field is 0, unknown ones ignored); None for anything else."""
    if not isinstance(obj, dict):
        return None
    dims = []
    for k in ("Width", "Height"):
        v = obj[k] if k in obj else next(
            (obj[x] for x in obj if isinstance(x, str) and x.lower() == k.lower()), None)
        if v is None:
            v = 0
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF:
            return None
        dims.append(v)
    return TerminalSize(*dims)


async def _resize_pump(ch, out: asyncio.Queue) -> None:
    """Decode the resize channel's JSON objects (concatenated, as Go's json.Decoder reads
    them) into TerminalSize items until EOF. After the first bad value (not JSON, not an
    object of uint16 sizes, or more than RESIZE_VALUE_LIMIT bytes) resizing stops, as in the
    kubelet, and what else comes on the channel is read and dropped (never left to fill the
    session's buffers)."""
    dec = json.JSONDecoder()
    buf = ""
    broken = False
    while True:
        data = await ch.read()
        if not data:
            return
        if broken:
            continue
        buf += data.decode("utf-8", "replace")
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = dec.raw_decode(buf)
            except json.JSONDecodeError as e:
                incomplete = (e.pos >= len(buf)
                              or e.msg.startswith("Unterminated string"))
                if not incomplete or len(buf) > RESIZE_VALUE_LIMIT:
                    broken = True  # garbage, not an incomplete value
                break  # incomplete: wait for more
            buf = buf[end:]
            size = parse_size(obj)
            if size is None:
                broken = True
                break
            if out.full():
                out.get_nowait()
            out.put_nowait(size)
        if broken:
            log.debug("resize channel: bad value; resizing stops")
            buf = ""


async def _run_backend(backend: Backend, streams: Streams, what: str) -> dict:
    try:
        code = await backend(streams)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes the client's status
        log.debug("%s failed: %s", what, e)
        return status_internal(f"{what}: {e}")
    if code:
        return status_exit(code, f"command terminated with exit code {code}")
    return status_success()


async def _finish_backend(task: asyncio.Task, gone: asyncio.Event) -> None:
    """Give a backend whose client went away a bounded time to clean up."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 30)
    except (TimeoutError, Exception):  # noqa: BLE001
        task.cancel()


async def serve_spdy(reader, writer, initial: bytes, protocol: str, opts: Options,
                     backend: Backend, what: str, creation_timeout: float,
                     idle_timeout: float) -> None:
    """Run one exec/attach session on an upgraded SPDY connection."""
    by_type: dict[str, SpdyStream] = {}
    resizing = protocol in (V3, V4)
    expected = 1 + opts.stdin + opts.stdout + opts.stderr + (opts.tty and resizing)
    ready = asyncio.Event()

    def on_stream(st: SpdyStream) -> str | None:
        kind = st.header("streamtype")
        if kind not in ("error", "stdin", "stdout", "stderr", "resize"):
            log.debug("unexpected stream type %r", kind)
            return None
        if kind in by_type:
            return f"a {kind} stream already exists"
        by_type[kind] = st
        if len(by_type) >= expected:
            ready.set()
        return None

    sess = SpdySession(reader, writer, on_stream, idle_timeout)
    runner = asyncio.ensure_future(sess.run(initial))
    try:
        gone = asyncio.ensure_future(sess.gone.wait())
        waiter = asyncio.ensure_future(ready.wait())
        try:
            await asyncio.wait({gone, waiter}, timeout=creation_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            waiter.cancel()
        if not ready.is_set():
            if not sess.gone.is_set():
                log.debug("timed out waiting for client to create streams")
            return
        err = by_type["error"]
        if protocol in (V1, "") and "stdin" in by_type:
            await by_type["stdin"].close()  # v1: the server's half of stdin closes at once
        resize_q: asyncio.Queue | None = None
        pump = None
        if opts.tty and "resize" in by_type:
            resize_q = asyncio.Queue(16)
            pump = asyncio.ensure_future(_resize_pump(by_type["resize"], resize_q))
        streams = Streams(stdin=by_type.get("stdin") if opts.stdin else None,
                          stdout=by_type.get("stdout") if opts.stdout else None,
                          stderr=by_type.get("stderr") if opts.stderr and not opts.tty
                          else None,
                          resize=resize_q, tty=opts.tty, gone=sess.gone)
        task = asyncio.ensure_future(_run_backend(backend, streams, what))
        try:
            status = await asyncio.shield(task)
        except asyncio.CancelledError:
            await _finish_backend(task, sess.gone)
            raise
        finally:
            if pump is not None:
                pump.cancel()
        if not sess.gone.is_set():
            data = encode_status(status, protocol == V4)
            try:
                if data:
                    await err.write(data)
            except ConnectionError:
                pass
    finally:
        await sess.aclose()
        runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            pass


async def serve_ws(reader, writer, proto, subprotocol: str, opts: Options, backend: Backend,
                   what: str, idle_timeout: float) -> None:
    """Run one exec/attach session on an accepted WebSocket."""
    # what comes on a channel nobody reads is dropped (kept, it would fill the session's
    # buffers and stop the socket's reads): resize is an input with a tty only
    inputs = ([STDIN] if opts.stdin else []) + ([RESIZE] if opts.tty else [])
    sess = WsSession(reader, writer, proto, subprotocol, inputs, idle_timeout,
                     channels=RESIZE + 1)
    runner = asyncio.ensure_future(sess.run())
    try:
        first = STDOUT if opts.stdout else STDERR if opts.stderr else ERROR
        try:
            await sess.send(first, b"")
        except ConnectionError:
            return
        resize_q: asyncio.Queue | None = None
        pump = None
        if opts.tty:
            resize_q = asyncio.Queue(16)
            pump = asyncio.ensure_future(_resize_pump(sess.inputs[RESIZE], resize_q))
        streams = Streams(stdin=sess.inputs[STDIN] if opts.stdin else None,
                          stdout=sess.out(STDOUT) if opts.stdout else None,
                          stderr=sess.out(STDERR) if opts.stderr and not opts.tty else None,
                          resize=resize_q, tty=opts.tty, gone=sess.gone)
        task = asyncio.ensure_future(_run_backend(backend, streams, what))
        try:
            status = await asyncio.shield(task)
        except asyncio.CancelledError:
            await _finish_backend(task, sess.gone)
            raise
        finally:
            if pump is not None:
                pump.cancel()
        structured = subprotocol.startswith(("v4.", "v5."))
        data = encode_status(status, structured)
        if data and not sess.gone.is_set():
            try:
                await sess.send(ERROR, data)
            except ConnectionError:
                pass
    finally:
        await sess.aclose()
        runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            pass
