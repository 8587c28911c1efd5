"""A pod's namespaces, pinned by bind mounts: network, and (pods without a pause container)
IPC and UTS.

Layout (one file per namespace, named like containerd's ``cni-<uuid>``)::

    <base>/netns/<name>    network namespace  (containerd: /var/run/netns/cni-<uuid>, or
                                               <cri state dir>/netns/cni-<uuid> with
                                               netns_mounts_under_state_dir)
    <base>/ipcns/<name>    IPC namespace      (CRI-O's layout for the others)
    <base>/utsns/<name>    UTS namespace

:func:`netns_base_dir` picks ``<base>`` from the CRI config; :func:`netns_path` names a
network namespace file there.

How a namespace is made: namespaces are per thread in Linux, and unshare(2) of the network,
IPC and UTS namespaces is allowed in a multi-threaded process. :func:`create_pod_namespaces`
starts a throwaway thread that unshares them, sets the hostname, brings ``lo`` up and
bind-mounts ``/proc/thread-self/ns/<kind>`` onto the pin files, then exits; the bind mounts
keep the namespaces alive. This is containerd's method (a locked OS thread that is never
reused) and it needs no fork of the interpreter and no exec (the kernel's namespace setup is most of
its cost), unlike util-linux
``unshare --net=FILE --ipc=FILE --uts=FILE sh -c 'hostname ...; ip link set lo up'``
(bench/README.md, "Figures the code cites").
(A Python thread is a fresh OS thread that ends with its target: nothing else runs on it in
the pod's namespaces, short of a garbage-collector finalizer that happens to open a socket.)

Pin directories: each ``<base>/<kind>ns`` is made a bind mount of itself with shared
propagation, as ``ip netns add`` does for /run/netns (and every ``ip netns add`` would
re-make it so anyway). Shared, not private: a mount namespace created later (a tool that
unshares its mounts while the pod lives) then holds a *peer* copy of the pin, and our unmount
propagates into it, so the namespace is freed; with a private pin directory that copy would
keep the pod's network namespace (and its veth) alive until that process exits.

Removal (:func:`remove`) detaches the mounts and deletes the files, is idempotent and works
on whatever a crash left: missing files, files that were never mounted.

To work inside a namespace (tests, stats): :func:`run_in_ns` runs a callable in a throwaway
thread joined (setns) to it; :func:`exec_in_ns` starts a command from such a thread, so the
command is born in the namespace without ``nsenter``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

from ctrd.errdefs import AlreadyExists, InvalidArgument, NotFound
from ctrd.snapshots import mount as _mount
from ctrd.snapshots.snapshotter import Mount

CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000

#: The namespace kinds this module pins, with their clone flags. "user" pins are made by
#: :mod:`ctrd.cri.userns` (a multi-threaded process cannot unshare a user namespace).
KINDS: dict[str, int] = {"net": CLONE_NEWNET, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS,
                         "user": CLONE_NEWUSER}

DEFAULT_NETNS_BASE = "/var/run"  # containerd: netnsMountDir = "/var/run/netns"
HOST_NAME_MAX = 64

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_NS_GET_NSTYPE = 0xB703

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

T = TypeVar("T")


@dataclass
class PodNamespaces:
    """The pinned namespaces of one pod: ``paths[kind]`` is the pin file of each kind made.

    Persist ``name`` and ``paths`` with the sandbox; :func:`remove` needs only this object
    (rebuild it with :func:`load_pod_namespaces` or the constructor after a restart).
    """

    name: str
    paths: dict[str, str] = field(default_factory=dict)
    hostname: str = ""

    @property
    def net(self) -> str | None:
        return self.paths.get("net")

    @property
    def ipc(self) -> str | None:
        return self.paths.get("ipc")

    @property
    def uts(self) -> str | None:
        return self.paths.get("uts")


# --- layouts ---------------------------------------------------------------------------

def netns_base_dir(state_dir: str, netns_mounts_under_state_dir: bool) -> str:
    """``<base>`` for :func:`create_pod_namespaces`, as containerd 1.6 places a pod's netns:
    ``/var/run`` (so /var/run/netns/cni-<uuid>), or the CRI plugin's state dir when
    ``netns_mounts_under_state_dir`` (<state>/netns/cni-<uuid>)."""
    return state_dir if netns_mounts_under_state_dir else DEFAULT_NETNS_BASE


def new_name() -> str:
    """A fresh pin name in containerd's format ``cni-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``."""
    return f"cni-{uuid.UUID(bytes=os.urandom(16))}"


