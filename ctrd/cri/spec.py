"""The OCI spec of a CRI container, as containerd 1.6's CRI plugin builds it in CreateContainer
(``pkg/cri/server/container_create_linux.go`` with ``pkg/cri/opts``), and the process spec of
an exec in it.

Pure logic over plain values: the CRI request (``runtime.v1`` messages), the image config, what
the sandbox is (:class:`SandboxFacts`), the CRI config and what the host supports
(:class:`HostFacts`, probed once). The only I/O: reading the container's rootfs for users and
groups (:mod:`ctrd.oci.user`, hostile-safe), ``stat`` of device and mount sources, reading
``/proc/self/mountinfo`` for propagation checks, reading a Localhost seccomp profile, and --
as containerd does -- creating a missing bind-mount source directory.

Lifecycle: the caller (the CRI container service) builds the spec once at CreateContainer,
stores it with the container, and uses :func:`exec_process` for each Exec/ExecSync.

Deliberate differences from containerd 1.6, each safer or clearer and none visible to a
kubelet:

- requests containerd would pass to runc to fail there (unknown capability names, bad device
  permissions, relative paths, out-of-range ids, unified cgroup v2 keys on cgroup v1) fail here
  with :class:`~ctrd.errdefs.InvalidArgument` naming the field;
- CRI fields newer than containerd 1.6 that ctrd does not implement (idmap and image
  mounts, CDI devices, ambient capabilities) are refused rather than silently ignored;
- supplementary groups from the image's ``/etc/group`` are those of the user the container
  runs as (containerd 1.6 looked up the groups of ``run_as_user``, or of uid 0 when only the
  image names a user; 2.3.4 does as ctrd), and only under the Merge
  ``supplemental_groups_policy`` (:mod:`ctrd.cri.identity`);
- capability names are accepted with or without ``CAP_`` (containerd always prefixes);
- AppArmor: ``RuntimeDefault`` uses containerd's ``cri-containerd.apparmor.d`` profile when it
  is loaded (ctrd does not generate and load it); on a host without AppArmor every AppArmor
  request is ignored.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ctrd.cri import identity, runtime_features, seccomp
from ctrd.cri.config import CRIConfig, RuntimeHandler
from ctrd.errdefs import FailedPrecondition, InvalidArgument, NotFound
from ctrd.oci import oom
from ctrd.oci.spec import (DEFAULT_UNIX_ENV, MASKED_PATHS, READONLY_PATHS, ImageConfig,
                           default_spec, replace_or_append_env)
from ctrd.oci.user import MAX_ID, Rootfs, resolve_user

CRI_NAMESPACE = "k8s.io"      # the containerd namespace CRI objects live in
ROOTFS_PATH = "rootfs"        # containerd's relativeRootfsPath
MAX_PROFILE_SIZE = 1 << 20    # a Localhost seccomp profile; real ones are a few KiB

# pkg/cri/annotations
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_TYPE_CONTAINER = "container"
CONTAINER_TYPE_SANDBOX = "sandbox"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
IMAGE_NAME = "io.kubernetes.cri.image-name"

# CRI enums (runtime.v1), by value, so this module needs no generated code
PROPAGATION_PRIVATE, PROPAGATION_HOST_TO_CONTAINER, PROPAGATION_BIDIRECTIONAL = 0, 1, 2
NS_POD, NS_CONTAINER, NS_NODE, NS_TARGET = 0, 1, 2, 3
PROFILE_RUNTIME_DEFAULT, PROFILE_UNCONFINED, PROFILE_LOCALHOST = 0, 1, 2

# seccomp/apparmor profile strings of the deprecated *_profile_path fields
PROFILE_NAME_PREFIX = "localhost/"
RUNTIME_DEFAULT = "runtime/default"
DOCKER_DEFAULT = "docker/default"
UNCONFINED = "unconfined"
APPARMOR_DEFAULT_PROFILE = "cri-containerd.apparmor.d"

ETC_HOSTNAME, ETC_HOSTS, RESOLV_CONF, DEV_SHM = \
    "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"

# capability numbers -> names, as containerd's pkg/cap (kernel 5.9)
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


# -- the host -------------------------------------------------------------------------------

def caps_from_bitmap(bits: int) -> list[str]:
    """Capability names of a ``CapEff``-style bitmap (unknown bits dropped, as containerd)."""
    return [name for i, name in enumerate(CAPABILITIES) if bits >> i & 1]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cgroup2_mounted(root: str = "/sys/fs/cgroup") -> bool:
    # statfs magic is not available from Python's stdlib; the unified hierarchy is the only
    # one with cgroup.controllers at its root
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def _swap_controller(cgroup2: bool, root: str = "/sys/fs/cgroup",
                     proc_cgroup: str = "/proc/self/cgroup") -> bool:
    if not cgroup2:
        return os.path.exists(os.path.join(root, "memory", "memory.memsw.limit_in_bytes"))
    own = ""
    for line in (_read(proc_cgroup) or "").splitlines():
        if line.startswith("0::"):
            own = line[3:].strip()
    return os.path.exists(os.path.join(root, own.lstrip("/"), "memory.swap.max"))


@dataclass(frozen=True)
class HostFacts:
    """What this host supports, as containerd's CRI plugin probes it at start."""

    cgroup2: bool = False
    hugetlb: bool = False              # the hugetlb controller is available
    swap: bool = False                 # the memory controller accounts swap
    apparmor: bool = False             # AppArmor is enabled in the kernel
    apparmor_profiles: frozenset[str] = frozenset()  # loaded AppArmor profile names
    seccomp: bool = True               # the kernel has seccomp
    capabilities: tuple[str, ...] = ()  # ctrd's effective capabilities ("all" for privileged)
    oom_score_adj: int = 0             # ctrd's own OOM score adjustment
    can_lower_oom: bool = False        # ctrd has CAP_SYS_RESOURCE
    hostname: str = ""

    @classmethod
    def probe(cls, cgroup_root: str = "/sys/fs/cgroup",
              proc_cgroup: str = "/proc/self/cgroup") -> HostFacts:
        """This host's facts; the cgroup ones read under ``cgroup_root``, ctrd's own cgroup
        from ``proc_cgroup`` (tests point both at a fake tree)."""
        cg2 = _cgroup2_mounted(cgroup_root)
        if cg2:
            hugetlb = "hugetlb" in (_read(os.path.join(cgroup_root, "cgroup.controllers"))
                                    or "").split()
        else:
            hugetlb = os.path.isdir(os.path.join(cgroup_root, "hugetlb"))
        # containerd's apparmor.hostSupports: securityfs entry plus the module parameter
        aa = (os.path.exists("/sys/kernel/security/apparmor")
              and (_read("/sys/module/apparmor/parameters/enabled") or "").startswith("Y"))
        profiles = frozenset()
        if aa:
            profiles = frozenset(line.split(" (")[0] for line in
                                 (_read("/sys/kernel/security/apparmor/profiles") or "")
                                 .splitlines() if " (" in line)
        status = _read("/proc/self/status") or ""
        return cls(
            cgroup2=cg2, hugetlb=hugetlb, swap=_swap_controller(cg2, cgroup_root, proc_cgroup),
            apparmor=aa,
            apparmor_profiles=profiles,
            seccomp=any(line.startswith("Seccomp:") for line in status.splitlines()),
            capabilities=tuple(caps_from_bitmap(oom.effective_caps())),
            oom_score_adj=oom.current_score(), can_lower_oom=oom.can_lower(),
            hostname=os.uname().nodename)


_host: HostFacts | None = None


def host_facts() -> HostFacts:
    """:meth:`HostFacts.probe`, once per process."""
    global _host
    if _host is None:
        _host = HostFacts.probe()
    return _host


# -- the sandbox ----------------------------------------------------------------------------

