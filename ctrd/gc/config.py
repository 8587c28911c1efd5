"""The GC scheduler's config (kept apart from the scheduler so that listing plugins and
reading config imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from ctrd.config import setting


def _duration_check(value: str) -> str | None:
    try:
        parse_duration(value)
    except ValueError as e:
        return str(e)
    return None


def parse_duration(value: str) -> float:
    """Go duration text ("100ms", "1.5s", "1m30s", "0") in seconds."""
    import re

    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    if value in ("0", ""):
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value.lstrip("+"):
        raise ValueError(f"invalid duration {value!r} (e.g. 100ms, 1s, 1m30s)")
    return sum(float(n) * units[u] for n, u in parts)


def _threshold(v: float) -> str | None:
    return None if 0.0 <= v <= 0.5 else "must be between 0 and 0.5"


def _non_negative(v: int) -> str | None:
    return None if v >= 0 else "must not be negative"


@dataclass
class SchedulerConfig:
    pause_threshold: float = setting(0.02, check=_threshold,
                                     doc="max share of time spent collecting")
    deletion_threshold: int = setting(0, check=_non_negative,
                                      doc="deletions that trigger a collection (0: any)")
    mutation_threshold: int = setting(100, check=_non_negative,
                                      doc="mutations that trigger a collection")
    schedule_delay: str = setting("0s", check=_duration_check)
    startup_delay: str = setting("100ms", check=_duration_check)
