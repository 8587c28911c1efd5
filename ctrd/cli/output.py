"""How ctrctl prints results: tables for people, JSON for programs.

A table goes through rich when the stream is a terminal (bold header, fitted to the width)
and is plain aligned text otherwise, so ``ctrctl ... | awk`` and tests see stable columns:
one header line, then one line per row, columns left-aligned and separated by at least
three spaces, no trailing blanks. JSON is indented, key-sorted and ends with a newline.
rich is imported only when a terminal is drawn on.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence, TextIO

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
