"""What every ctrd conformance suite (content, snapshots, ...) shares: running all checks
with a report, and turning the checks into pytest test methods of a suite class."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Callable


def run_all(checks: dict[str, Callable], run_check: Callable[[str, Any, Path], None],
            factory: Any, base: Path) -> dict[str, str]:
    """Run every check, each in its own directory under ``base``; return name -> traceback
    for the failures (empty when the implementation conforms)."""
    failures = {}
    for name in checks:
        d = Path(base) / name
        d.mkdir(parents=True)
        try:
            run_check(name, factory, d)
        except Exception:
            failures[name] = traceback.format_exc()
    return failures


def add_test_methods(cls: type, checks: dict[str, Callable],
                     run_check: Callable[[str, Any, Path], None], factory_attr: str) -> None:
    """Give ``cls`` a ``test_<name>(self, tmp_path)`` per check, running it with the
    factory the subclass sets as ``factory_attr``."""
    for name, fn in checks.items():
        def method(self, tmp_path, _name=name):
            run_check(_name, getattr(self, factory_attr), tmp_path)
        method.__name__ = f"test_{name}"
        method.__doc__ = fn.__doc__
        setattr(cls, method.__name__, method)
