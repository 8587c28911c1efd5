"""The GC scheduler's config (kept apart from the scheduler so that listing plugins and
reading config imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from ctrd.config import setting
from ctrd.durations import check_duration


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
    # containerd's tomlext.Duration: Go duration text, or the TOML integer 0
    schedule_delay: str = setting("0s", check=check_duration, text=True)
    startup_delay: str = setting("100ms", check=check_duration, text=True)
