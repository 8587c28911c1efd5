"""``wait_until``: the one polling loop of the suite.

Tests wait for a positive event (the process reaped, the file written, the status changed),
never sleep a fixed time and then look: a loaded machine makes any fixed sleep too short.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str | None = None,
               interval: float = 0.05) -> T:
    """Call ``predicate()`` every ``interval`` seconds until it returns something truthy,
    and return that. When ``timeout`` seconds pass first: with ``what`` (what was awaited),
    raise an AssertionError naming it and the last value; without, return the last (falsy)
    value, for the caller's own ``assert``. ``predicate`` runs at least once, and once more
    at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if what is not None:
        raise AssertionError(f"still waiting for {what} after {timeout}s (last: {value!r})")
    return value
