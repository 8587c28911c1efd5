"""Containers: the metadata record of a container, per namespace (no process: that is a task).

containerd's container store semantics (``metadata/containers.go``), including its quirks:

- Create validates (id an identifier, extension keys non-empty, labels within the size limit,
  runtime name set, spec set, a snapshot key only with a snapshotter), stamps created/updated
  and fails with ``container "<id>": already exists`` for a taken id. Labels with empty
  values are dropped. Errors read ``create container failed validation: <what>``.
- Update takes field paths ``labels``, ``labels.<key>``, ``extensions``,
  ``extensions.<key>``, ``spec``, ``image``, ``snapshotkey``; any other path (``runtime``,
  ``snapshotter``, ``id``...) is ``cannot update "<path>" field on "<id>"``. No paths means a
  full replace of exactly those fields, which fails if it would change the immutable
  ``snapshotter`` or ``runtime.name``. The result is validated again (``update failed
  validation: ...``); the creation time is kept.
- Extensions are written key by key over the stored ones, so (as in containerd 1.6) a key once
  set is never removed: ``extensions.<k>`` without a value in the request stores an empty Any,
  and an ``extensions`` replacement answers with the new map but keeps the old keys stored.
- Spec, runtime options and extensions are opaque ``Any`` values: type URL and bytes are
  stored and returned unchanged (ctr's spec is JSON under
  ``types.containerd.io/opencontainers/runtime-spec/1/Spec``).

Containers are GC roots (:mod:`ctrd.metadata.gc`): a container holds its snapshot
(``snapshotter``/``snapshot_key``) and whatever its ``containerd.io/gc.ref.*`` labels name;
deleting it marks the database dirty so a collection can release them.

Storage: bucket ``containers``, key ``<ns>\\0<id>`` -> ``{id, labels, image, runtime: {name,
options}, spec, snapshotter, snapshot_key, extensions, created_at, updated_at[, sandbox]}``
where every Any is ``{type_url, value: base64}`` (``options``/``spec`` null when absent).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ctrd import identifiers
from ctrd.errdefs import AlreadyExists, InvalidArgument, NotFound, quote
from ctrd.metadata.db import DB, get_json, key, prefix, put_json, scan


@dataclass(frozen=True)
class AnyValue:
    """A ``google.protobuf.Any`` as stored: its type URL as the client sent it, raw bytes."""

    type_url: str = ""
    value: bytes = b""


@dataclass
class Runtime:
    name: str = ""
    options: AnyValue | None = None


@dataclass
class Container:
    id: str
    runtime: Runtime = field(default_factory=Runtime)
    spec: AnyValue | None = None
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, AnyValue] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    sandbox: str = ""  # containerd 2.x: the sandbox it runs in; set at create, immutable


# Update paths besides labels.<k> / extensions.<k>; no paths at all means these.
MUTABLE = ("labels", "spec", "extensions", "image", "snapshotkey")


def _any_to_rec(a: AnyValue | None) -> dict | None:
    if a is None:
        return None
    return {"type_url": a.type_url, "value": base64.b64encode(a.value).decode()}


def _any_from_rec(rec: dict | None) -> AnyValue | None:
    if rec is None:
        return None
    return AnyValue(rec["type_url"], base64.b64decode(rec["value"]))


def runtime_to_rec(rt: Runtime) -> dict:
    return {"name": rt.name, "options": _any_to_rec(rt.options)}


def runtime_from_rec(rec: dict | None) -> Runtime:
    rec = rec or {}
    return Runtime(rec.get("name", ""), _any_from_rec(rec.get("options")))


def extensions_to_rec(exts: dict[str, AnyValue]) -> dict:
    return {k: _any_to_rec(v) for k, v in exts.items()}


def extensions_from_rec(rec: dict | None) -> dict[str, AnyValue]:
    return {k: _any_from_rec(v) or AnyValue() for k, v in (rec or {}).items()}


def _to_rec(c: Container) -> dict:
    return {"id": c.id, "labels": c.labels, "image": c.image,
            "runtime": runtime_to_rec(c.runtime),
            "spec": _any_to_rec(c.spec), "snapshotter": c.snapshotter,
            "snapshot_key": c.snapshot_key,
            "extensions": extensions_to_rec(c.extensions),
            "created_at": c.created_at, "updated_at": c.updated_at,
            **({"sandbox": c.sandbox} if c.sandbox else {})}


def _from_rec(rec: dict) -> Container:
    return Container(
        id=rec["id"], runtime=runtime_from_rec(rec.get("runtime")),
        spec=_any_from_rec(rec.get("spec")), labels=dict(rec.get("labels") or {}),
        image=rec.get("image", ""), snapshotter=rec.get("snapshotter", ""),
        snapshot_key=rec.get("snapshot_key", ""),
        extensions=extensions_from_rec(rec.get("extensions")),
        created_at=rec.get("created_at", 0.0), updated_at=rec.get("updated_at", 0.0),
        sandbox=rec.get("sandbox", ""))


def validate(c: Container) -> None:
    """containerd's ``validateContainer``, in its order; raises InvalidArgument."""
    try:
        identifiers.validate(c.id)
    except InvalidArgument as e:
        raise InvalidArgument(f"container.ID: {e.detail}") from None
    if any(k == "" for k in c.extensions):
        raise InvalidArgument("container.Extension keys must not be zero-length")
    identifiers.validate_labels(c.labels, "containers.Labels")
    if not c.runtime.name:
        raise InvalidArgument("container.Runtime.Name must be set")
    if c.spec is None:
        raise InvalidArgument("container.Spec must be set")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey "
                              "is set")


