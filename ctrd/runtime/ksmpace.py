"""ksmd's pace while shims start, and at rest.

ctrd's shims mark the pages they copied from their template mergeable
(:mod:`ctrd.runtime.shim.ksm`); ksmd merges the identical ones at the pace of
``/sys/kernel/mm/ksm/sleep_millisecs`` (``pages_to_scan`` pages per wake-up) and never stops
scanning while anything is marked. At the kernel's default pace (20 ms) the copies of 110
shims are merged within about two minutes, but ksmd then keeps ~2.5% of a core busy for
good, more than the daemon costs under the kubelet's polling (bench/README.md, density).
So the pace follows what is to merge: :meth:`KsmPacer.started` (a shim started) sets the
fast pace, and once ksmd's merging has settled (``pages_sharing`` steady over one check
period, at least ``min_fast`` s after the last start; at most ``settle`` s after it) the slow
one (1 s: a tenth of a percent of a core), at which pages copied later are still merged,
only later.

The pacer only touches a knob it owns: ksmd running and ``sleep_millisecs`` at the kernel's
default or at a value the pacer itself writes. A host whose administrator tuned ksmd, or
that runs it for others (virtual machines) at another pace, is left alone; so is one without
KSM or where sysfs is read-only. ``[plugins."io.containerd.runtime.v2.task"] ksm_pacing =
false`` turns the pacer off.
"""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger("ctrd.runtime")

KSM_DIR = "/sys/kernel/mm/ksm"
FAST_MS = 20      # the kernel's default
SLOW_MS = 1000
SETTLE = 300.0    # s after the last shim start at most (110 shims' copies merge in ~120 s)
MIN_FAST = 30.0   # s after the last shim start at least
CHECK = 15.0      # s between two looks at pages_sharing


class KsmPacer:
    """Sets ksmd's pace: fast while shims start, slow at rest. Lifecycle: built by the task
    manager's plugin; :meth:`open` once in the daemon's loop; :meth:`started` after each shim
    start; :meth:`close` at shutdown (the pace stays). Never raises."""

    def __init__(self, ksm_dir: str = KSM_DIR, settle: float = SETTLE, enabled: bool = True,
                 fast_ms: int = FAST_MS, slow_ms: int = SLOW_MS, min_fast: float = MIN_FAST,
                 check: float = CHECK) -> None:
        self.dir, self.settle, self.enabled = ksm_dir, settle, enabled
        self.fast_ms, self.slow_ms = fast_ms, slow_ms
        self.min_fast, self.check = min_fast, check
        self.owned = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_start = 0.0
        self._sharing: int | None = None

    def _read(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.dir, name)) as f:
                return f.read().strip()
        except OSError:
            return None

    def _write(self, ms: int) -> None:
        try:
            with open(os.path.join(self.dir, "sleep_millisecs"), "w") as f:
                f.write(str(ms))
        except OSError as e:
            log.info("ksm pacing off: %s", e)
            self.owned = False

    def open(self) -> bool:
        """Decide whether the knob is ours. True when pacing. The pace is left as found: fast
        means shims are being merged (another daemon's, on a host that runs several) or a
        daemon died before slowing down; either way it goes slow once merging settled."""
        if not self.enabled or self._read("run") != "1":
            return False
        pace = self._read("sleep_millisecs")
        if pace not in (str(self.fast_ms), str(self.slow_ms)):
            return False
        self.owned = True
        if pace == str(self.fast_ms):
            self._watch(asyncio.get_running_loop())
        return self.owned

    def started(self) -> None:
        """A shim started: merge its copies soon, then slow down again."""
        if not self.owned:
            return
        pace = self._read("sleep_millisecs")
        if pace == str(self.slow_ms):  # (also when another daemon's pacer slowed it down)
            self._write(self.fast_ms)
        elif pace != str(self.fast_ms):
            return  # someone else's value now: theirs stays
        self._watch(asyncio.get_running_loop())

    def _watch(self, loop) -> None:
        self._last_start = loop.time()
        if self._timer is None:
            self._sharing = None
            self._timer = loop.call_later(self.check, self._look)

    def _pages_sharing(self) -> int | None:
        v = self._read("pages_sharing")
        return int(v) if v is not None and v.isdigit() else None

    def _look(self) -> None:
        """Every ``check`` s while fast: slow down once merging settled (or took too long)."""
        loop = asyncio.get_running_loop()
        since = loop.time() - self._last_start
        now, last = self._pages_sharing(), self._sharing
        self._sharing = now
        settled = now is not None and last is not None and abs(now - last) <= max(50, last // 100)
        if since >= self.settle or (since >= self.min_fast and settled):
            self._rest()
        else:
            self._timer = loop.call_later(self.check, self._look)

    def _rest(self) -> None:
        self._timer = None
        if self.owned and self._read("sleep_millisecs") == str(self.fast_ms):
            self._write(self.slow_ms)  # (someone else's value meanwhile: theirs stays)

    def close(self) -> None:
        """Daemon stop: the pace stays as it is. The shims outlive the daemon and their
        copies still want merging, and on a host running several daemons another one may be
        merging; the next daemon's :meth:`open` finds a fast pace and slows it down once
        merging settled."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