@dataclass
class SandboxFacts:
    """What a pod's containers join and bind in; made by the sandbox service.

    Namespace paths are files (a pinned ``/run/netns/...`` bind mount or ``/proc/<pid>/ns/..``
    of a pause container); None means the host's namespace (host network / IPC / UTS), i.e.
    the namespace is left out of the spec. File paths of None are not mounted.
    """

    id: str
    netns_path: str | None = None
    ipcns_path: str | None = None
    utsns_path: str | None = None
    # the pod's PID namespace for containers in POD pid mode; None: such a container gets a
    # new one (e.g. the first container of a pod without a pause container)
    pidns_path: str | None = None
    shm_path: str | None = None        # the pod's /dev/shm directory (a tmpfs)
    hostname: str = ""                 # HOSTNAME env; "" -> the sandbox config's, or the host's
    hostname_path: str | None = None   # bound at /etc/hostname if the file exists
    hosts_path: str | None = None      # bound at /etc/hosts
    resolv_conf_path: str | None = None  # bound at /etc/resolv.conf
    cgroup_parent: str | None = None   # None: the sandbox config's linux.cgroup_parent
    # the pod's pinned user namespace and its maps (a ctrd.cri.userns.PodUserns); None: the
    # host's user namespace
    userns_path: str | None = None
    userns: Any = None


# -- annotations ----------------------------------------------------------------------------

def container_annotations(sandbox_id: str, sandbox_config: Any, container_name: str,
                          image_name: str) -> dict[str, str]:
    """containerd's ``io.kubernetes.cri.*`` annotations of a pod's container."""
    md = sandbox_config.metadata
    return {CONTAINER_TYPE: CONTAINER_TYPE_CONTAINER, SANDBOX_ID: sandbox_id,
            SANDBOX_NAMESPACE: md.namespace, SANDBOX_UID: md.uid, SANDBOX_NAME: md.name,
            CONTAINER_NAME: container_name, IMAGE_NAME: image_name}


def sandbox_annotations(sandbox_id: str, sandbox_config: Any) -> dict[str, str]:
    """containerd's ``io.kubernetes.cri.*`` annotations of a pod sandbox (pause) spec."""
    md = sandbox_config.metadata
    return {CONTAINER_TYPE: CONTAINER_TYPE_SANDBOX, SANDBOX_ID: sandbox_id,
            SANDBOX_NAMESPACE: md.namespace, SANDBOX_UID: md.uid, SANDBOX_NAME: md.name,
            SANDBOX_LOG_DIR: sandbox_config.log_directory}


