"""Field-by-field comparison of two protobuf messages (or JSON-like values): which fields are
populated, and for the fields that must agree, their values. For comparing one runtime's CRI
answers with another's (tests/test_cri_compare.py) without caring about ids, times or IPs.

    rules = Rules(values=["state", "metadata.*", "labels"], ignore=["id", "*_at"],
                  norm=[("log_path", mask)], keys={"status.conditions": "type"})
    diffs = diff("PodSandboxStatus", reference_msg, candidate_msg, rules)
    assert not diffs, report(diffs)

A message is flattened into ``{path: value}`` over *every* field of its descriptor, set or
not: ``status.network.ip``, ``status.labels`` (a dict), ``mounts[/data].readonly`` (repeated
messages keyed by ``keys[path]``, else by index), ``mounts#`` (the item count). A path
compares, by the first rule that matches it (``fnmatch`` globs):

- ``ignore``: not at all;
- ``norm`` (glob, fn): ``fn(value)`` on both sides, then equal values;
- ``values``: equal values;
- anything else: equal *presence* (both populated or both empty: "", 0, False, [], {}, an
  unset message).

Each difference names its path, both values and the mode, and the ``owners`` note of the path
if one matches (who is fixing it), so one assertion lists every differing field.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Callable

ABSENT = "<absent>"   # a path the other side has and this side does not (a list item, a key)
SET = "<set>"         # a present sub-message (its own fields are flattened beside it)


@dataclass
class Rules:
    """How each path compares (first match wins: ignore, norm, values; else presence)."""

    values: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    norm: list[tuple[str, Callable[[Any], Any]]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def mode(self, path: str):
        cands = (path, _unindexed(path))
        if any(_match(p, g) for g in self.ignore for p in cands):
            return "ignore"
        for g, fn in self.norm:
            if any(_match(p, g) for p in cands):
                return fn
        if any(_match(p, g) for g in self.values for p in cands):
            return "value"
        return "presence"

    def owner(self, path: str) -> str:
        for g, who in self.owners.items():
            if _match(path, g) or _match(_unindexed(path), g):
                return who
        return ""


def _match(path: str, glob: str) -> bool:
    """``fnmatch`` with ``*`` and ``?`` only: ``[`` and ``]`` are literal (item keys)."""
    return fnmatch.fnmatchcase(path, glob.replace("[", "\0").replace("]", "[]]")
                               .replace("\0", "[[]"))


def _unindexed(path: str) -> str:
    """``mounts[/data].readonly`` -> ``mounts[].readonly`` (a rule may name any item)."""
    out, depth = [], 0
    for ch in path:
        if ch == "[":
            depth += 1
            if depth == 1:
                out.append("[]")
            continue
        if ch == "]":
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def populated(v: Any) -> bool:
    return v not in (None, ABSENT, "", 0, False) and v != [] and v != {}


def flatten(msg: Any, keys: dict[str, str] | None = None, prefix: str = "") -> dict[str, Any]:
    """``{path: value}`` of a protobuf message (every descriptor field) or of a JSON-like
    value (dicts recursed into, lists of dicts keyed like repeated messages)."""
    keys = keys or {}
    out: dict[str, Any] = {}
    if hasattr(msg, "DESCRIPTOR"):
        for fd in msg.DESCRIPTOR.fields:
            path = prefix + fd.name
            v = getattr(msg, fd.name)
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                vfd = fd.message_type.fields_by_name["value"]
                if vfd.message_type is None:
                    out[path] = dict(v)
                else:
                    out[path + "#"] = len(v)
                    for k in v:
                        out.update(flatten(v[k], keys, f"{path}[{k}]."))
            elif _repeated(fd):
                if fd.message_type is None:
                    out[path] = list(v)
                else:
                    out.update(_items(list(v), path, keys))
            elif fd.message_type is not None:
                if msg.HasField(fd.name):
                    out[path] = SET
                    out.update(flatten(v, keys, path + "."))
                else:
                    out[path] = None
            else:
                out[path] = v
        return out
    if isinstance(msg, dict):
        for k, v in msg.items():
            path = prefix + str(k)
            if isinstance(v, dict):
                out[path] = SET
                out.update(flatten(v, keys, path + "."))
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                out.update(_items(v, path, keys))
            else:
                out[path] = v
        return out
    return {prefix.rstrip(".") or "value": msg}


def _repeated(f) -> bool:
    r = getattr(f, "is_repeated", None)  # protobuf >= 5.29; ``label`` before (and removed)
    return r if isinstance(r, bool) else f.label == f.LABEL_REPEATED


def _items(items: list, path: str, keys: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {path + "#": len(items)}
    key = keys.get(_unindexed(path))
    for i, item in enumerate(items):
        k = getattr(item, key) if key and hasattr(item, "DESCRIPTOR") else (
            item.get(key) if key and isinstance(item, dict) else None)
        out.update(flatten(item, keys, f"{path}[{k if key else i}]."))
    return out


@dataclass
class Diff:
    where: str
    path: str
    reference: Any
    candidate: Any
    mode: str
    owner: str = ""

    def __str__(self) -> str:
        note = f"  [{self.owner}]" if self.owner else ""
        return (f"{self.where}: {self.path}: containerd={_short(self.reference)} "
                f"ctrd={_short(self.candidate)} ({self.mode}){note}")


def _short(v: Any, limit: int = 300) -> str:
    s = json.dumps(v, default=str, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


def diff(where: str, reference: Any, candidate: Any, rules: Rules) -> list[Diff]:
    """Every path where ``candidate`` differs from ``reference`` under ``rules``."""
    a, b = flatten(reference, rules.keys), flatten(candidate, rules.keys)
    out = []
    for path in sorted(set(a) | set(b)):
        mode = rules.mode(path)
        if mode == "ignore":
            continue
        va, vb = a.get(path, ABSENT), b.get(path, ABSENT)
        if callable(mode):
            na = mode(va) if va is not ABSENT else ABSENT
            nb = mode(vb) if vb is not ABSENT else ABSENT
            same, label = na == nb, "normalised value"
            if not same:
                va, vb = na, nb
        elif mode == "value":
            same, label = va == vb, "value"
        else:
            same, label = populated(va) == populated(vb), "populated"
        if not same:
            out.append(Diff(where, path, va, vb, label, rules.owner(path)))
    return out


def key_diff(where: str, reference: dict, candidate: dict, owners: dict | None = None,
             ignore: tuple[str, ...] = (), depth: int = 1, prefix: str = "info.") -> list[Diff]:
    """Keys one dict has and the other has not (a verbose ``info`` JSON), down to ``depth``
    levels where both sides hold a dict; ``ignore`` names paths (``config.x``) to skip."""
    out = []
    for k in sorted(set(reference) | set(candidate)):
        path = f"{prefix}{k}"
        if path[len("info."):] in ignore or k in ignore:
            continue
        if (k in reference) != (k in candidate):
            owner = next((w for g, w in (owners or {}).items()
                          if _match(k, g) or _match(path, g)), "")
            out.append(Diff(where, path, "present" if k in reference else ABSENT,
                            "present" if k in candidate else ABSENT, "key", owner))
        elif depth > 1 and isinstance(reference[k], dict) and isinstance(candidate[k], dict):
            out += key_diff(where, reference[k], candidate[k], owners, ignore, depth - 1,
                            path + ".")
    return out


def report(diffs: list[Diff]) -> str:
    return f"{len(diffs)} field(s) differ from containerd:\n" + "\n".join(map(str, diffs))
