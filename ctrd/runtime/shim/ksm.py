"""Kernel same-page merging for forked shims: offer ksmd only the pages a shim copied.

Why: a shim forked from the template (:mod:`.template`) shares the template's memory until it
writes to it, and a CPython process cannot help writing to what it shares (reference counts,
bytecode specialisation): starting a task copies ~3 MiB of pages per shim, most of them
byte-identical to the same copies in every other shim. ksmd (``/sys/kernel/mm/ksm/run`` = 1,
which ``scripts/setup`` turns on when nobody did) merges identical pages of the ranges a
process marks with ``madvise(MADV_MERGEABLE)``.

What is marked matters as much as marking: ksmd scans at a fixed pace (``pages_to_scan``
per ``sleep_millisecs``) over every marked page of every process, so marking a shim's whole
heap (~15 MiB, four fifths of it still shared with the template and never worth merging)
makes a pass over 110 shims take minutes of ksmd time. :func:`mark_copied` marks only what
this process holds exclusively — pages ``/proc/self/pagemap`` flags "exclusively mapped"
(bit 56; no privilege needed, unlike the frame numbers): the copies and the shim's own
allocations. The shim calls it once its task has started (when the start's copying is done)
and again later; ranges marked stay marked, pages copied later in them are merged too.

Never ``prctl(PR_SET_MEMORY_MERGE)``: that mark survives exec, so runc and the containers'
processes would be merged too (and pages merged across containers leak through timing which
content other containers hold). A mark from ``madvise`` is this process's only.
"""

from __future__ import annotations

import ctypes
import os
import struct

MADV_MERGEABLE = 12
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56
_LARGEST = 1 << 30
_GAP = 8  # pages between two copied runs marked with them (fewer, larger ranges)

_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        f = ctypes.CDLL(None, use_errno=True).madvise
        f.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise = f
    return _madvise


def copied_ranges(maps: bytes, pagemap) -> list[tuple[int, int]]:
    """(start, end) address ranges of ``maps``' private writable mappings (the interpreter's
    data, its heap, anonymous arenas; not the stack or the kernel's [vvar]-like areas) whose
    pages are present and exclusively this process's, runs closer than ``_GAP`` pages
    joined. ``pagemap`` is an open ``/proc/<pid>/pagemap``; ``maps`` its ``maps`` text."""
    out: list[tuple[int, int]] = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[1] != b"rw-p":
            continue
        if len(fields) > 5 and fields[5].startswith(b"[") and fields[5] != b"[heap]":
            continue
        lo, _, hi = fields[0].partition(b"-")
        start, end = int(lo, 16), int(hi, 16)
        if end - start > _LARGEST:
            continue  # a reservation (no interpreter heap is this large in a shim)
        pagemap.seek(start // _PAGE * 8)
        data = pagemap.read((end - start) // _PAGE * 8)
        run_start = last = -1
        for i, (entry,) in enumerate(struct.iter_unpack("Q", data)):
            if entry & _PRESENT and entry & _EXCLUSIVE:
                if run_start < 0:
                    run_start = i
                elif i - last > _GAP:
                    out.append((start + run_start * _PAGE, start + (last + 1) * _PAGE))
                    run_start = i
                last = i
        if run_start >= 0:
            out.append((start + run_start * _PAGE, start + (last + 1) * _PAGE))
    return out


def mark_copied() -> int:
    """Mark this process's exclusively held pages mergeable; the bytes marked (0 where the
    kernel has no KSM, or /proc cannot be read). Never raises."""
    if not os.path.isdir("/sys/kernel/mm/ksm"):
        return 0
    try:
        with open("/proc/self/maps", "rb") as f:
            maps = f.read()
        with open("/proc/self/pagemap", "rb", buffering=0) as pm:
            ranges = copied_ranges(maps, pm)
        madvise = _libc_madvise()
    except (OSError, AttributeError, ValueError):
        return 0
    marked = 0
    for start, end in ranges:
        if madvise(start, end - start, MADV_MERGEABLE) == 0:
            marked += end - start
    return marked