def _go_glob(pattern: str) -> re.Pattern[str] | None:
    """Go's ``path.Match`` pattern as a regex (``*`` and ``?`` never match ``/``); None if
    the pattern is malformed (containerd skips those)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i == n:
                return None
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "!") else i + 1)
            if j < 0:
                return None
            body = pattern[i + 1:j]
            neg = body[:1] in ("^", "!")
            body = body[1:] if neg else body
            if not body:
                return None
            cls = "".join("\\" + ch if ch in "\\]^[" else ch for ch in body)
            out.append(f"[{'^/' if neg else ''}{cls}]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z", re.S)
    except re.error:
        return None


def passthrough_annotations(annotations: Mapping[str, str],
                            patterns: Iterable[str]) -> dict[str, str]:
    """The ``annotations`` whose key matches one of a runtime handler's ``pod_annotations`` /
    ``container_annotations`` globs (containerd's getPassthroughAnnotations)."""
    compiled = [r for r in (_go_glob(p) for p in patterns) if r is not None]
    return {k: v for k, v in annotations.items() if any(r.match(k) for r in compiled)}


def pod_sysctls(sandbox_config: Any) -> dict[str, str]:
    """The pod's ``linux.sysctls``. containerd puts them only in the pause container's spec;
    pass them to :func:`container_spec` only for the container that sets up the pod's
    namespaces (or apply them to the pinned namespaces)."""
    return dict(sandbox_config.linux.sysctls)


# -- pieces ---------------------------------------------------------------------------------

def _image_config(image: ImageConfig | Mapping[str, Any] | None) -> ImageConfig:
    if image is None:
        return ImageConfig()
    if isinstance(image, ImageConfig):
        return image
    if not isinstance(image, Mapping):
        raise InvalidArgument("image config must be a JSON object")
    doc = dict(image)
    # the whole config document, or only its "config" object
    if not {"config", "rootfs", "architecture", "os", "history"} & doc.keys():
        doc = {"config": doc}
    return ImageConfig.parse(json.dumps(doc).encode())


def process_args(command: Sequence[str], args: Sequence[str], image: ImageConfig) -> list[str]:
    """containerd's WithProcessArgs (docker's rule): a request command replaces the image's
    Entrypoint *and* Cmd; request args alone replace only Cmd; an image ENTRYPOINT [""] is no
    entrypoint."""
    command, args = list(command), list(args)
    if not command:
        if not args:
            args = list(image.cmd)
        if image.entrypoint != [""]:
            command = list(image.entrypoint)
    if not command and not args:
        raise InvalidArgument("no command specified: the request and the image have no "
                              "command, args, Entrypoint or Cmd")
    return command + args


def _check_id(what: str, value: int) -> int:
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range [0, {MAX_ID}]")
    return value


def user_string(sc: Any) -> str:
    """containerd's generateUserString: ``username``, ``uid``, ``username:gid``, ``uid:gid``
    from run_as_username / run_as_user / run_as_group; a group without a user is an error."""
    user = group = ""
    if sc.HasField("run_as_user"):
        user = str(_check_id("run_as_user", sc.run_as_user.value))
    if sc.run_as_username:
        if ":" in sc.run_as_username or "\0" in sc.run_as_username:
            raise InvalidArgument(f"run_as_username {sc.run_as_username!r} is not a user name")
        user = sc.run_as_username
    if sc.HasField("run_as_group"):
        group = str(_check_id("run_as_group", sc.run_as_group.value))
    if not user:
        if group:
            raise InvalidArgument(f"user group {group!r} is specified without user")
        return ""
    return f"{user}:{group}" if group else user


def normalize_capability(name: str) -> str:
    """``sys_admin``, ``SYS_ADMIN`` or ``CAP_SYS_ADMIN`` -> ``CAP_SYS_ADMIN``; unknown names
    are InvalidArgument."""
    up = name.upper()
    cap = up if up.startswith("CAP_") else "CAP_" + up
    if cap not in CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return cap


def _set_caps(proc: dict[str, Any], caps: Sequence[str]) -> None:
    c = proc.setdefault("capabilities", {})
    for k in ("bounding", "effective", "permitted"):
        c[k] = list(caps)


def apply_capabilities(proc: dict[str, Any], cap_msg: Any, all_caps: Sequence[str]) -> None:
    """containerd's WithCapabilities: ``ALL`` in add sets every capability ctrd has, ``ALL``
    in drop clears the sets, then the named ones are added and dropped (so add ALL + drop
    CHOWN is everything but CAP_CHOWN)."""
    add, drop = list(cap_msg.add_capabilities), list(cap_msg.drop_capabilities)
    if cap_msg.add_ambient_capabilities:
        raise InvalidArgument("ambient capabilities are not supported")
    if any(c.upper() == "ALL" for c in add):
        _set_caps(proc, all_caps)
    if any(c.upper() == "ALL" for c in drop):
        _set_caps(proc, [])
    c = proc.setdefault("capabilities", {})
    for k in ("bounding", "effective", "permitted"):
        c.setdefault(k, [])
    for name in add:
        if name.upper() == "ALL":
            continue
        cap = normalize_capability(name)
        for k in ("bounding", "effective", "permitted"):
            if cap not in c[k]:
                c[k].append(cap)
    for name in drop:
        if name.upper() == "ALL":
            continue
        cap = normalize_capability(name)
        for k in ("bounding", "effective", "permitted"):
            c[k] = [x for x in c[k] if x != cap]


# -- mounts ---------------------------------------------------------------------------------

@dataclass
class MountRequest:
    """A bind mount to make: a CRI ``Mount`` or one of the pod's files."""

    container_path: str
    host_path: str
    readonly: bool = False
    propagation: int = PROPAGATION_PRIVATE
    recursive_read_only: bool = False  # submounts read-only too (runc's ``rro``)

    @classmethod
    def from_cri(cls, m: Any) -> MountRequest:
        if m.uidMappings or m.gidMappings:
            raise InvalidArgument(f"mount {m.container_path!r}: idmap mounts are not supported")
        if m.HasField("image") and m.image.image and not m.host_path:
            # ctrd.cri.image_mount mounts the image and sets host_path before the spec
            raise InvalidArgument(f"mount {m.container_path!r}: image volume not mounted")
        return cls(m.container_path, m.host_path, m.readonly, m.propagation,
                   m.recursive_read_only)


def _unescape_mountinfo(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)


def lookup_mount(path: str, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, list[str]]:
    """The mount point ``path`` is on and that mount's optional fields (``shared:N``,
    ``master:N``...): the longest mount point that is ``path`` or a parent of it, the latest
    mounted if several (the one visible)."""
    path = posixpath.normpath(path)
    best: tuple[str, list[str]] | None = None
    text = _read(mountinfo)
    if text is None:
        raise FailedPrecondition(f"cannot read {mountinfo} to check the propagation of {path}")
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        mp = _unescape_mountinfo(fields[4])
        if not (path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")):
            continue
        if best is None or len(mp) >= len(best[0]):
            best = (mp, fields[6:sep])
    if best is None:
        raise NotFound(f"no mount found for {path}")
    return best


def _ensure_propagation(src: str, shared_only: bool, mountinfo: str) -> None:
    mp, optional = lookup_mount(src, mountinfo)
    if any(o.startswith("shared:") for o in optional):
        return
    if not shared_only and any(o.startswith("master:") for o in optional):
        return
    kind = "a shared mount" if shared_only else "a shared or slave mount"
    raise FailedPrecondition(f"path {src!r} is mounted on {mp!r} but it is not {kind}")


def _bind_mount(m: MountRequest, linux: dict[str, Any], mountinfo: str) -> dict[str, Any]:
    """One CRI bind mount as a spec mount (containerd's WithMounts, per mount)."""
    dst, src = m.container_path, m.host_path
    if not dst.startswith("/"):
        raise InvalidArgument(f"mount container_path {dst!r} must be an absolute path")
    if not src.startswith("/"):
        raise InvalidArgument(f"mount host_path {src!r} (for {dst}) must be an absolute path")
    if "\0" in src or "\0" in dst:
        raise InvalidArgument(f"mount {dst!r}: paths may not contain NUL")
    # containerd creates a missing source as a directory
    try:
        os.stat(src)
    except FileNotFoundError:
        try:
            os.makedirs(src, 0o755, exist_ok=True)
        except OSError as e:
            raise InvalidArgument(f"failed to mkdir {src!r}: {e.strerror}") from None
    except OSError as e:
        raise InvalidArgument(f"failed to stat {src!r}: {e.strerror}") from None
    try:
        src = os.path.realpath(src, strict=True)
    except OSError as e:
        raise InvalidArgument(f"failed to resolve symlink {m.host_path!r}: "
                              f"{e.strerror or e}") from None
    options = ["rbind"]
    if m.propagation == PROPAGATION_PRIVATE:
        options.append("rprivate")  # runc's default root propagation is rprivate already
    elif m.propagation == PROPAGATION_BIDIRECTIONAL:
        _ensure_propagation(src, True, mountinfo)
        options.append("rshared")
        linux["rootfsPropagation"] = "rshared"
    elif m.propagation == PROPAGATION_HOST_TO_CONTAINER:
        _ensure_propagation(src, False, mountinfo)
        options.append("rslave")
        if linux.get("rootfsPropagation") not in ("rshared", "rslave"):
            linux["rootfsPropagation"] = "rslave"
    else:
        raise InvalidArgument(f"mount {dst!r}: unknown propagation {m.propagation}")
    # containerd does not make mounts ro when the rootfs is: only the mount's own flag counts
    options.append(("rro" if m.recursive_read_only else "ro") if m.readonly else "rw")
    return {"destination": dst, "type": "bind", "source": src, "options": options}


def pod_mounts(config: Any, sandbox: SandboxFacts) -> list[MountRequest]:
    """containerd's containerMounts: the pod's /etc/hostname (if the file exists), /etc/hosts,
    /etc/resolv.conf and /dev/shm, unless the request mounts something there. The etc files
    are read-only with a read-only rootfs; a container in the host's IPC namespace gets the
    host's /dev/shm."""
    sc = config.linux.security_context
    requested = {posixpath.normpath(m.container_path) for m in config.mounts}
    ro = sc.readonly_rootfs
    out = []
    if ETC_HOSTNAME not in requested and sandbox.hostname_path and \
            os.path.exists(sandbox.hostname_path):
        out.append(MountRequest(ETC_HOSTNAME, sandbox.hostname_path, ro))
    if ETC_HOSTS not in requested and sandbox.hosts_path:
        out.append(MountRequest(ETC_HOSTS, sandbox.hosts_path, ro))
    if RESOLV_CONF not in requested and sandbox.resolv_conf_path:
        out.append(MountRequest(RESOLV_CONF, sandbox.resolv_conf_path, ro))
    if DEV_SHM not in requested:
        if sc.namespace_options.ipc == NS_NODE:
            out.append(MountRequest(DEV_SHM, DEV_SHM))
        elif sandbox.shm_path:
            out.append(MountRequest(DEV_SHM, sandbox.shm_path))
    return out


def check_recursive_read_only(m: MountRequest, supported: bool) -> None:
    """containerd's rules for ``Mount.recursive_read_only`` (checked before any source
    directory is made): it needs ``readonly``, private propagation, and a runtime handler
    that supports it (:mod:`ctrd.cri.runtime_features`)."""
    if not m.recursive_read_only:
        return
    where = f"mount {m.container_path!r} (host_path {m.host_path!r})"
    if not m.readonly:
        raise InvalidArgument(f"{where}: recursive_read_only needs readonly (a recursive "
                              "read-only mount conflicts with a read-write mount)")
    if m.propagation != PROPAGATION_PRIVATE:
        name = {PROPAGATION_HOST_TO_CONTAINER: "PROPAGATION_HOST_TO_CONTAINER",
                PROPAGATION_BIDIRECTIONAL: "PROPAGATION_BIDIRECTIONAL"}.get(
                    m.propagation, str(m.propagation))
        raise InvalidArgument(f"{where}: recursive_read_only needs propagation "
                              f"PROPAGATION_PRIVATE, got {name}")
    if not supported:
        # containerd's message starts with cri-api's ErrRROUnsupported
        raise FailedPrecondition(f"RROUnsupported: runtime handler does not support "
                                 f"recursive read-only mounts ({where})")


def apply_mounts(spec: dict[str, Any], cri_mounts: Sequence[MountRequest],
                 extra: Sequence[MountRequest], mountinfo: str = "/proc/self/mountinfo",
                 rro_supported: bool = False) -> None:
    """containerd's WithMounts: CRI mounts win over the pod's at the same destination; all are
    sorted by depth (stable) so a parent never hides a child; default mounts at a requested
    destination (and everything under /dev if /dev is requested) go; cgroupfs is mounted
    read-only at /sys/fs/cgroup. ``rro_supported``: whether the runtime handler can make
    recursive read-only mounts (:func:`check_recursive_read_only`)."""
    for m in cri_mounts:
        check_recursive_read_only(m, rro_supported)
    cri_dsts = {posixpath.normpath(m.container_path) for m in cri_mounts}
    mounts = list(cri_mounts) + [e for e in extra
                                 if posixpath.normpath(e.container_path) not in cri_dsts]
    mounts.sort(key=lambda m: posixpath.normpath(m.container_path).count("/"))
    current = spec.setdefault("mounts", [])
    if not any(posixpath.normpath(m.get("destination", "")) == "/sys/fs/cgroup"
               for m in current):
        current.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
    wanted = {posixpath.normpath(m.container_path) for m in mounts}
    kept = []
    for m in current:
        dst = posixpath.normpath(m.get("destination", ""))
        if dst in wanted or ("/dev" in wanted and dst.startswith("/dev/")):
            continue
        kept.append(m)
    linux = spec.setdefault("linux", {})
    spec["mounts"] = kept + [_bind_mount(m, linux, mountinfo) for m in mounts]


# -- devices --------------------------------------------------------------------------------

def device_from_path(path: str) -> dict[str, Any] | None:
    """``linux.devices`` entry of a device node (not following a final symlink); None if
    ``path`` is not a block or character device."""
    st = os.lstat(path)
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode):
        kind = "c"
    else:
        return None
    return {"path": path, "type": kind, "major": os.major(st.st_rdev),
            "minor": os.minor(st.st_rdev), "fileMode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid}


_SKIP_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}


def get_devices(path: str, container_path: str = "") -> list[dict[str, Any]]:
    """containerd's getDevices: the device at ``path``, or every device under a directory
    (skipping pts, shm, fd, mqueue and console), placed at ``container_path``."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidArgument(f"error stating device path {path!r}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        dev = device_from_path(path)
        if dev is None:
            raise InvalidArgument(f"{path!r} is not a device node")
        if container_path:
            dev["path"] = container_path
        return [dev]
    out: list[dict[str, Any]] = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            if entry.name in _SKIP_DIRS:
                continue
            cp = posixpath.join(container_path, entry.name) if container_path else ""
            out.extend(get_devices(entry.path, cp))
            continue
        if entry.name == "console":
            continue
        try:
            dev = device_from_path(entry.path)
        except FileNotFoundError:
            continue
        if dev is None:
            continue
        if container_path:
            dev["path"] = posixpath.join(container_path, entry.name)
        out.append(dev)
    return out


def _check_permissions(perms: str, device: str) -> str:
    if not perms or any(c not in "rwm" for c in perms) or len(set(perms)) != len(perms):
        raise InvalidArgument(f"device {device!r}: permissions {perms!r} must be one or more "
                              "of r, w, m")
    return perms


def apply_devices(spec: dict[str, Any], devices: Sequence[Any], sc: Any,
                  ownership_from_security_context: bool) -> None:
    """containerd's CRI WithDevices: each requested host device (symlinks resolved; a
    directory adds every device in it) in ``linux.devices`` at its container path and
    allowed in the device cgroup with the request's permissions; with
    ``device_ownership_from_security_context`` the nodes are owned by run_as_user/group."""
    linux = spec.setdefault("linux", {})
    resources = linux.setdefault("resources", {})
    added: list[dict[str, Any]] = []
    for d in devices:
        if not d.host_path.startswith("/"):
            raise InvalidArgument(f"device host_path {d.host_path!r} must be an absolute path")
        if d.container_path and not d.container_path.startswith("/"):
            raise InvalidArgument(f"device container_path {d.container_path!r} must be an "
                                  "absolute path")
        perms = _check_permissions(d.permissions, d.host_path)
        try:
            path = os.path.realpath(d.host_path, strict=True)
        except OSError as e:
            raise InvalidArgument(f"device {d.host_path!r}: {e.strerror or e}") from None
        for dev in get_devices(path, d.container_path):
            linux.setdefault("devices", []).append(dev)
            added.append(dev)
            resources.setdefault("devices", []).append(
                {"allow": True, "type": dev["type"], "major": dev["major"],
                 "minor": dev["minor"], "access": perms})
    if ownership_from_security_context:
        uid = sc.run_as_user.value if sc.HasField("run_as_user") else 0
        gid = sc.run_as_group.value if sc.HasField("run_as_group") else 0
        for dev in added:
            if uid:
                dev["uid"] = uid
            if gid:
                dev["gid"] = gid


def apply_privileged(spec: dict[str, Any], all_caps: Sequence[str], host_devices: bool) -> None:
    """containerd's WithPrivileged (+ WithHostDevices, WithAllDevicesAllowed): every
    capability ctrd has, no masked or read-only paths, sysfs and cgroupfs writable, no
    AppArmor/SELinux/seccomp, and unless the handler says otherwise all host devices."""
    proc, linux = spec.setdefault("process", {}), spec.setdefault("linux", {})
    _set_caps(proc, all_caps)
    linux.pop("maskedPaths", None)
    linux.pop("readonlyPaths", None)
    for m in spec.get("mounts", []):
        if m.get("type") in ("sysfs", "cgroup"):
            m["options"] = ["rw" if o == "ro" else o for o in m.get("options", [])]
    proc.pop("selinuxLabel", None)
    proc.pop("apparmorProfile", None)
    linux.pop("seccomp", None)
    if host_devices:
        linux.setdefault("devices", []).extend(get_devices("/dev"))
        linux.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]


# -- resources ------------------------------------------------------------------------------

def apply_resources(spec: dict[str, Any], r: Any, cri: CRIConfig, host: HostFacts) -> None:
    """containerd's WithResources: cpu period/quota/shares/cpuset, memory (and swap when the
    kernel accounts it), hugepage limits when the hugetlb controller is enabled in the config
    and present, and cgroup v2 ``unified`` keys."""
    res = spec.setdefault("linux", {}).setdefault("resources", {})
    cpu: dict[str, Any] = {}
    for name, value in (("cpu_period", r.cpu_period), ("cpu_shares", r.cpu_shares),
                        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
                        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)):
        if value < 0 and not (name == "memory_swap_limit_in_bytes" and value == -1):
            raise InvalidArgument(f"{name} {value} must not be negative")
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        res.setdefault("cpu", {}).update(cpu)
    mem: dict[str, Any] = {}
    if r.memory_limit_in_bytes:
        mem["limit"] = r.memory_limit_in_bytes
        # swap = memory by default: the container does not swap unless asked (containerd)
        if not r.memory_swap_limit_in_bytes and host.swap:
            mem["swap"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes and host.swap:
        mem["swap"] = r.memory_swap_limit_in_bytes
    if mem:
        res.setdefault("memory", {}).update(mem)
    if r.hugepage_limits and not cri.disable_hugetlb_controller:
        if host.hugetlb:
            res["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit}
                                     for h in r.hugepage_limits]
        elif not cri.tolerate_missing_hugetlb_controller:
            raise FailedPrecondition(
                "huge pages limits are specified but hugetlb cgroup controller is missing. "
                "Please set tolerate_missing_hugetlb_controller to `true` to ignore this error")
    if r.unified:
        if not host.cgroup2:
            raise InvalidArgument(f"unified cgroup v2 resources {sorted(r.unified)} can only "
                                  "be set on a cgroup v2 host")
        res.setdefault("unified", {}).update(dict(r.unified))


def cgroups_path(parent: str, container_id: str, systemd: bool) -> str:
    """containerd's getCgroupsPath: a systemd slice parent (``.../x.slice``) gives
    ``x.slice:cri-containerd:<id>`` (runc's systemd driver form), anything else
    ``<parent>/<id>``. With the systemd driver the parent must be a slice."""
    base = posixpath.basename(parent)
    if base.endswith(".slice"):
        return f"{base}:cri-containerd:{container_id}"
    if systemd:
        raise InvalidArgument(f"cgroup parent {parent!r} is not a systemd slice, and the "
                              "runtime uses the systemd cgroup driver")
    return posixpath.join(parent, container_id)


def _systemd(cri: CRIConfig, handler: RuntimeHandler | None) -> bool:
    opts = handler.options if handler is not None else {}
    return bool(opts.get("SystemdCgroup") or opts.get("systemd_cgroup") or cri.systemd_cgroup)


def _set_cgroups_path(linux: dict, sandbox, sandbox_config, cri, handler, id_: str) -> None:
    """``linux.cgroupsPath`` of a pod's or a container's spec (containerd's rule): under the
    pod's cgroup parent (the sandbox's recorded one, else its config's), named for ``id_``;
    without a parent, systemd's ``:cri-containerd:<id>`` or none (the runtime's default)."""
    parent = sandbox.cgroup_parent if sandbox.cgroup_parent is not None \
        else sandbox_config.linux.cgroup_parent
    systemd = _systemd(cri, handler)
    if parent:
        linux["cgroupsPath"] = cgroups_path(parent, id_, systemd)
    elif systemd:
        linux["cgroupsPath"] = f":cri-containerd:{id_}"


# -- namespaces -----------------------------------------------------------------------------


def _set_namespace(linux: dict[str, Any], kind: str, path: str | None, host: bool) -> None:
    """Join ``path`` (or a new namespace when None), replacing an entry of the same type in
    place (oci.WithLinuxNamespace); ``host``: no entry, the runtime's own namespace."""
    entry = {"type": kind, "path": path} if path else {"type": kind}
    nss, done = [], False
    for n in linux.get("namespaces", []):
        if n.get("type") != kind:
            nss.append(n)
        elif not host and not done:
            nss.append(entry)
            done = True
    if not host and not done:
        nss.append(entry)
    linux["namespaces"] = nss


def apply_namespaces(spec: dict[str, Any], sc: Any, sandbox: SandboxFacts,
                     target_pid_ns: str | None) -> None:
    """containerd's WithPodNamespaces: the pod's network, IPC and UTS namespaces (or the
    host's), the PID namespace per the container's NamespaceOption (CONTAINER: a new one;
    POD: the pod's; NODE: the host's; TARGET: another container's), a new mount namespace,
    the pod's user namespace if it has one (:func:`ctrd.cri.userns.apply_to_spec`)."""
    linux = spec.setdefault("linux", {})
    _set_namespace(linux, "network", sandbox.netns_path, sandbox.netns_path is None)
    _set_namespace(linux, "ipc", sandbox.ipcns_path, sandbox.ipcns_path is None)
    _set_namespace(linux, "uts", sandbox.utsns_path, sandbox.utsns_path is None)
    ns = sc.namespace_options
    mode = ns.pid
    if mode == NS_CONTAINER:
        _set_namespace(linux, "pid", None, False)
    elif mode == NS_POD:
        _set_namespace(linux, "pid", sandbox.pidns_path, False)
    elif mode == NS_NODE:
        _set_namespace(linux, "pid", None, True)
    elif mode == NS_TARGET:
        if not target_pid_ns:
            raise InvalidArgument(f"pid namespace mode TARGET: target container "
                                  f"{ns.target_id!r} has no PID namespace to join")
        _set_namespace(linux, "pid", target_pid_ns, False)
    else:
        raise InvalidArgument(f"unknown pid namespace mode {mode}")
    if ns.HasField("userns_options") and ns.userns_options.mode != NS_NODE and \
            sandbox.userns is None:
        raise InvalidArgument("user namespaces: the container asks for a pod user namespace "
                              "its pod does not have")
    from ctrd.cri import userns

    userns.apply_to_spec(spec, sandbox.userns_path, sandbox.userns)


# -- security profiles ----------------------------------------------------------------------

@dataclass
class Profile:
    """A CRI SecurityProfile."""

    type: int
    localhost_ref: str = ""


def profile_from_path(path: str) -> Profile:
    """containerd's generateSecurityProfile for the deprecated ``*_profile_path`` strings."""
    if path in (RUNTIME_DEFAULT, DOCKER_DEFAULT, ""):
        return Profile(PROFILE_RUNTIME_DEFAULT)
    if path == UNCONFINED:
        return Profile(PROFILE_UNCONFINED)
    if not path.startswith(PROFILE_NAME_PREFIX):
        raise InvalidArgument(f"invalid profile {path!r}")
    return Profile(PROFILE_LOCALHOST, path[len(PROFILE_NAME_PREFIX):])


def _seccomp_profile(sc: Any, cri: CRIConfig) -> Profile | None:
    if sc.HasField("seccomp"):
        return Profile(sc.seccomp.profile_type, sc.seccomp.localhost_ref)
    if sc.seccomp_profile_path:
        return profile_from_path(sc.seccomp_profile_path)
    if cri.unset_seccomp_profile:
        return profile_from_path(cri.unset_seccomp_profile)
    return None


_SECCOMP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath",
                 "listenerMetadata", "syscalls"}
