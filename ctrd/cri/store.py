"""The CRI plugin's records: pod sandboxes and their containers, in memory with the durable
parts on disk.

Each sandbox and container is also a ctrd container in namespace ``k8s.io`` (so ``ctr -n
k8s.io containers ls`` shows them, GC keeps their snapshots, and their immutable CRI metadata
survives a restart in the extension ``io.cri-containerd.{sandbox,container}.metadata``). What
changes over their life (state, pid, exit code, times, the pod's IP) is a small JSON status
file, replaced atomically, under the plugin's root: ``<root>/{sandboxes,containers}/<id>/status``.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field, fields

from ctrd import errdefs

SANDBOX_EXT = "io.cri-containerd.sandbox.metadata"
CONTAINER_EXT = "io.cri-containerd.container.metadata"
EXT_TYPE = "types.ctrd.io/cri/v1/metadata"  # JSON of the dataclass below
KIND_LABEL = "io.cri-containerd.kind"

# Sandbox states (runtime.v1 PodSandboxState) and container states (ContainerState).
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1
CREATED, RUNNING, EXITED, UNKNOWN = 0, 1, 2, 3


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            v = json.load(f)
        return v if isinstance(v, dict) else None
    except (FileNotFoundError, ValueError):
        return None


def _from_dict(cls, d: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SandboxMeta:
    """Immutable after RunPodSandbox."""

    id: str
    name: str                  # <pod>_<namespace>_<uid>_<attempt>, unique
    config: dict               # the PodSandboxConfig as the kubelet sent it (JSON form)
    runtime_handler: str = ""
    runtime_type: str = ""
    netns: str = ""            # pinned network namespace file ("" for host network)
    ipc: str = ""              # pinned IPC namespace file ("" for host IPC)
    uts: str = ""              # pinned UTS namespace file ("" for host network)
    userns: str = ""           # pinned user namespace file ("" without a pod userns)
    dir: str = ""              # the sandbox's state dir (hosts, resolv.conf, hostname, shm)
    created_at: int = 0        # ns
    # The pod's own process, a task with the sandbox's id: "" none (namespaces pinned by
    # ctrd), "image" a pause container of sandbox_image, "init" ctrd's minimal pod init
    # (a static busybox) holding a shared PID namespace.
    pause: str = ""
    image: str = ""            # the sandbox image as configured ("image" only)
    image_id: str = ""         # its id (config digest)
    snapshot_key: str = ""     # the pause container's snapshot ("image" only)


@dataclass
class SandboxStatus:
    state: int = SANDBOX_READY
    ip: str = ""
    additional_ips: list[str] = field(default_factory=list)
    cni_result: dict = field(default_factory=dict)
    network_ready: bool = False  # CNI ADD done and not yet torn down
    pid: int = 0               # the pause / pod init process (0: none, or it exited)
    # UpdatePodSandboxResources' last values as ContainerResources JSON (None: never called)
    overhead: dict | None = None
    resources: dict | None = None


@dataclass
class ContainerMeta:
    id: str
    name: str                  # <name>_<pod>_<namespace>_<uid>_<attempt>, unique
    sandbox_id: str
    config: dict               # the ContainerConfig as the kubelet sent it (JSON form)
    image_ref: str = ""        # the image id (config digest)
    image: str = ""            # what the request asked for (its ImageSpec.image)
    log_path: str = ""         # absolute, "" when no log
    snapshotter: str = ""
    runtime_handler: str = ""
    stop_signal: str = ""      # the config's, else the image's (ctrd.cri.stop_signal)
    created_at: int = 0
    # ContainerStatus.user.linux: uid, gid, supplemental_groups (ctrd.cri.identity)
    user: dict = field(default_factory=dict)


@dataclass
class ContainerStatus:
    state: int = CREATED
    pid: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    removing: bool = False
    memory_cgroup: str = ""    # the init's memory cgroup dir, read at start (OOM kills)


class Records:
    """Sandboxes and containers by id, with name reservation and the status files.

    Thread-safe (the gRPC handlers run blocking parts in threads)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.RLock()
        self.sandboxes: dict[str, tuple[SandboxMeta, SandboxStatus]] = {}
        self.containers: dict[str, tuple[ContainerMeta, ContainerStatus]] = {}
        self._names: dict[str, str] = {}  # reserved name -> id

    # --- names ----------------------------------------------------------------------------

    def reserve(self, name: str, id_: str, what: str = "sandbox") -> None:
        """``name`` taken for ``id_``; held by another id: FailedPrecondition (containerd's
        registrar error is a conflict, which its errdefs send as FAILED_PRECONDITION), the
        message as containerd's (``what``: "sandbox" or "container")."""
        with self._lock:
            owner = self._names.get(name)
            if owner is not None and owner != id_:
                q = errdefs.quote
                hint = ("; check if another CreateContainer request is in progress"
                        if what == "container" else "")
                raise errdefs.FailedPrecondition(
                    f"failed to reserve {what} name {q(name)}{hint}: name {q(name)} is "
                    f"reserved for {q(owner)}")
            self._names[name] = id_

    def release(self, name: str) -> None:
        with self._lock:
            self._names.pop(name, None)

    # --- status files ---------------------------------------------------------------------

    def _dir(self, kind: str, id_: str) -> str:
        return os.path.join(self.root, kind, id_)

    def save_status(self, kind: str, id_: str, status) -> None:
        d = self._dir(kind, id_)
        os.makedirs(d, mode=0o700, exist_ok=True)
        _write_json(os.path.join(d, "status"), asdict(status))

    def load_status(self, kind: str, id_: str, cls):
        d = _read_json(os.path.join(self._dir(kind, id_), "status"))
        return _from_dict(cls, d) if d is not None else None

    def drop_dir(self, kind: str, id_: str) -> None:
        import shutil

        shutil.rmtree(self._dir(kind, id_), ignore_errors=True)

    # --- sandboxes ------------------------------------------------------------------------

    def add_sandbox(self, meta: SandboxMeta, status: SandboxStatus) -> None:
        with self._lock:
            self.sandboxes[meta.id] = (meta, status)
            self._names[meta.name] = meta.id
        self.save_status("sandboxes", meta.id, status)

    def sandbox(self, id_: str) -> tuple[SandboxMeta, SandboxStatus]:
        """By full id or a unique prefix (the kubelet and crictl use truncated ids); errors
        as :func:`_lookup`'s."""
        with self._lock:
            return _lookup(self.sandboxes, id_, "sandbox")

    def update_sandbox(self, id_: str, **changes) -> SandboxStatus:
        with self._lock:
            meta, status = self.sandbox(id_)
            for k, v in changes.items():
                setattr(status, k, v)
            self.save_status("sandboxes", meta.id, status)
            return status

    def remove_sandbox(self, id_: str) -> None:
        with self._lock:
            hit = self.sandboxes.pop(id_, None)
            if hit:
                self._names.pop(hit[0].name, None)
        self.drop_dir("sandboxes", id_)

    # --- containers -----------------------------------------------------------------------

    def add_container(self, meta: ContainerMeta, status: ContainerStatus) -> None:
        with self._lock:
            self.containers[meta.id] = (meta, status)
            self._names[meta.name] = meta.id
        self.save_status("containers", meta.id, status)

    def container(self, id_: str) -> tuple[ContainerMeta, ContainerStatus]:
        """By full id or a unique prefix; errors as :func:`_lookup`'s."""
        with self._lock:
            return _lookup(self.containers, id_, "container")

    def update_container(self, id_: str, **changes) -> ContainerStatus:
        with self._lock:
            meta, status = self.container(id_)
            for k, v in changes.items():
                setattr(status, k, v)
            self.save_status("containers", meta.id, status)
            return status

    def remove_container(self, id_: str) -> None:
        with self._lock:
            hit = self.containers.pop(id_, None)
            if hit:
                self._names.pop(hit[0].name, None)
        self.drop_dir("containers", id_)

    def containers_of(self, sandbox_id: str) -> list[tuple[ContainerMeta, ContainerStatus]]:
        with self._lock:
            return [v for v in self.containers.values() if v[0].sandbox_id == sandbox_id]


