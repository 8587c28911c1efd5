"""Docs that say what is: the CRI package's module list names exactly its modules."""

from __future__ import annotations

import re
from pathlib import Path

import ctrd.cri

CRI = Path(ctrd.cri.__file__).parent


def test_cri_module_list_matches_the_files():
    named = set(re.findall(r":mod:`(\w+)`", ctrd.cri.__doc__))
    present = {p.stem for p in CRI.glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in CRI.iterdir() if (p / "__init__.py").exists()}
    assert named == present, {"not listed": sorted(present - named),
                              "listed, no such module": sorted(named - present)}
