"""Structured logs: ``time=... level=... msg=... key=value`` (logfmt, as containerd's logrus
text output) or one JSON object per line. Fields come from ``extra={...}`` on a log call."""

from __future__ import annotations

import json
import logging
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

# containerd's level names -> logging levels.
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
          "fatal": logging.CRITICAL, "panic": logging.CRITICAL}
_NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info",
          logging.WARNING: "warning", logging.ERROR: "error", logging.CRITICAL: "fatal"}
# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs * 1000):06d}Z"


def _quote(value: object) -> str:
    s = str(value)
    if s and not any(c in s for c in ' "=\n\t\\'):
        return s
    return json.dumps(s)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"time={_quote(_timestamp(record))}",
                 f"level={_NAMES.get(record.levelno, record.levelname.lower())}",
                 f"msg={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exception={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _timestamp(record),
               "level": _NAMES.get(record.levelno, record.levelname.lower()),
               "msg": record.getMessage(), **{k: str(v) for k, v in _fields(record).items()}}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    """Configure the ``ctrd`` logger tree (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger("ctrd")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level or "info"])  # "" in a config: the default, as containerd
    root.propagate = False
