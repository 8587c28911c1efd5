"""Sandboxes: the metadata record of a sandbox, per namespace (containerd 2.x's
``core/metadata/sandbox.go``; what runs it is a sandbox controller's business).

Contract (containerd's, in its order and words):

- Create stamps created/updated (now, UTC, nanoseconds), validates the id with the identifier
  rules (``invalid sandbox ID: identifier ...``; nothing is stored) and fails with ``sandbox
  bucket "<id>" already exists`` for a taken id. Labels are checked for size (as every
  other record of ctrd's: a label over 4096 bytes would not fit a key).
- Update takes field paths ``labels``, ``labels.<key>``, ``extensions``,
  ``extensions.<key>``, ``spec``, ``runtime``; any other is ``cannot update "<path>" field on
  sandbox "<id>"``. No paths means those four, and fails if ``runtime.name`` would change
  (``sandbox.Runtime.Name field is immutable``). ``sandboxer`` never changes. The stored
  record is rewritten whole (containerd rewrites labels and extensions buckets too), so a
  ``labels.<k>`` path with no value in the request stores ``k`` with an empty value, as
  containerd does.
- Get / Update / Delete of an unknown id: NotFound (``bucket "<id>" not found``, ``failed
  to delete sandbox "<id>"``).
- List takes containerd's sandbox filters: ``id`` and ``labels.<key>`` (its adaptor knows no
  other field), in id order.

Sandboxes are GC roots (:mod:`ctrd.metadata.gc`) through their ``containerd.io/gc.ref.*``
labels, as in containerd. Containers name their sandbox in their own record
(``Container.sandbox``); that is no GC edge in containerd and none here.

Storage: bucket ``sandboxes``, key ``<ns>\\0<id>`` -> ``{id, labels, runtime: {name, options},
spec, extensions, sandboxer, created_at, updated_at}``; Any values as in the containers
bucket (``{type_url, value: base64}``), timestamps in integer nanoseconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ctrd import identifiers
from ctrd.errdefs import AlreadyExists, InvalidArgument, NotFound, quote
from ctrd.metadata.containers import (AnyValue, Runtime, _any_from_rec, _any_to_rec,
                                     extensions_from_rec, extensions_to_rec,
                                     runtime_from_rec, runtime_to_rec)
from ctrd.metadata.db import DB, get_json, key, prefix, put_json, scan

BUCKET = "sandboxes"
FULL_UPDATE = ("labels", "extensions", "spec", "runtime")


@dataclass
class Sandbox:
    id: str
    runtime: Runtime = field(default_factory=Runtime)
    spec: AnyValue | None = None
    labels: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, AnyValue] = field(default_factory=dict)
    sandboxer: str = ""
    created_at: int = 0   # ns since the epoch
    updated_at: int = 0


def to_rec(s: Sandbox) -> dict:
    return {"id": s.id, "labels": s.labels, "runtime": runtime_to_rec(s.runtime),
            "spec": _any_to_rec(s.spec), "extensions": extensions_to_rec(s.extensions),
            "sandboxer": s.sandboxer, "created_at": s.created_at, "updated_at": s.updated_at}


def from_rec(rec: dict) -> Sandbox:
    return Sandbox(id=rec["id"], runtime=runtime_from_rec(rec.get("runtime")),
                   spec=_any_from_rec(rec.get("spec")), labels=dict(rec.get("labels") or {}),
                   extensions=extensions_from_rec(rec.get("extensions")),
                   sandboxer=rec.get("sandboxer", ""), created_at=rec.get("created_at", 0),
                   updated_at=rec.get("updated_at", 0))


def validate(s: Sandbox) -> None:
    """containerd's sandbox validation (the id), plus label sizes; raises InvalidArgument."""
    try:
        identifiers.validate(s.id)
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid sandbox ID: {e.detail}") from None
    if any(k == "" for k in s.extensions):
        raise InvalidArgument("sandbox.Extension keys must not be zero-length")
    identifiers.validate_labels(s.labels, "sandbox.Labels")