def _prefixed(what: str, e: InvalidArgument) -> InvalidArgument:
    return InvalidArgument(f"{what}: {e.detail}")


class ContainerStore:
    """Container records over one :class:`DB`. Blocking: call from a worker thread, except
    :meth:`get` (one LMDB read: fine on the event loop, see :mod:`ctrd.metadata.db`)."""

    def __init__(self, db: DB) -> None:
        self.db = db

    @property
    def _bucket(self):
        return self.db.bucket("containers")

    def get(self, ns: str, id_: str) -> Container:
        with self.db.view() as txn:
            rec = get_json(txn, self._bucket, key(ns, id_))
        if rec is None:
            raise NotFound(f"container {quote(id_)} in namespace {quote(ns)}")
        return _from_rec(rec)

    def list(self, ns: str, match: Callable[[Container], bool] | None = None
             ) -> list[Container]:
        """Containers of ``ns`` in id order (containerd's bucket order), filtered."""
        out = []
        with self.db.view() as txn:
            for _, v in scan(txn, self._bucket, prefix(ns)):
                c = _from_rec(json.loads(v))
                if match is None or match(c):
                    out.append(c)
        return out

    def create(self, ns: str, c: Container) -> Container:
        """Store a new container; returns it with its timestamps and without empty labels."""
        try:
            validate(c)
        except InvalidArgument as e:
            raise _prefixed("create container failed validation", e) from None
        c = replace(c, labels={k: v for k, v in c.labels.items() if v},
                    extensions=dict(c.extensions))
        with self.db.update() as txn:
            self.db.ensure_namespace(txn, ns)
            k = key(ns, c.id)
            if txn.get(k, db=self._bucket) is not None:
                raise AlreadyExists(f"container {quote(c.id)}")
            c.created_at = c.updated_at = time.time()
            put_json(txn, self._bucket, k, _to_rec(c))
        self.db.mutated()
        return c

    def update(self, ns: str, c: Container, fieldpaths: list[str] | None = None) -> Container:
        """Apply ``c``'s fields named by ``fieldpaths`` (see the module docstring)."""
        if not c.id:
            raise InvalidArgument("must specify a container id")
        with self.db.update() as txn:
            k = key(ns, c.id)
            rec = get_json(txn, self._bucket, k)
            if rec is None:
                raise NotFound(f"container {quote(c.id)}")
            cur = _from_rec(rec)
            created = cur.created_at
            paths = list(fieldpaths or ())
            if not paths:
                paths = list(MUTABLE)
                # Immutable fields must not silently change on a full replace (containerd:
                # "this allows these fields to become mutable in the future").
                if cur.snapshotter != c.snapshotter:
                    raise InvalidArgument("container.Snapshotter field is immutable")
                if cur.runtime.name != c.runtime.name:
                    raise InvalidArgument("container.Runtime.Name field is immutable")
            new_ext: dict[str, AnyValue] = {}
            replace_ext = False
            for path in paths:
                if path.startswith("labels."):
                    lk = path[len("labels."):]
                    cur.labels[lk] = c.labels.get(lk, "")
                elif path.startswith("extensions."):
                    ek = path[len("extensions."):]
                    new_ext[ek] = c.extensions.get(ek, AnyValue())
                elif path == "labels":
                    cur.labels = dict(c.labels)
                elif path == "spec":
                    cur.spec = c.spec
                elif path == "extensions":
                    new_ext, replace_ext = dict(c.extensions), True
                elif path == "image":
                    cur.image = c.image
                elif path == "snapshotkey":
                    cur.snapshot_key = c.snapshot_key
                else:
                    raise InvalidArgument(f"cannot update {quote(path)} field on {quote(c.id)}")
            checked = replace(cur, extensions=new_ext if replace_ext
                              else {**cur.extensions, **new_ext})
            try:
                validate(checked)
            except InvalidArgument as e:
                raise _prefixed("update failed validation", e) from None
            checked.labels = {lk: v for lk, v in checked.labels.items() if v}
            checked.created_at = created
            checked.updated_at = time.time()
            # containerd writes extensions over the stored ones (CreateBucketIfNotExists,
            # never deleted): even a full replacement keeps keys it does not mention in the
            # record, while the response shows only the replacement.
            stored = replace(checked, extensions={**cur.extensions, **new_ext})
            put_json(txn, self._bucket, k, _to_rec(stored))
        self.db.mutated()
        return checked

    def delete(self, ns: str, id_: str) -> None:
        with self.db.update() as txn:
            if not txn.delete(key(ns, id_), db=self._bucket):
                raise NotFound(f"container {id_}")
        # Its snapshot and label references may now be garbage.
        self.db.mutated(dirty=True)