def ns_path(base: str, kind: str, name: str) -> str:
    """The pin file of namespace ``kind`` (net, ipc, uts) named ``name`` under ``base``."""
    if kind not in KINDS:
        raise InvalidArgument(f"unknown namespace kind {kind!r} (want one of {sorted(KINDS)})")
    return os.path.join(base, f"{kind}ns", name)


def netns_path(base: str, name: str) -> str:
    """The network namespace pin file ``<base>/netns/<name>``."""
    return ns_path(base, "net", name)


def load_pod_namespaces(base: str, name: str,
                        kinds: Iterable[str] = ("net", "ipc", "uts")) -> PodNamespaces:
    """The :class:`PodNamespaces` a :func:`create_pod_namespaces` of ``name`` under ``base``
    returned (for removal after a restart); whether the files still exist does not matter."""
    return PodNamespaces(name, {k: ns_path(base, k, name) for k in kinds})


# --- create / remove -------------------------------------------------------------------

def create_pod_namespaces(base: str, hostname: str = "",
                          kinds: Sequence[str] = ("net", "ipc", "uts"),
                          name: str | None = None) -> PodNamespaces:
    """Create new namespaces of ``kinds`` and pin each at ``<base>/<kind>ns/<name>``.

    The UTS namespace gets ``hostname`` (empty: the host's, copied at creation); the network
    namespace gets ``lo`` up (CNI's loopback plugin would do it too; nothing here relies on
    that). ``name`` defaults to a fresh ``cni-<uuid>``. Callable from any thread: the
    namespace work happens in a throwaway thread.

    On error nothing is left behind (no mount, no file) and the error propagates:
    :class:`~ctrd.errdefs.InvalidArgument` for bad arguments,
    :class:`~ctrd.errdefs.AlreadyExists` if a pin of that name exists (it is left alone),
    ``OSError`` for the kernel's refusals.
    """
    kinds = tuple(dict.fromkeys(kinds))
    if not kinds:
        raise InvalidArgument("no namespace kinds to create")
    for k in kinds:
        if k not in KINDS:
            raise InvalidArgument(f"unknown namespace kind {k!r} (want one of {sorted(KINDS)})")
    if hostname:
        if len(hostname.encode()) > HOST_NAME_MAX or "\0" in hostname:
            raise InvalidArgument(f"invalid hostname {hostname!r}: at most {HOST_NAME_MAX} "
                                  "bytes, no NUL")
    name = name or new_name()
    if "/" in name or name in (".", ".."):
        raise InvalidArgument(f"invalid namespace name {name!r}")
    pns = PodNamespaces(name, {}, hostname)
    try:
        for k in kinds:
            path = ns_path(base, k, name)
            prepare_ns_dir(os.path.dirname(path))
            # O_EXCL: never pin over someone else's namespace
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            except FileExistsError:
                raise AlreadyExists(f"namespace {path}") from None
            os.close(fd)
            pns.paths[k] = path
        _in_thread(_unshare_and_pin, kinds, dict(pns.paths), hostname if "uts" in kinds else "")
    except BaseException:
        remove(pns)
        raise
    return pns


def remove(pns: PodNamespaces) -> None:
    """Unmount (detach) and delete every pin of ``pns``. Idempotent; a missing file, a file
    that was never mounted, a namespace already unmounted are all fine. The namespaces
    themselves go when their last user (a container process) goes."""
    errors = []
    for path in pns.paths.values():
        try:
            remove_path(path)
        except OSError as e:
            errors.append(e)
    if errors:
        raise errors[0]


def remove_path(path: str) -> None:
    """Unmount and delete one pin file (idempotent)."""
    # A namespace pinned twice (a bind over a bind) needs one detach per layer.
    for _ in range(8):
        if _libc_umount(path) is False:
            break
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise InvalidArgument(f"{path} is a directory, not a namespace pin") from None