_SYSCALL_KEYS = {"names", "action", "errnoRet", "args"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}


def load_seccomp_profile(path: str) -> dict[str, Any]:
    """A Localhost seccomp profile: an OCI ``LinuxSeccomp`` JSON file, bounded, its fields
    type-checked; unknown keys are dropped as Go's decoder does. Errors name the file."""
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"cannot load seccomp profile {path!r}: {why}")

    if not path.startswith("/"):
        raise bad("the path must be absolute")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise bad(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad("not a regular file")
        if st.st_size > MAX_PROFILE_SIZE:
            raise bad(f"{st.st_size} bytes is over the {MAX_PROFILE_SIZE}-byte limit")
        data = os.read(fd, MAX_PROFILE_SIZE + 1)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"decoding seccomp profile failed {path!r}: {e}") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    out = {k: v for k, v in doc.items() if k in _SECCOMP_KEYS}
    if not isinstance(out.get("defaultAction"), str):
        raise bad("defaultAction must be a string")
    for key in ("architectures", "flags"):
        v = out.get(key)
        if v is not None and (not isinstance(v, list) or
                              not all(isinstance(s, str) for s in v)):
            raise bad(f"{key} must be a list of strings")
    syscalls = out.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise bad("syscalls must be a list")
    clean = []
    for i, s in enumerate(syscalls):
        if not isinstance(s, dict):
            raise bad(f"syscalls[{i}] must be an object")
        s = {k: v for k, v in s.items() if k in _SYSCALL_KEYS}
        names = s.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad(f"syscalls[{i}].names must be a list of strings")
        if not isinstance(s.get("action"), str):
            raise bad(f"syscalls[{i}].action must be a string")
        args = s.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, dict) for a in args):
            raise bad(f"syscalls[{i}].args must be a list of objects")
        s["args"] = [{k: v for k, v in a.items() if k in _ARG_KEYS} for a in args]
        for a in s["args"]:
            for k in ("index", "value", "valueTwo"):
                if k in a and (isinstance(a[k], bool) or not isinstance(a[k], int)
                               or a[k] < 0):
                    raise bad(f"syscalls[{i}].args.{k} must be a non-negative integer")
        clean.append(s)
    if "syscalls" in out:
        out["syscalls"] = clean
    return out


