"""Entry point discovery for the ``ctrd.plugins`` group, without ``importlib.metadata``.

``importlib.metadata`` (what pluggy's ``load_setuptools_entrypoints`` uses) costs more to
import than the rest of the daemon's start-up (bench/README.md, "Figures the code cites");
this reads the
same ``entry_points.txt`` files of every ``*.dist-info``/``*.egg-info`` directory on
``sys.path`` directly. Same rules as importlib.metadata: the first distribution of a given
(normalised) name on ``sys.path`` wins; within the group, an entry point name loads once.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterator

GROUP = "ctrd.plugins"


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = value`` line of a distribution's ``entry_points.txt``."""

    name: str
    value: str  # "module" or "module:attr.path"
    dist: str

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        obj = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def _sections(text: str) -> Iterator[tuple[str, str, str]]:
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif "=" in line:
            name, _, value = line.partition("=")
            yield section, name.strip(), value.strip()


def entry_points(group: str = GROUP, path: list[str] | None = None) -> list[EntryPoint]:
    """Every entry point of ``group`` visible on ``path`` (default ``sys.path``), in order."""
    seen_dists: set[str] = set()
    found: list[EntryPoint] = []
    for entry in path if path is not None else sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for meta in names:
            if not meta.endswith((".dist-info", ".egg-info")):
                continue
            dist = _normalise(meta.rsplit(".", 1)[0].split("-", 1)[0])
            if dist in seen_dists:
                continue
            seen_dists.add(dist)
            try:
                with open(os.path.join(entry or ".", meta, "entry_points.txt"),
                          encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            found += [EntryPoint(n, v, dist) for s, n, v in _sections(text) if s == group]
    return found