def _libc_umount(path: str) -> bool:
    """Detach the top mount at ``path``: True if there was one."""
    if _mount._libc.umount2(os.fsencode(path), _mount.MNT_DETACH) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOENT):
        return False
    raise OSError(e, f"unmount {path}: {os.strerror(e)}")


PIN_DIR_LOCK = threading.Lock()  # held while a pin dir is made or released


def prepare_ns_dir(d: str) -> None:
    """Make ``d`` exist and be a mount point of itself with shared propagation (what
    ``ip netns add`` does for /run/netns; see the module doc). Idempotent and cheap (one
    mount(2) when already done)."""
    os.makedirs(d, mode=0o755, exist_ok=True)
    d = os.path.realpath(d)
    shared = _mount.MS_SHARED | _mount.MS_REC
    # One at a time: two pods made at once must not both find "not a mount point yet" and
    # stack two self-binds (a release would then leave one behind).
    with PIN_DIR_LOCK:
        try:
            _mount._sys_mount("", d, "", shared, "")
            return
        except _mount.MountError as e:
            if e.errno != errno.EINVAL:  # EINVAL: not a mount point yet
                raise
        _mount.mount(Mount("none", d, ["rbind"]), d)
        _mount._sys_mount("", d, "", shared, "")


def is_pinned(path: str, kind: str | None = None) -> bool:
    """Whether ``path`` is a namespace file (of ``kind`` when given): a live pin.
    False for a missing path or a plain file left by a crash."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            return False
        return kind is None or nstype == KINDS.get(kind, -1)
    finally:
        os.close(fd)


# --- running inside -------------------------------------------------------------------

def run_in_ns(paths: str | PodNamespaces | dict[str, str], fn: Callable[..., T], *args: Any,
              kinds: Sequence[str] | None = None, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a throwaway thread that has joined the namespaces and
    return its result (or raise its exception).

    ``paths``: a network namespace path, a :class:`PodNamespaces` (all its kinds, or
    ``kinds``), or a ``{kind: path}`` map. Sockets opened by ``fn`` belong to the namespace;
    processes ``fn`` starts are born in it.
    """
    if isinstance(paths, str):
        target = {"net": paths}
    elif isinstance(paths, PodNamespaces):
        target = dict(paths.paths)
    else:
        target = dict(paths)
    if kinds is not None:
        target = {k: target[k] for k in kinds if k in target}
    for k in target:
        if k not in KINDS:
            raise InvalidArgument(f"unknown namespace kind {k!r}")
    fds = {}
    try:
        for k, p in target.items():
            try:
                fds[k] = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(f"namespace {p}") from None
            if not is_pinned(p, k):
                raise NotFound(f"{p} is not a {k} namespace")
        return _in_thread(_setns_and_call, fds, fn, args, kwargs)
    finally:
        for fd in fds.values():
            os.close(fd)


def exec_in_ns(paths: str | PodNamespaces | dict[str, str], argv: Sequence[str],
               kinds: Sequence[str] | None = None,
               **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, **kwargs)`` with the process born in the namespaces (see
    :func:`run_in_ns`)."""
    return run_in_ns(paths, subprocess.run, list(argv), kinds=kinds, **kwargs)


# --- thread bodies ---------------------------------------------------------------------

def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    box: list = []

    def body() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as e:  # handed to the caller
            box.append((False, e))

    t = threading.Thread(target=body, name="ctrd-ns", daemon=True)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _unshare_and_pin(kinds: Sequence[str], paths: dict[str, str], hostname: str) -> None:
    # This thread's namespaces are the pod's from here on; the thread ends with this function.
    flags = 0
    for k in kinds:
        flags |= KINDS[k]
    if _libc.unshare(flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare {'/'.join(kinds)} namespaces: {os.strerror(e)}")
    if hostname:
        socket.sethostname(hostname)
    if "net" in kinds:
        _loopback_up()
    for k in kinds:
        _mount.mount(Mount("none", f"/proc/thread-self/ns/{k}", ["bind"]), paths[k])


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _setns_and_call(fds: dict[str, int], fn: Callable[..., T], args: tuple,
                    kwargs: dict) -> T:
    for k, fd in fds.items():
        if _libc.setns(fd, KINDS[k]) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {k}: {os.strerror(e)}")
    return fn(*args, **kwargs)