def apply_seccomp(spec: dict[str, Any], profile: Profile | None, privileged: bool,
                  enabled: bool) -> None:
    """containerd's generateSeccompSpecOpts: nothing for privileged containers or without a
    profile; RuntimeDefault -> the default profile for the final bounding set; Localhost ->
    the file; Unconfined -> none. Asking for a profile on a kernel without seccomp fails."""
    if privileged:
        return
    if not enabled:
        if profile is not None and profile.type != PROFILE_UNCONFINED:
            raise FailedPrecondition("seccomp is not supported")
        return
    if profile is None:
        return
    if profile.type != PROFILE_LOCALHOST and profile.localhost_ref:
        raise InvalidArgument("seccomp config invalid LocalhostRef must only be set if "
                              "ProfileType is Localhost")
    linux = spec.setdefault("linux", {})
    if profile.type == PROFILE_UNCONFINED:
        linux.pop("seccomp", None)
    elif profile.type == PROFILE_RUNTIME_DEFAULT:
        bounding = spec.get("process", {}).get("capabilities", {}).get("bounding", [])
        linux["seccomp"] = seccomp.default_profile(bounding)
    elif profile.type == PROFILE_LOCALHOST:
        ref = profile.localhost_ref
        if ref.startswith(PROFILE_NAME_PREFIX):
            ref = ref[len(PROFILE_NAME_PREFIX):]
        linux["seccomp"] = load_seccomp_profile(ref)
    else:
        raise InvalidArgument(f"seccomp unknown ProfileType {profile.type}")


