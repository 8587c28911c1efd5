#!/usr/bin/env python3
"""Check api/ against containerd 1.6, containerd 2.3.4 and CRI 1.36 with the shared
check-api-compat tool, allowing exactly the differences api/WIRE-DIFFERENCES.md lists.

usage: python scripts/check_api.py [--tool PATH]

One proto tree serves both generations of clients, so against each reference some
differences are expected (2.x additions are "extra" to 1.6; 1.6 type names differ from
2.x's for the same bytes). Each is listed, with why the wire is the same, under a
`## ref <name>` heading of api/WIRE-DIFFERENCES.md, one `ERROR ...` line as the tool prints
it inside a code block. Exit 1 when the tool reports an error the file does not list, or
the file lists one that no longer occurs (the file says what is, not what was).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIFFS = ROOT / "api" / "WIRE-DIFFERENCES.md"
TOOL = ROOT.parent / "shared" / "tools" / "check-api-compat"
REFS = ("containerd-1.6", "containerd-2.3.4", "cri-1.36")


def listed(text: str) -> dict[str, set[str]]:
    """{ref: {error line}} from the file's `## ref NAME` sections' code blocks."""
    out: dict[str, set[str]] = {r: set() for r in REFS}
    ref, in_block = None, False
    for line in text.splitlines():
        m = re.match(r"##\s+ref\s+(\S+)", line)
        if m:
            ref = m.group(1)
            if ref not in out:
                raise SystemExit(f"{DIFFS.name}: unknown reference {ref!r} (know {REFS})")
            continue
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block and ref and line.startswith("ERROR "):
            out[ref].add(line.strip())
    return out


def reported(tool: Path, ref: str) -> tuple[set[str], str]:
    r = subprocess.run(["bash", str(tool), "api", "--ref", ref, "--require-all"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)})
    errs = {ln.strip() for ln in r.stdout.splitlines() if ln.startswith("ERROR ")}
    if r.returncode not in (0, 1) or (r.returncode == 1 and not errs):
        raise SystemExit(f"check-api-compat --ref {ref} failed:\n{r.stdout}{r.stderr}")
    return errs, r.stdout.splitlines()[-1] if r.stdout else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", type=Path, default=TOOL)
    args = ap.parse_args()
    allowed = listed(DIFFS.read_text())
    bad = 0
    for ref in REFS:
        errs, summary = reported(args.tool, ref)
        new, stale = errs - allowed[ref], allowed[ref] - errs
        for e in sorted(new):
            print(f"{ref}: not listed in {DIFFS.relative_to(ROOT)}: {e}")
        for e in sorted(stale):
            print(f"{ref}: listed in {DIFFS.relative_to(ROOT)} but no longer reported: {e}")
        bad += len(new) + len(stale)
        print(f"check-api {ref}: {len(errs)} known differences; {summary}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
