"""ctrctl's container commands (run, ps, exec, kill, stop, rm, logs, pause, unpause, top).

Registered into ctrctl's main group by :func:`register` (called at the end of
``ctrd/cli/ctrctl.py``).
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the container commands to ``group`` (ctrctl's main group)."""