def apply_apparmor(spec: dict[str, Any], sc: Any, privileged: bool, host: HostFacts,
                   cri: CRIConfig) -> None:
    """containerd's generateApparmorSpecOpts when the host has AppArmor (and the config does
    not disable it); on other hosts AppArmor requests are ignored."""
    if not host.apparmor or cri.disable_apparmor:
        return
    if sc.HasField("apparmor"):
        profile = Profile(sc.apparmor.profile_type, sc.apparmor.localhost_ref)
    else:
        profile = profile_from_path(sc.apparmor_profile)  # "" -> RuntimeDefault
    if profile.type != PROFILE_LOCALHOST and profile.localhost_ref:
        raise InvalidArgument("apparmor config invalid LocalhostRef must only be set if "
                              "ProfileType is Localhost")
    proc = spec.setdefault("process", {})
    if profile.type == PROFILE_UNCONFINED:
        return
    if profile.type == PROFILE_RUNTIME_DEFAULT:
        if not privileged and APPARMOR_DEFAULT_PROFILE in host.apparmor_profiles:
            proc["apparmorProfile"] = APPARMOR_DEFAULT_PROFILE
        return
    if profile.type == PROFILE_LOCALHOST:
        name = profile.localhost_ref
        if name.startswith(PROFILE_NAME_PREFIX):
            name = name[len(PROFILE_NAME_PREFIX):]
        if not name:
            raise InvalidArgument("nil apparmor profile is not supported")
        if name not in host.apparmor_profiles:
            raise NotFound(f"apparmor profile not found {name}")
        proc["apparmorProfile"] = name
        return
    raise InvalidArgument(f"apparmor unknown ProfileType {profile.type}")


# -- the spec -------------------------------------------------------------------------------

def load_base_spec(path: str) -> dict[str, Any]:
    """A runtime handler's ``base_runtime_spec`` file (a JSON OCI spec)."""
    try:
        with open(path, "rb") as f:
            data = f.read(16 << 20)
        doc = json.loads(data)
    except OSError as e:
        raise FailedPrecondition(f"cannot load base runtime spec {path!r}: {e.strerror}") \
            from None
    except ValueError as e:
        raise FailedPrecondition(f"base runtime spec {path!r} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise FailedPrecondition(f"base runtime spec {path!r} is not a JSON object")
    return doc


def _env(config: Any) -> list[str]:
    out = []
    for kv in config.envs:
        if not kv.key or "=" in kv.key or "\0" in kv.key or "\0" in kv.value:
            raise InvalidArgument(f"invalid environment variable name {kv.key!r}")
        out.append(f"{kv.key}={kv.value}")
    return out


def container_spec(container_id: str, config: Any, sandbox_config: Any,
                   image: ImageConfig | Mapping[str, Any] | None, sandbox: SandboxFacts,
                   rootfs: str | Rootfs | None, cri: CRIConfig | None = None,
                   handler: RuntimeHandler | None = None, *, image_name: str = "",
                   target_pid_ns: str | None = None,
                   sysctls: Mapping[str, str] | None = None,
                   base_spec: Mapping[str, Any] | None = None,
                   host: HostFacts | None = None,
                   mountinfo: str = "/proc/self/mountinfo",
                   rro_supported: bool | None = None) -> dict[str, Any]:
    """The OCI spec for CRI container ``container_id``.

    ``config``/``sandbox_config``: the CreateContainer request's ``runtime.v1``
    ContainerConfig and PodSandboxConfig. ``image``: the image's config (an
    :class:`ImageConfig`, or the config JSON as a dict). ``rootfs``: the container's root
    directory, mounted (read-only is enough), to resolve users and groups. ``cri``: the CRI
    config (default: defaults); ``handler``: the runtime handler (its SystemdCgroup option,
    privileged_without_host_devices, base_runtime_spec and annotation passthrough globs).
    ``image_name``: for the image-name annotation (default: the request's image).
    ``target_pid_ns``: the PID namespace of the target container in TARGET mode.
    ``sysctls``: put in the spec (see :func:`pod_sysctls`). ``base_spec``: instead of loading
    the handler's base_runtime_spec file. ``host``: host facts (default: probed).
    ``rro_supported``: whether the handler can make recursive read-only mounts (default:
    probed, :func:`ctrd.cri.runtime_features.recursive_read_only_supported`).

    Errors: InvalidArgument for a malformed request, NotFound for a user/group/profile that
    does not exist, FailedPrecondition when the host cannot do what is asked.
    """
    cri = cri or CRIConfig()
    host = host or host_facts()
    img = _image_config(image)
    sc = config.linux.security_context
    privileged = sc.privileged
    if config.CDI_devices:
        raise InvalidArgument("CDI devices are not supported")
    # before anything is made (a missing mount source is created below)
    identity.check_policy(sc.supplemental_groups_policy)
    identity.check_groups(sc.supplemental_groups)

    # the starting spec: the handler's base spec as is, or containerd's default
    if base_spec is None and handler is not None and handler.base_runtime_spec:
        base_spec = load_base_spec(handler.base_runtime_spec)
    if base_spec is not None:
        spec = copy.deepcopy(dict(base_spec))
    else:
        spec = default_spec(CRI_NAMESPACE, container_id)
    proc = spec.setdefault("process", {})
    linux = spec.setdefault("linux", {})
    spec["mounts"] = [m for m in spec.get("mounts", [])
                      if posixpath.normpath(m.get("destination", "")) != "/run"]
    if base_spec is None:
        # WithoutDefaultSecuritySettings: the profiles come from the request, rlimits from
        # ctrd (containerd issue #515)
        proc.pop("apparmorProfile", None)
        linux.pop("seccomp", None)
        proc.pop("rlimits", None)
    spec.setdefault("root", {})["path"] = ROOTFS_PATH

    # process: args, env, cwd, terminal
    proc["args"] = process_args(config.command, config.args, img)
    proc.pop("commandLine", None)
    proc["env"] = replace_or_append_env(proc.get("env") or [], DEFAULT_UNIX_ENV)
    proc["noNewPrivileges"] = False
    cwd = config.working_dir or img.working_dir or proc.get("cwd") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} must be an absolute path")
    proc["cwd"] = cwd
    if config.tty:
        proc["terminal"] = True
        proc["env"].append("TERM=xterm")
    else:
        proc.pop("terminal", None)
    hostname = sandbox.hostname or sandbox_config.hostname or host.hostname or \
        os.uname().nodename
    proc["env"] = replace_or_append_env(proc["env"], [f"HOSTNAME={hostname}"])
    proc["env"] = replace_or_append_env(proc["env"], list(img.env) + _env(config))

    # mounts (SELinux relabelling is off: enable_selinux is not implemented)
    cri_mounts = [MountRequest.from_cri(m) for m in config.mounts]
    rro = any(m.recursive_read_only for m in cri_mounts) and (
        rro_supported if rro_supported is not None
        else runtime_features.recursive_read_only_supported(handler))
    apply_mounts(spec, cri_mounts, pod_mounts(config, sandbox), mountinfo, rro)

    if not cri.disable_proc_mount:
        # containerd #5029: the request's lists replace the defaults, empty means none
        linux["maskedPaths"] = list(sc.masked_paths)
        linux["readonlyPaths"] = list(sc.readonly_paths)
    else:
        linux.setdefault("maskedPaths", list(MASKED_PATHS))
        linux.setdefault("readonlyPaths", list(READONLY_PATHS))
    for key in ("maskedPaths", "readonlyPaths"):
        for p in linux.get(key, []):
            if not p.startswith("/"):
                raise InvalidArgument(f"{key} entry {p!r} must be an absolute path")
        if not linux.get(key):
            linux.pop(key, None)

    all_caps = list(host.capabilities)
    host_devices = handler is None or not handler.privileged_without_host_devices
    if privileged:
        if not sandbox_config.linux.security_context.privileged:
            raise InvalidArgument("no privileged container allowed in sandbox")
        apply_privileged(spec, all_caps, host_devices)
    if not privileged or not host_devices:
        apply_devices(spec, config.devices, sc, cri.device_ownership_from_security_context)
        if sc.HasField("capabilities"):
            apply_capabilities(proc, sc.capabilities, all_caps)
    caps = proc.setdefault("capabilities", {})
    caps.pop("ambient", None)  # kubernetes#56374: non-root + ambient is undefined

    if sc.no_new_privs:
        proc["noNewPrivileges"] = True
    if sc.readonly_rootfs:
        spec["root"]["readonly"] = True
    else:
        spec["root"].pop("readonly", None)

    # cgroups
    if cri.disable_cgroup:
        linux.pop("cgroupsPath", None)
    else:
        if config.linux.HasField("resources"):
            apply_resources(spec, config.linux.resources, cri, host)
        _set_cgroups_path(linux, sandbox, sandbox_config, cri, handler, container_id)

    annotations = spec.setdefault("annotations", {})
    if handler is not None:
        annotations.update(passthrough_annotations(dict(sandbox_config.annotations),
                                                   handler.pod_annotations))
        annotations.update(passthrough_annotations(dict(config.annotations),
                                                   handler.container_annotations))

    if config.linux.HasField("resources"):
        adj = config.linux.resources.oom_score_adj
        proc["oomScoreAdj"] = oom.restrict(
            adj, current=host.oom_score_adj,
            privileged=host.can_lower_oom and not cri.restrict_oom_score_adj)
    apply_namespaces(spec, sc, sandbox, target_pid_ns)
    annotations.update(container_annotations(sandbox.id, sandbox_config,
                                             config.metadata.name,
                                             image_name or config.image.image))
    if host.cgroup2 and not privileged:
        _set_namespace(linux, "cgroup", None, False)
    if sysctls:
        linux.setdefault("sysctl", {}).update(dict(sysctls))

    # user and groups: the request's user, else the image's, resolved in the rootfs; the
    # groups it is a member of there (Merge policy only) and the request's supplemental
    # groups (ctrd.cri.identity)
    user = user_string(sc) or img.user
    pu = resolve_user(user, rootfs)
    proc["user"] = {"uid": pu.uid, "gid": pu.gid, "additionalGids": identity.additional_gids(
        sc.supplemental_groups_policy, pu.gid, pu.additional_gids, sc.supplemental_groups)}

    apply_apparmor(spec, sc, privileged, host, cri)
    apply_seccomp(spec, _seccomp_profile(sc, cri), privileged, host.seccomp)
    if not annotations:
        spec.pop("annotations", None)
    return spec


