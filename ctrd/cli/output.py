"""How ctrctl prints results: tables for people, JSON for programs.

A table goes through rich when the stream is a terminal (bold header, fitted to the width)
and is plain aligned text otherwise, so ``ctrctl ... | awk`` and tests see stable columns:
one header line, then one line per row, columns left-aligned and separated by at least
three spaces, no trailing blanks. JSON is indented, key-sorted and ends with a newline.
rich is imported only when a terminal is drawn on.

Also here: how sizes, ages and times read (:func:`human_size`, :func:`human_duration`,
:func:`rfc3339`), and the transfer progress bar (:func:`progress`), drawn only on a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence, TextIO

FORMATS = ("table", "json")
GAP = "   "


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                stream: TextIO | None = None, tty: bool | None = None,
                styles: dict[str, dict[str, str]] | None = None) -> None:
    """Print ``rows`` under ``headers``; ``tty`` forces (or forbids) the rich rendering.

    ``styles`` colours cells on a terminal: ``{"STATUS": {"error": "red"}}`` styles the
    STATUS cells that read "error".
    """
    stream = stream or sys.stdout
    if tty is None:
        tty = is_tty(stream)
    if tty:
        _rich_table(headers, rows, stream, styles or {})
    else:
        stream.write(plain_table(headers, rows))
    stream.flush()


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [list(headers)] + [[str(c) for c in r] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for line in lines:
        cells = [c.ljust(w) for c, w in zip(line, widths)]
        out.append(GAP.join(cells).rstrip() + "\n")
    return "".join(out)


def _rich_table(headers: Sequence[str], rows: Sequence[Sequence[str]], stream: TextIO,
                styles: dict[str, dict[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold",
                  padding=(0, 3, 0, 0))
    for h in headers:
        table.add_column(Text(h), overflow="fold")
    by_column = [styles.get(h, {}) for h in headers]
    for r in rows:  # Text: no markup in names or labels
        table.add_row(*(Text(str(c), style=by_column[i].get(str(c), ""))
                        for i, c in enumerate(r)))
    Console(file=stream, highlight=False, soft_wrap=False, force_terminal=True).print(table)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    json.dump(data, stream, indent=2, sort_keys=True)
    stream.write("\n")
    stream.flush()


def print_json_line(data: Any, stream: TextIO | None = None) -> None:
    """One compact, key-sorted JSON object per line (for streams such as events)."""
    stream = stream or sys.stdout
    stream.write(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    stream.flush()


# -- sizes, ages, times -----------------------------------------------------------------

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int | float) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``12 MiB``, ``1.0 GiB``."""
    n = float(n)
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            break
        n /= 1024
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.1f} {unit}" if abs(n) < 10 else f"{n:.0f} {unit}"


def human_duration(seconds: float) -> str:
    """An approximate duration as Docker and ctr print ages (go-units' HumanDuration)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = round(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def age(ts: Any, now: float | None = None) -> str:
    """How long ago a ``google.protobuf.Timestamp`` (or epoch seconds) was, e.g.
    ``5 minutes ago``; ``-`` for an unset time."""
    seconds = _seconds(ts)
    if not seconds:
        return "-"
    return human_duration(max(0.0, (time.time() if now is None else now) - seconds)) + " ago"


def rfc3339(ts: Any, local: bool = False) -> str:
    """A ``google.protobuf.Timestamp`` (or epoch seconds) in RFC 3339.

    ``local=False``: UTC with the fraction kept (``2024-05-01T12:00:00.123456789Z``, what the
    JSON outputs use). ``local=True``: local time to the second, as ctr prints times
    (``2024-05-01T14:00:00+02:00``; UTC reads ``Z``).
    """
    if not local and hasattr(ts, "ToJsonString"):
        return ts.ToJsonString()
    seconds = _seconds(ts)
    if local:
        dt = datetime.fromtimestamp(int(seconds)).astimezone()
        text = dt.isoformat(timespec="seconds")
    else:
        dt = datetime.fromtimestamp(seconds, timezone.utc)
        text = dt.isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _seconds(ts: Any) -> float:
    if hasattr(ts, "seconds"):
        return ts.seconds + ts.nanos / 1e9
    return float(ts or 0)


# -- progress ---------------------------------------------------------------------------

class _NoProgress:
    def advance(self, n: int) -> None:
        pass


class _RichProgress:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int) -> None:
        self._progress.update(self._task, advance=n)


class progress:  # noqa: N801 - used as a context manager, like open()
    """A byte-transfer progress bar on ``stream`` (stderr by default) when it is a terminal;
    a do-nothing object otherwise. ``total`` None: size unknown (no ETA, no percentage);
    ``completed``: bytes already there (a resumed transfer).

        with progress("ingest x", total=size) as bar:
            bar.advance(len(chunk))
    """

    def __init__(self, description: str, total: int | None, completed: int = 0,
                 stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.description, self.total, self.completed = description, total, completed
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream) if tty is None else tty
        self._progress: Any = None

    def __enter__(self) -> _NoProgress | _RichProgress:
        if not self.tty:
            return _NoProgress()
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(file=self.stream, force_terminal=True, highlight=False))
        self._progress.start()
        task = self._progress.add_task(self.description, total=self.total,
                                       completed=self.completed)
        return _RichProgress(self._progress, task)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def iter_chunks(read: Any, size: int) -> Iterator[bytes]:
    """Blocks of ``size`` bytes from ``read(n)`` (the last one may be shorter) until EOF;
    short reads (pipes, terminals) are gathered into full blocks."""
    while True:
        block = read(size)
        if not block:
            return
        if len(block) < size:
            parts, have = [block], len(block)
            while have < size:
                more = read(size - have)
                if not more:
                    break
                parts.append(more)
                have += len(more)
            block = b"".join(parts)
        yield block
        if len(block) < size:
            return