def labels_match(selector, labels) -> bool:
    """A CRI filter's label_selector: every key present with the same value."""
    return all(labels.get(k) == v for k, v in selector.items())


# --- the kubelet's configs in the records -------------------------------------------------
#
# A record keeps the config the kubelet sent as its JSON form (protobuf's JSON mapping with
# the proto field names: readable in ``ctr containers info``, and stable across proto
# changes). The parsed message is made once per record and kept beside it in memory (not a
# dataclass field: it is neither compared nor stored), so List and Status calls never decode.

_MESSAGE = "_config_message"


def _message_class(meta):
    from ctrd.api.cri.runtime.v1 import api_pb2

    return api_pb2.PodSandboxConfig if isinstance(meta, SandboxMeta) else api_pb2.ContainerConfig


def with_config(meta, message):
    """``meta`` with ``message`` (the request's config) as its config: its JSON form stored,
    the message kept for reads. Returns ``meta``."""
    from google.protobuf import json_format

    meta.config = json_format.MessageToDict(message, preserving_proto_field_name=True)
    meta.__dict__[_MESSAGE] = message
    return meta


def config_of(meta):
    """The record's config as its runtime.v1 message (PodSandboxConfig or ContainerConfig),
    parsed on first use and kept. Callers must not change it."""
    msg = meta.__dict__.get(_MESSAGE)
    if msg is None:
        from google.protobuf import json_format

        msg = _message_class(meta)()
        try:
            json_format.ParseDict(meta.config, msg, ignore_unknown_fields=True)
        except json_format.ParseError as e:
            raise errdefs.CtrdError(f"CRI record {meta.id}: unreadable config: {e}") from None
        meta.__dict__[_MESSAGE] = msg
    return msg


