"""ksmd pacing (ctrd.runtime.ksmpace) over a sysfs-shaped directory, and the choice of pages
a shim offers for merging (ctrd.runtime.shim.ksm.copied_ranges) over a pagemap-shaped file.

The pacer writes a global kernel knob, so these tests give it a directory of its own; that a
daemon's shims mark their copies for real is tested in test_shim_template.py."""

from __future__ import annotations

import asyncio
import io
import struct

from ctrd.runtime.ksmpace import KsmPacer
from ctrd.runtime.shim.ksm import _PAGE, copied_ranges


def ksm_dir(tmp_path, run="1", sleep="20"):
    (tmp_path / "run").write_text(run + "\n")
    (tmp_path / "sleep_millisecs").write_text(sleep + "\n")
    return tmp_path


def pace(d) -> str:
    return (d / "sleep_millisecs").read_text().strip()


def test_fast_while_shims_start_slow_once_merging_settled(tmp_path):
    d = ksm_dir(tmp_path, sleep="1000")
    sharing = d / "pages_sharing"
    sharing.write_text("0\n")

    async def go():
        p = KsmPacer(str(d), settle=30, min_fast=0.2, check=0.05)
        assert p.open() and pace(d) == "1000"  # nothing started yet
        p.started()
        assert pace(d) == "20"
        for n in range(1000, 20000, 1000):  # ksmd merging: fast it stays
            sharing.write_text(f"{n}\n")
            await asyncio.sleep(0.05)
            assert pace(d) == "20"
        while pace(d) != "1000":  # steady: back to rest
            await asyncio.sleep(0.02)
        p.started()  # new shims: fast again
        assert pace(d) == "20"
        p.close()  # shutdown: the shims live on, their copies still to merge: fast stays
        assert pace(d) == "20"
        q = KsmPacer(str(d), settle=30, min_fast=0.1, check=0.05)
        assert q.open()  # the next daemon slows it down once merging settled
        while pace(d) != "1000":
            await asyncio.sleep(0.02)
        q.close()

    asyncio.run(go())


def test_a_fast_pace_found_at_open_is_left_until_merging_settled(tmp_path):
    """Another daemon's shims being merged (or a daemon that died fast): a daemon starting
    does not slow ksmd down under them, and a pacer that slowed down is overruled by the
    next start."""
    d = ksm_dir(tmp_path)  # the kernel's default pace: fast
    sharing = d / "pages_sharing"
    sharing.write_text("100\n")

    async def go():
        p = KsmPacer(str(d), settle=30, min_fast=0.1, check=0.05)
        assert p.open() and pace(d) == "20"
        for n in range(1000, 10000, 1000):
            sharing.write_text(f"{n}\n")
            await asyncio.sleep(0.05)
            assert pace(d) == "20"
        while pace(d) != "1000":
            await asyncio.sleep(0.02)
        other = KsmPacer(str(d), settle=30, min_fast=0.1, check=0.05)
        assert other.open() and pace(d) == "1000"
        p.started()
        assert pace(d) == "20"
        (d / "sleep_millisecs").write_text("1000")  # another daemon's pacer at rest
        p.started()  # a start re-asserts the fast pace
        assert pace(d) == "20"
        p.close()
        other.close()

    asyncio.run(go())


def test_rest_after_the_settle_bound_even_while_merging(tmp_path):
    d = ksm_dir(tmp_path)
    sharing = d / "pages_sharing"

    async def go():
        p = KsmPacer(str(d), settle=0.3, min_fast=0.1, check=0.05)
        p.open()
        p.started()
        n = 0
        while pace(d) == "20":
            n += 1000
            sharing.write_text(f"{n}\n")
            await asyncio.sleep(0.02)
        assert pace(d) == "1000"

    asyncio.run(go())


def test_a_pace_someone_else_set_is_left_alone(tmp_path):
    d = ksm_dir(tmp_path, sleep="50")  # tuned by the host's administrator
    p = KsmPacer(str(d))
    assert not p.open()
    assert pace(d) == "50"

    async def go():
        p.started()

    asyncio.run(go())
    assert pace(d) == "50"


def test_no_pacing_without_ksmd_or_when_turned_off(tmp_path):
    d = ksm_dir(tmp_path, run="0")
    assert not KsmPacer(str(d)).open() and pace(d) == "20"
    d = ksm_dir(tmp_path)
    assert not KsmPacer(str(d), enabled=False).open() and pace(d) == "20"
    assert not KsmPacer(str(tmp_path / "absent")).open()


def test_a_value_changed_while_fast_stays(tmp_path):
    d = ksm_dir(tmp_path)

    async def go():
        (d / "pages_sharing").write_text("5\n")
        p = KsmPacer(str(d), settle=0.05, min_fast=0.0, check=0.02)
        p.open()
        p.started()
        (d / "sleep_millisecs").write_text("77")
        await asyncio.sleep(0.2)
        assert pace(d) == "77"

    asyncio.run(go())


def pagemap(entries: dict[int, int], pages: int, base: int) -> io.BytesIO:
    """A pagemap of ``pages`` pages from address ``base``: page index -> entry."""
    buf = bytearray(8 * (base // _PAGE + pages))
    for i, e in entries.items():
        struct.pack_into("Q", buf, 8 * (base // _PAGE + i), e)
    return io.BytesIO(bytes(buf))


PRESENT, EXCLUSIVE = 1 << 63, 1 << 56


def test_only_present_exclusive_pages_of_private_writable_mappings_are_offered():
    base = 0x10000 * _PAGE
    copied, shared = PRESENT | EXCLUSIVE | 5, PRESENT | 7
    entries = {0: copied, 1: copied, 2: shared, 5: copied,   # gap of 3: joined
               20: copied,                                   # gap > 8: a range of its own
               30: EXCLUSIVE}                                # not present: not offered
    end = base + 40 * _PAGE
    maps = (f"{base:x}-{end:x} rw-p 00000000 00:00 0 \n"
            f"{end:x}-{end + 4 * _PAGE:x} r--p 00000000 08:01 12 /usr/lib/libc.so.6\n"
            f"{end + 4 * _PAGE:x}-{end + 8 * _PAGE:x} rw-p 00000000 00:00 0 [stack]\n").encode()
    pm = pagemap(entries | {40 + 4 + 1: copied, 40 + 1: copied}, 48, base)
    assert copied_ranges(maps, pm) == [(base, base + 6 * _PAGE),
                                       (base + 20 * _PAGE, base + 21 * _PAGE)]


def test_reservations_and_garbage_maps_lines_are_skipped():
    maps = (b"0-80000000000 rw-p 00000000 00:00 0\n"   # 8 TiB reserved: not read
            b"garbage\n\n")
    assert copied_ranges(maps, io.BytesIO(b"")) == []