def _now_ns() -> int:
    return time.time_ns()


class SandboxStore:
    """Sandbox records over one :class:`DB`. Blocking (one LMDB transaction per call): call
    from a worker thread, except :meth:`get` (one read: fine on the event loop)."""

    def __init__(self, db: DB) -> None:
        self.db = db

    @property
    def _bucket(self):
        return self.db.bucket(BUCKET)

    def get(self, ns: str, id_: str) -> Sandbox:
        with self.db.view() as txn:
            rec = get_json(txn, self._bucket, key(ns, id_)) if id_ and "\0" not in id_ else None
        if rec is None:
            raise NotFound(f"bucket {quote(id_)} not found")  # containerd's words
        return from_rec(rec)

    def list(self, ns: str, match: Callable[[Sandbox], bool] | None = None) -> list[Sandbox]:
        out = []
        with self.db.view() as txn:
            for _, v in scan(txn, self._bucket, prefix(ns)):
                s = from_rec(json.loads(v))
                if match is None or match(s):
                    out.append(s)
        return out

    def create(self, ns: str, s: Sandbox) -> Sandbox:
        """Store a new sandbox; returns it with its timestamps."""
        s = replace(s, labels=dict(s.labels), extensions=dict(s.extensions))
        s.created_at = s.updated_at = _now_ns()
        try:
            validate(s)
        except InvalidArgument as e:
            raise InvalidArgument(f"failed to validate sandbox: {e.detail}") from None
        with self.db.update() as txn:
            self.db.ensure_namespace(txn, ns)
            k = key(ns, s.id)
            if txn.get(k, db=self._bucket) is not None:
                raise AlreadyExists(f"sandbox bucket {quote(s.id)} already exists")
            put_json(txn, self._bucket, k, to_rec(s))
        self.db.mutated()
        return s

    def update(self, ns: str, s: Sandbox, fieldpaths: list[str] | None = None) -> Sandbox:
        """Apply ``s``'s fields named by ``fieldpaths`` (see the module docstring)."""
        with self.db.update() as txn:
            rec = None
            if s.id and "\0" not in s.id:
                k = key(ns, s.id)
                rec = get_json(txn, self._bucket, k)
            if rec is None:
                raise NotFound(f"bucket {quote(s.id)} not found")
            cur = from_rec(rec)
            paths = list(fieldpaths or ())
            if not paths:
                paths = list(FULL_UPDATE)
                if cur.runtime.name != s.runtime.name:
                    raise InvalidArgument("sandbox.Runtime.Name field is immutable")
            for path in paths:
                if path.startswith("labels."):
                    lk = path[len("labels."):]
                    cur.labels[lk] = s.labels.get(lk, "")
                elif path.startswith("extensions."):
                    ek = path[len("extensions."):]
                    cur.extensions[ek] = s.extensions.get(ek, AnyValue())
                elif path == "labels":
                    cur.labels = dict(s.labels)
                elif path == "extensions":
                    cur.extensions = dict(s.extensions)
                elif path == "runtime":
                    cur.runtime = s.runtime
                elif path == "spec":
                    cur.spec = s.spec
                else:
                    raise InvalidArgument(f"cannot update {quote(path)} field on sandbox "
                                          f"{quote(s.id)}")
            cur.updated_at = _now_ns()
            validate(cur)
            put_json(txn, self._bucket, k, to_rec(cur))
        self.db.mutated()
        return cur

    def delete(self, ns: str, id_: str) -> None:
        with self.db.update() as txn:
            if not id_ or "\0" in id_ or not txn.delete(key(ns, id_), db=self._bucket):
                raise NotFound(f"failed to delete sandbox {quote(id_)}")
        # What its labels referenced may now be garbage.
        self.db.mutated(dirty=True)