def meta_to_ext(meta) -> tuple[str, bytes]:
    return EXT_TYPE, json.dumps(asdict(meta)).encode()


def meta_from_ext(cls, value: bytes):
    """The record stored by :func:`meta_to_ext`; None when unreadable. Records of earlier
    ctrd versions kept the config as base64 of the serialized message: read as well."""
    try:
        d = json.loads(value)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    try:
        meta = _from_dict(cls, d)
    except TypeError:  # a required field missing: a damaged record is skipped, not fatal
        return None
    if isinstance(meta.config, str):
        import base64

        msg = _message_class(meta)()
        try:
            msg.ParseFromString(base64.b64decode(meta.config))
        except Exception:  # noqa: BLE001 - a damaged legacy record is skipped, not fatal
            return None
        with_config(meta, msg)
    elif not isinstance(meta.config, dict):
        return None
    try:
        config_of(meta)  # parsed now (every List needs it): an unreadable one is skipped
    except errdefs.CtrdError:
        return None
    return meta


def _lookup(table: dict, id_: str, what: str):
    """``table[id_]``, or the one entry whose id starts with ``id_`` -- as containerd's
    truncindex answers: :class:`~ctrd.errdefs.NotFound` for no match, but
    :class:`~ctrd.errdefs.Unknown` (a plain error there, so the kubelet does not take it for
    "gone") for an empty id and for a prefix of several ids."""
    where = f"an error occurred when try to find {what} {errdefs.quote(id_)}"
    if not id_:
        raise errdefs.Unknown(f"{where}: prefix can't be empty")
    hit = table.get(id_)
    if hit is not None:
        return hit
    hits = [v for k, v in table.items() if k.startswith(id_)]
    if len(hits) > 1:
        raise errdefs.Unknown(f"{where}: Multiple IDs found with provided prefix: {id_}")
    if not hits:
        raise errdefs.NotFound(f"{where}: does not exist")
    return hits[0]
