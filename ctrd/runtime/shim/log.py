"""The shim's log: logrus text lines (what containerd's own shims write) on one fd.

The daemon creates the FIFO ``<bundle>/log`` and copies what arrives there to its own log, so
the shim opens it once (:func:`open_fifo`) and writes one line per record. Writes never block
and never fail the caller: with the daemon away (FIFO full or without a reader) lines are
dropped.
"""

from __future__ import annotations

import os
import time

_fd = 2
_debug = False
_fields: dict[str, str] = {}


def setup(fd: int, debug: bool = False, **fields: str) -> None:
    global _fd, _debug
    _fd, _debug = fd, debug
    _fields.clear()
    _fields.update(fields)


def open_fifo(path: str) -> int:
    """Open the daemon's log FIFO for writing without blocking; -1 when there is none."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1
    return fd


def _quote(v: object) -> str:
    s = str(v)
    if s and all(c.isalnum() or c in "-._/:@" for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _write(level: str, msg: str, fields: dict) -> None:
    if _fd < 0:
        return
    t = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"
    parts = [f"time={_quote(ts)}", f"level={level}", f"msg={_quote(msg)}"]
    parts += [f"{k}={_quote(v)}" for k, v in {**_fields, **fields}.items()]
    try:
        os.write(_fd, (" ".join(parts) + "\n").encode())
    except OSError:
        pass  # daemon away or FIFO full: a shim never blocks on its log


def debug(msg: str, **fields) -> None:
    if _debug:
        _write("debug", msg, fields)


def info(msg: str, **fields) -> None:
    _write("info", msg, fields)


def warning(msg: str, **fields) -> None:
    _write("warning", msg, fields)


def error(msg: str, **fields) -> None:
    _write("error", msg, fields)
