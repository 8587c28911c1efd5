"""The metadata store a snapshotter keeps under its own root (containerd's
``snapshots/storage``), in one LMDB environment.

Lifecycle: a snapshotter opens :class:`MetaStore` on ``<root>/metadata.lmdb`` and runs every
operation in one transaction: :meth:`MetaStore.view` for reads, :meth:`MetaStore.update` for
mutations (committed when the block returns, aborted when it raises). Inside, the functions
of this module read and change records: :func:`create_snapshot` (an active snapshot or a
view, with a new numeric id that names the snapshot's directory on disk),
:func:`commit_active` (the active key becomes a committed name, same id), :func:`remove`,
:func:`get_info`, :func:`get_snapshot` (id, kind and the parent ids, nearest first),
:func:`update_info`, :func:`walk_info` and :func:`id_map` (what ``cleanup`` keeps).

Layout (sub-databases):

- ``meta``: ``schema`` and ``next_id`` (ids are never reused: a directory left behind by a
  crashed removal can never be taken for a newer snapshot's);
- ``snapshots``: :func:`record_key` of the key/name -> JSON ``{name, id, kind, parent,
  labels, created, updated, size, inodes}``;
- ``parents``: ``<parent id><child id>`` (8 bytes big-endian each) -> child name, so "has
  children" is one cursor seek, as containerd's parents bucket.

Keys are client text: any string, hostile or long; they never become paths (directories are
named by id). Error texts are containerd's (``storage/bolt.go``).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import lmdb

from ctrd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, quote
from ctrd.identifiers import updated_labels
from ctrd.snapshots.snapshotter import Info, Kind, Usage

# hashlib, shutil and tempfile are imported where they are used: opening a snapshotter (the
# daemon's start) needs none of them.

SCHEMA_VERSION = 1
# LMDB keys are at most 511 bytes; longer names are stored under 0xff + sha256 (0xff never
# occurs in UTF-8, so a hashed key cannot collide with a real one). Records keep the name.
MAX_KEY = 400


@dataclass
class Snapshot:
    """An active snapshot or view as a snapshotter needs it to build mounts."""

    id: str
    kind: Kind
    parent_ids: list[str] = field(default_factory=list)  # nearest parent first
    labels: dict[str, str] = field(default_factory=dict)  # e.g. the uid/gid mapping labels


def record_key(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY:
        import hashlib

        raw = b"\xff" + hashlib.sha256(raw).hexdigest().encode()
    return raw


def _parent_key(parent_id: int, child_id: int) -> bytes:
    return struct.pack(">QQ", parent_id, child_id)


class MetaStore:
    """An LMDB environment at ``path`` (a directory, created 0700)."""

    def __init__(self, path: str, map_size: int = 1 << 32) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        self.env = lmdb.open(path, map_size=map_size, max_dbs=4, subdir=True, mode=0o600)
        self._closed = False
        self._lock = threading.Lock()
        with self.env.begin(write=True) as txn:
            self.meta = self.env.open_db(b"meta", txn=txn)
            self.snapshots = self.env.open_db(b"snapshots", txn=txn)
            self.parents = self.env.open_db(b"parents", txn=txn)
            found = txn.get(b"schema", db=self.meta)
            if found is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self.meta)
            elif int(found) != SCHEMA_VERSION:
                raise FailedPrecondition(f"snapshot metadata {path}: schema version "
                                         f"{int(found)}, this ctrd knows {SCHEMA_VERSION}")

    @contextmanager
    def view(self) -> Iterator["Txn"]:
        with self.env.begin(write=False) as txn:
            yield Txn(self, txn)

    @contextmanager
    def update(self) -> Iterator["Txn"]:
        """One write transaction: committed if the block returns, aborted if it raises."""
        with self.env.begin(write=True) as txn:
            yield Txn(self, txn)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.env.close()


class Txn:
    """A transaction on a :class:`MetaStore` (what the module's functions take)."""

    def __init__(self, store: MetaStore, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn

    def get(self, name: str) -> dict | None:
        raw = self.txn.get(record_key(name), db=self.store.snapshots)
        return None if raw is None else json.loads(raw)

    def put(self, name: str, rec: dict) -> None:
        rec["name"] = name
        self.txn.put(record_key(name), json.dumps(rec, sort_keys=True).encode(),
                     db=self.store.snapshots)

    def delete(self, name: str) -> None:
        self.txn.delete(record_key(name), db=self.store.snapshots)

    def next_id(self) -> int:
        raw = self.txn.get(b"next_id", db=self.store.meta)
        n = int(raw) if raw is not None else 1
        self.txn.put(b"next_id", str(n + 1).encode(), db=self.store.meta)
        return n

    def has_children(self, sid: int) -> bool:
        cur = self.txn.cursor(db=self.store.parents)
        start = struct.pack(">Q", sid)
        return cur.set_range(start) and cur.key().startswith(start)

    def records(self) -> Iterator[dict]:
        for _, v in self.txn.cursor(db=self.store.snapshots):
            yield json.loads(v)


def _info(rec: dict) -> Info:
    return Info(name=rec["name"], kind=Kind(rec["kind"]), parent=rec.get("parent", ""),
                labels=dict(rec.get("labels") or {}), created_at=rec["created"],
                updated_at=rec["updated"])


def _check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("snapshot key must not be empty")


def get_info(t: Txn, key: str) -> tuple[str, Info, Usage]:
    """The id, info and stored usage (committed snapshots only) of ``key``."""
    rec = t.get(key) if key else None
    if rec is None:
        raise NotFound("snapshot does not exist")
    return str(rec["id"]), _info(rec), Usage(rec.get("size", 0), rec.get("inodes", 0))


def update_info(t: Txn, info: Info, fieldpaths: list[str] | None = None) -> Info:
    """Change the labels of ``info.name`` (all, or those named by ``labels.<key>`` paths);
    any other field path is InvalidArgument."""
    rec = t.get(info.name) if info.name else None
    if rec is None:
        raise NotFound("snapshot does not exist")
    rec["labels"] = updated_labels(rec.get("labels") or {}, dict(info.labels or {}),
                                   fieldpaths, f"snapshot {quote(info.name)}",
                                   "snapshot.Labels")
    rec["updated"] = time.time()
    t.put(info.name, rec)
    return _info(rec)


def walk_info(t: Txn, match: Callable[[Info], bool] | None = None) -> list[Info]:
    """Every snapshot's info that ``match`` selects, in key order."""
    out = []
    for rec in t.records():
        info = _info(rec)
        if match is None or match(info):
            out.append(info)
    return out


def _parent_ids(t: Txn, parent: str) -> list[str]:
    ids = []
    while parent:
        rec = t.get(parent)
        if rec is None:
            raise NotFound("missing parent")
        ids.append(str(rec["id"]))
        parent = rec.get("parent", "")
    return ids


def get_snapshot(t: Txn, key: str) -> Snapshot:
    """An active snapshot or view with its parent chain; a committed one is
    FailedPrecondition."""
    rec = t.get(key) if key else None
    if rec is None:
        raise NotFound("snapshot does not exist")
    kind = Kind(rec["kind"])
    if kind not in (Kind.ACTIVE, Kind.VIEW):
        raise FailedPrecondition(f"requested snapshot {key} not active or view")
    return Snapshot(str(rec["id"]), kind, _parent_ids(t, rec.get("parent", "")),
                    dict(rec.get("labels") or {}))


def create_snapshot(t: Txn, kind: Kind, key: str, parent: str = "",
                    labels: dict[str, str] | None = None) -> Snapshot:
    if kind not in (Kind.ACTIVE, Kind.VIEW):
        raise InvalidArgument(f"snapshot type {kind.name} invalid; only snapshots of type "
                              "Active or View can be created")
    _check_key(key)
    prec = None
    if parent:
        prec = t.get(parent)
        if prec is None:
            raise NotFound(f"missing parent {parent!r} bucket")
        if prec["kind"] != Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is not committed snapshot")
    if t.get(key) is not None:
        raise AlreadyExists(f"snapshot {key}")
    sid = t.next_id()
    now = time.time()
    t.put(key, {"id": sid, "kind": int(kind), "parent": parent, "labels": dict(labels or {}),
                "created": now, "updated": now})
    parent_ids: list[str] = []
    if prec is not None:
        t.txn.put(_parent_key(prec["id"], sid), key.encode("utf-8", "surrogatepass"),
                  db=t.store.parents)
        parent_ids = _parent_ids(t, parent)
    return Snapshot(str(sid), kind, parent_ids, dict(labels or {}))


def remove(t: Txn, key: str) -> tuple[str, Kind]:
    """Delete ``key``'s record; one with children is FailedPrecondition."""
    rec = t.get(key) if key else None
    if rec is None:
        raise NotFound(f"snapshot {key}")
    if t.has_children(rec["id"]):
        raise FailedPrecondition("cannot remove snapshot with child")
    if rec.get("parent"):
        prec = t.get(rec["parent"])
        if prec is None:
            raise NotFound(f"snapshot {key}")
        t.txn.delete(_parent_key(prec["id"], rec["id"]), db=t.store.parents)
    t.delete(key)
    return str(rec["id"]), Kind(rec["kind"])


def commit_active(t: Txn, key: str, name: str, usage: Usage,
                  labels: dict[str, str] | None = None, parent: str = "") -> str:
    """Rename active ``key`` to committed ``name`` (same id, new labels, new times).

    ``parent`` (containerd 2.x's commit-time rebase): a snapshot prepared without a parent
    is committed on top of ``parent``, which must be committed; one that has a parent keeps
    it, and naming another is InvalidArgument, as containerd's storage."""
    _check_key(name)
    if t.get(name) is not None:
        raise AlreadyExists(f"committed snapshot {name}")
    rec = t.get(key) if key else None
    if rec is None:
        raise NotFound(f"failed to get active snapshot {quote(key)}")
    if rec["kind"] != Kind.ACTIVE:
        raise FailedPrecondition(f"snapshot {quote(key)} is not active")
    if parent and rec.get("parent", "") != parent:
        if rec.get("parent"):
            raise InvalidArgument(f"cannot change parent of active snapshot {quote(key)} on "
                                  "commit")
        rec["parent"] = parent
    now = time.time()
    rec.update(kind=int(Kind.COMMITTED), created=now, updated=now, labels=dict(labels or {}),
               size=usage.size, inodes=usage.inodes)
    t.delete(key)
    t.put(name, rec)
    if rec.get("parent"):
        prec = t.get(rec["parent"])
        if prec is None:
            raise NotFound(f"missing parent {rec['parent']!r} of snapshot {key!r}")
        if prec["kind"] != Kind.COMMITTED:
            raise FailedPrecondition(f"parent {quote(rec['parent'])} is not committed")
        t.txn.put(_parent_key(prec["id"], rec["id"]), name.encode("utf-8", "surrogatepass"),
                  db=t.store.parents)
    return str(rec["id"])


def id_map(t: Txn) -> dict[str, str]:
    """id -> key/name of every snapshot."""
    return {str(rec["id"]): rec["name"] for rec in t.records()}


def disk_usage(path: str) -> Usage:
    """containerd's ``fs.DiskUsage``: inodes under ``path`` (itself included), each counted
    once however many links it has, and the bytes they occupy (allocated blocks)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    st = os.lstat(path)
    seen.add((st.st_dev, st.st_ino))
    size += st.st_blocks * 512
    stack = [path]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                k = (st.st_dev, st.st_ino)
                if k not in seen:
                    seen.add(k)
                    size += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return Usage(size=size, inodes=len(seen))


class DirSnapshotter:
    """What the overlay and native snapshotters share: a :class:`MetaStore` at
    ``<root>/metadata.lmdb`` and one directory per snapshot id under ``<root>/snapshots``.

    Subclasses say how a new directory is laid out and filled (:meth:`_populate`), where its
    usage is measured (:meth:`_usage_path`) and which mounts show a snapshot
    (:meth:`_mounts`).

    Removal: ``remove`` deletes the record and, in the same transaction, renames the
    directory to ``rm-<id>``; once committed the directory is deleted at once, or, with
    ``async_remove``, left to :meth:`cleanup` (containerd's overlay plugin default), which
    deletes every directory under ``snapshots/`` that no record names. Ids are never
    reused, so a leftover can never be mistaken for a live snapshot.
    """

    # stat and mounts are LMDB reads (a read transaction never waits for a writer): cheap
    # enough for callers to run them on the event loop.
    quick_reads = True
    # Whether "failed to commit snapshot" names the key, as containerd 2.x's overlay does.
    commit_error_names_key = False

    def __init__(self, root: str, async_remove: bool = False) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        os.makedirs(self.snapshots_dir, mode=0o700, exist_ok=True)
        self.ms = MetaStore(os.path.join(self.root, "metadata.lmdb"))
        self.async_remove = async_remove

    # -- for subclasses ------------------------------------------------------------------

    def _dir(self, sid: str) -> str:
        return os.path.join(self.snapshots_dir, sid)

    def _populate(self, td: str, s: Snapshot) -> bool:
        """Fill the new directory ``td`` for ``s``; False when ``s`` needs no directory."""
        raise NotImplementedError

    def _usage_path(self, sid: str) -> str:
        raise NotImplementedError

    def _mounts(self, s: Snapshot) -> list:
        raise NotImplementedError

    # -- the Snapshotter protocol --------------------------------------------------------

    def stat(self, key: str) -> Info:
        with self.ms.view() as t:
            return get_info(t, key)[1]

    def update(self, info: Info, fieldpaths: list[str] | None = None) -> Info:
        with self.ms.update() as t:
            return update_info(t, info, fieldpaths)

    def usage(self, key: str) -> Usage:
        with self.ms.view() as t:
            sid, info, usage = get_info(t, key)
        if info.kind == Kind.ACTIVE:
            usage = disk_usage(self._usage_path(sid))
        return usage

    def mounts(self, key: str) -> list:
        with self.ms.view() as t:
            s = get_snapshot(t, key)
        return self._mounts(s)

    def prepare(self, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> list:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str,
                labels: dict[str, str] | None) -> list:
        # The directory is made inside the write transaction, which serialises it with
        # cleanup(): cleanup never sees a half-made "new-" directory of a live create.
        import shutil
        import tempfile

        with self.ms.update() as t:
            s = create_snapshot(t, kind, key, parent, labels)
            td = tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir)
            try:
                if self._populate(td, s):
                    os.rename(td, self._dir(s.id))
                else:
                    os.rmdir(td)
            except BaseException:
                shutil.rmtree(td, ignore_errors=True)
                raise
        return self._mounts(s)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None,
               parent: str = "") -> None:
        with self.ms.update() as t:
            sid, info, _ = get_info(t, key)
            if info.kind != Kind.ACTIVE:
                # containerd wraps storage's message so; 2.x's overlay names the key.
                where = f" {key}" if self.commit_error_names_key else ""
                raise FailedPrecondition(f"failed to commit snapshot{where}: snapshot "
                                         f"{quote(key)} is not active")
            commit_active(t, key, name, disk_usage(self._usage_path(sid)), labels, parent)

    def remove(self, key: str) -> None:
        path = renamed = ""
        try:
            with self.ms.update() as t:
                sid, _ = remove(t, key)
                path = self._dir(sid)
                renamed = os.path.join(self.snapshots_dir, "rm-" + sid)
                try:
                    os.rename(path, renamed)
                except FileNotFoundError:
                    renamed = ""  # a view with a parent may have no directory
        except BaseException:
            if renamed:
                os.rename(renamed, path)
            raise
        if renamed and not self.async_remove:
            import shutil

            shutil.rmtree(renamed, ignore_errors=True)

    def walk(self, match: Callable[[Info], bool] | None = None) -> Iterator[Info]:
        with self.ms.view() as t:
            infos = walk_info(t, match)
        yield from infos

    def cleanup(self) -> None:
        with self.ms.update() as t:
            ids = id_map(t)
            stale = [os.path.join(self.snapshots_dir, d)
                     for d in os.listdir(self.snapshots_dir) if d not in ids]
        import shutil

        for d in stale:
            shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        self.ms.close()