# -- the pod's own process: a pause container, or ctrd's minimal pod init ------------------

DEFAULT_SANDBOX_OOM_ADJ = -998   # containerd's defaultSandboxOOMAdj
DEFAULT_SANDBOX_CPU_SHARES = 2   # containerd's DefaultSandboxCPUshares
SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
SANDBOX_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares"
SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory"

#: Where ctrd looks for a statically linked busybox for the pod init (Debian's
#: busybox-static installs /bin/busybox).
POD_INIT_BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")
#: Where the busybox is bound in the pod init's (otherwise empty) rootfs.
POD_INIT_PATH = "/bin/busybox"
#: PID 1 of a pod's shared PID namespace: ash's ``wait`` reaps every child, reparented
#: orphans included; TERM ends it (exit 0). One ``sleep`` child keeps ``wait`` blocking.
POD_INIT_SCRIPT = ('trap "exit 0" TERM; '
                   f'while :; do {POD_INIT_PATH} sleep 2147483647 & wait; done')


def is_static_elf(path: str) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter (statically
    linked: it runs in a rootfs that holds nothing else)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF":
                return False
            is64, little = head[4] == 2, head[5] == 1
            e = "<" if little else ">"
            if is64:
                phoff, = struct.unpack_from(e + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(e + "I", head, 28)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
            if phnum == 0 or phnum > 256 or phentsize < 4:
                return False
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        p_type, = struct.unpack_from(e + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP: dynamically linked
            return False
    return len(table) == phentsize * phnum


def pod_init_candidates() -> tuple[str, ...]:
    """:data:`POD_INIT_BUSYBOX`, or the colon-separated paths of ``CTRD_POD_INIT_BUSYBOX``
    in ctrd's environment (a node whose static busybox lives elsewhere; tests)."""
    env = os.environ.get("CTRD_POD_INIT_BUSYBOX")
    return tuple(p for p in env.split(":") if p) if env is not None else POD_INIT_BUSYBOX


def find_pod_init_binary(candidates: Sequence[str] | None = None) -> str | None:
    """The first statically linked busybox of ``candidates`` (default
    :func:`pod_init_candidates`; symlinks resolved)."""
    for c in pod_init_candidates() if candidates is None else candidates:
        real = os.path.realpath(c)
        if os.access(real, os.X_OK) and is_static_elf(real):
            return real
    return None


def sandbox_user(sandbox_config: Any, image: ImageConfig | Mapping[str, Any] | None) -> str:
    """The pause container's user: the pod's run_as_user[:run_as_group], else the sandbox
    image's USER ("" is root)."""
    lsc = sandbox_config.linux.security_context
    if lsc.HasField("run_as_user"):
        user = str(_check_id("run_as_user", lsc.run_as_user.value))
        if lsc.HasField("run_as_group"):
            user += f":{_check_id('run_as_group', lsc.run_as_group.value)}"
        return user
    if lsc.HasField("run_as_group"):
        raise InvalidArgument("run_as_group should only be specified when run_as_user is "
                              "specified")
    return _image_config(image).user


def user_needs_rootfs(user: str) -> bool:
    """Whether resolving ``user`` reads the image's /etc/passwd or /etc/group (all but root
    and a numeric ``uid:gid``): only then is the rootfs mounted to build a spec."""
    return bool(user) and re.fullmatch(r"\d+:\d+", user) is None


def sandbox_spec(sandbox_id: str, sandbox_config: Any,
                 image: ImageConfig | Mapping[str, Any] | None, sandbox: SandboxFacts,
                 rootfs: str | Rootfs | None, cri: CRIConfig | None = None,
                 handler: RuntimeHandler | None = None, *, pod_init: str | None = None,
                 host: HostFacts | None = None) -> dict[str, Any]:
    """The OCI spec of a pod's sandbox process, as containerd 1.6's sandboxContainerSpec
    (``pkg/cri/server/sandbox_run_linux.go``) builds the pause container's.

    ``image``: the sandbox image's config (its entrypoint and cmd run; its env, working dir
    and user apply), or None with ``pod_init``: the path of a static busybox on the host,
    bound read-only into an empty rootfs and run as the pod's minimal init
    (:data:`POD_INIT_SCRIPT`, no capabilities, uid 65535).

    Namespaces: the network namespace ``sandbox.netns_path`` (ctrd's pin; none with a host
    network, which also means the host's UTS namespace); IPC and UTS joined from
    ``sandbox.ipcns_path``/``utsns_path`` when given, else new ones (the host's per the
    pod's NamespaceOptions); a new PID namespace unless the pod's is NODE. The rest as
    containerd: read-only rootfs, hostname (when the UTS namespace is new), the pod's sysctls,
    the pod's /dev/shm and resolv.conf bound read-only, cgroup ``<parent>/<id>``, cpu shares
    2, oom_score_adj -998 clamped to ctrd's own when lowering is not permitted (or
    ``restrict_oom_score_adj``), no_new_privs, the pod's seccomp profile (RuntimeDefault
    when it names none; none when privileged), the ``io.kubernetes.cri.*`` sandbox
    annotations and the handler's pod annotation passthrough.
    """
    cri = cri or CRIConfig()
    host = host or host_facts()
    lsc = sandbox_config.linux.security_context
    nsopts = lsc.namespace_options
    host_net = nsopts.network == NS_NODE
    spec = default_spec(CRI_NAMESPACE, sandbox_id)
    proc, linux = spec["process"], spec["linux"]
    # WithoutRunMount, WithoutDefaultSecuritySettings
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/run"]
    proc.pop("apparmorProfile", None)
    proc.pop("rlimits", None)
    linux.pop("seccomp", None)
    spec["root"] = {"path": ROOTFS_PATH, "readonly": True}
    proc["noNewPrivileges"] = True

    if pod_init is not None:
        proc["args"] = [POD_INIT_PATH, "sh", "-c", POD_INIT_SCRIPT]
        proc["env"] = [f"PATH={posixpath.dirname(POD_INIT_PATH)}"]
        proc["user"] = {"uid": 65535, "gid": 65535}
        if sandbox.userns is not None and sandbox.userns.to_host_ids(65535) is None:
            proc["user"] = {"uid": 0, "gid": 0}  # a short pod mapping: its root, no caps
        proc["capabilities"] = {k: [] for k in ("bounding", "effective", "permitted")}
        # an empty rootfs: proc and a /dev, the busybox, nothing else to protect
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] in ("/proc", "/dev")]
        spec["mounts"].append({"destination": POD_INIT_PATH, "type": "bind",
                               "source": pod_init, "options": ["rbind", "ro", "nosuid",
                                                               "nodev"]})
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
    else:
        img = _image_config(image)
        if not img.entrypoint and not img.cmd:
            raise InvalidArgument("invalid empty entrypoint and cmd in the sandbox image "
                                  "config")
        proc["args"] = list(img.entrypoint) + list(img.cmd)
        proc["env"] = replace_or_append_env(list(DEFAULT_UNIX_ENV), list(img.env))
        if img.working_dir:
            if not img.working_dir.startswith("/"):
                raise InvalidArgument(f"sandbox image working directory "
                                      f"{img.working_dir!r} must be an absolute path")
            proc["cwd"] = img.working_dir
        # containerd's WithUser (no image groups) and WithSupplementalGroups
        user = sandbox_user(sandbox_config, img)
        uid = gid = 0
        if user:
            pu = resolve_user(user, rootfs)
            uid, gid = pu.uid, pu.gid
        proc["user"] = {"uid": uid, "gid": gid}
        gids = set(identity.check_groups(lsc.supplemental_groups))
        if gids:
            proc["user"]["additionalGids"] = sorted(gids)
        shm = DEV_SHM if nsopts.ipc == NS_NODE else sandbox.shm_path
        if shm:
            # containerd: nosuid,nodev,noexec always -- in a user namespace the read-only
            # remount of a bind must keep the source's locked flags, or it is EPERM
            spec["mounts"].append({"destination": DEV_SHM, "type": "bind", "source": shm,
                                   "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
            spec["mounts"] = [m for m in spec["mounts"]
                              if not (m["destination"] == DEV_SHM and m["type"] == "tmpfs")]
        if sandbox.resolv_conf_path:
            spec["mounts"].append({"destination": RESOLV_CONF, "type": "bind",
                                   "source": sandbox.resolv_conf_path,
                                   "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})

    # namespaces (the default spec has new pid, ipc, uts, mount and network ones)
    if host_net:
        _set_namespace(linux, "network", None, True)
        _set_namespace(linux, "uts", None, True)
    else:
        _set_namespace(linux, "network", sandbox.netns_path, False)
        _set_namespace(linux, "uts", sandbox.utsns_path, False)
        if not sandbox.utsns_path and sandbox_config.hostname:
            spec["hostname"] = sandbox_config.hostname
    _set_namespace(linux, "ipc", sandbox.ipcns_path, nsopts.ipc == NS_NODE)
    _set_namespace(linux, "pid", None, nsopts.pid == NS_NODE)
    from ctrd.cri import userns

    userns.apply_to_spec(spec, sandbox.userns_path, sandbox.userns)
    if host.cgroup2:
        _set_namespace(linux, "cgroup", None, False)

    sysctls = dict(sandbox_config.linux.sysctls)
    if not host_net:
        if cri.enable_unprivileged_ports:
            sysctls.setdefault("net.ipv4.ip_unprivileged_port_start", "0")
        if cri.enable_unprivileged_icmp and sandbox.userns is None:  # containerd: not in a userns
            sysctls.setdefault("net.ipv4.ping_group_range", "0 2147483647")
    if sysctls:
        linux["sysctl"] = sysctls

    if cri.disable_cgroup:
        linux.pop("cgroupsPath", None)
    else:
        _set_cgroups_path(linux, sandbox, sandbox_config, cri, handler, sandbox_id)
        linux.setdefault("resources", {})["cpu"] = {"shares": DEFAULT_SANDBOX_CPU_SHARES}

    annotations: dict[str, str] = {}
    if sandbox_config.linux.HasField("resources"):
        r = sandbox_config.linux.resources
        annotations.update({SANDBOX_CPU_PERIOD: str(r.cpu_period),
                            SANDBOX_CPU_QUOTA: str(r.cpu_quota),
                            SANDBOX_CPU_SHARES: str(r.cpu_shares),
                            SANDBOX_MEMORY: str(r.memory_limit_in_bytes)})
    # containerd fails here without CAP_SYS_RESOURCE unless restrict_oom_score_adj is set;
    # ctrd clamps whenever lowering is not permitted
    proc["oomScoreAdj"] = oom.restrict(
        DEFAULT_SANDBOX_OOM_ADJ, current=host.oom_score_adj,
        privileged=host.can_lower_oom and not cri.restrict_oom_score_adj)
    if handler is not None:
        annotations.update(passthrough_annotations(dict(sandbox_config.annotations),
                                                   handler.pod_annotations))
    annotations.update(sandbox_annotations(sandbox_id, sandbox_config))
    spec["annotations"] = annotations

    # containerd 1.6 gives the sandbox no seccomp filter unless the pod names a profile (or
    # unset_seccomp_profile does); the kubelet usually sends Unconfined anyway.
    profile = _seccomp_profile(lsc, cri)
    if profile is not None:
        apply_seccomp(spec, profile, lsc.privileged, host.seccomp)
    return spec


def exec_process(spec: Mapping[str, Any], args: Sequence[str], tty: bool = False) -> dict[str, Any]:
    """The process spec of an Exec/ExecSync in a container with ``spec`` (containerd's
    execInternal): the container's process with ``args`` and ``terminal``, TERM=xterm with a
    tty."""
    if not args:
        raise InvalidArgument("exec needs a command")
    proc = copy.deepcopy(dict(spec.get("process") or {}))
    proc["args"] = list(args)
    proc.pop("commandLine", None)
    proc["terminal"] = bool(tty)
    proc.pop("consoleSize", None)
    if tty:
        proc["env"] = replace_or_append_env(proc.get("env") or [], ["TERM=xterm"])
    return proc


__all__ = [
    "HostFacts", "SandboxFacts", "MountRequest", "Profile", "container_spec", "exec_process",
    "container_annotations", "sandbox_annotations", "passthrough_annotations",
    "pod_sysctls", "process_args", "user_string", "normalize_capability", "cgroups_path",
    "lookup_mount", "load_seccomp_profile", "load_base_spec", "host_facts",
    "sandbox_spec", "sandbox_user", "user_needs_rootfs", "find_pod_init_binary",
    "is_static_elf",
]
