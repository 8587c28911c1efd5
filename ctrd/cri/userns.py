"""User namespaces for pods (``NamespaceOption.userns_options``), as containerd 2.3 serves
them to a kubelet's ``hostUsers: false`` pods.

What a request may say (containerd's ``parseUsernsIDs``; the kubelet sends one 65536-long
range per pod): absent or ``NODE`` without mappings -> the host's user namespace, as before;
``POD`` with exactly one uid and one gid mapping, each non-empty, within 2^32 and mapping
container id 0 -> the pod gets its own user namespace. ``CONTAINER``/``TARGET``, several
lines, empty or overflowing lines, mappings with ``NODE``: InvalidArgument naming the field.
A container's options must equal its pod's (containerd's ``sameUsernsConfig``).

The pod's namespaces (:func:`create_pod_namespaces`): containerd creates the pod's netns
inside the new user namespace (``setupNetnsWithinUserns``) and pins that netns's owning
user namespace next to it. ctrd does the same for every namespace it pins: one child
(util-linux ``unshare --user --net --ipc --uts``: one unshare(2), so the new network, IPC
and UTS namespaces are owned by the new user namespace) gets its maps written from here,
then its ``ns/{user,net,ipc,uts}`` are bind-mounted onto the pins and the child is killed.
Ownership matters: the container's root may mount sysfs only in a netns its user namespace
owns, mqueue only in such an IPC namespace. The hostname and ``lo`` are set from here (host
root is privileged over descendant user namespaces). With a pause container only net and
user are pinned; the pause joins both and creates IPC/UTS itself, inside the user namespace.

Rootfs and volumes: the container's snapshot carries containerd's mapping labels
(:func:`snapshot_labels`); the overlay snapshotter makes the upper dir the mapped root's and
the mount code mounts the lowerdirs idmapped (:mod:`ctrd.snapshots.idmap`). runc 1.1 cannot
make idmapped mounts from a spec (runc 1.2 can), so CRI mounts with ``uidMappings`` are
idmapped by ctrd (:func:`prepare_volumes`): the spec binds an idmapped clone made under the
container's state dir, released with the container.

:func:`supported` is what ``Status`` reports as ``features.user_namespaces``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Sequence

from ctrd.cri import netns
from ctrd.errdefs import InvalidArgument
from ctrd.snapshots import idmap
from ctrd.snapshots import mount as _mount
from ctrd.snapshots.overlay import LABEL_GIDMAPPING, LABEL_UIDMAPPING
from ctrd.snapshots.snapshotter import Mount

# runtime.v1 NamespaceMode
POD, CONTAINER, NODE, TARGET = 0, 1, 2, 3
_MODE_NAMES = {POD: "POD", CONTAINER: "CONTAINER", NODE: "NODE", TARGET: "TARGET"}

IDMap = idmap.IDMap


@dataclass(frozen=True)
class PodUserns:
    """A pod's user namespace: one uid and one gid line ``(container id, host id, size)``."""

    uids: tuple[IDMap, ...]
    gids: tuple[IDMap, ...]

    @property
    def root(self) -> tuple[int, int]:
        """The host (uid, gid) of the pod's root."""
        return idmap.to_host(list(self.uids), 0), idmap.to_host(list(self.gids), 0)

    def to_host_ids(self, cid: int) -> tuple[int, int] | None:
        """The host (uid, gid) of container uid = gid = ``cid``; None when unmapped."""
        ids = idmap.to_host(list(self.uids), cid), idmap.to_host(list(self.gids), cid)
        return None if -1 in ids else ids

    def spec_maps(self) -> tuple[list[dict], list[dict]]:
        """OCI ``linux.uidMappings``, ``gidMappings``."""
        def conv(maps):
            return [{"containerID": c, "hostID": h, "size": n} for c, h, n in maps]
        return conv(self.uids), conv(self.gids)


def _parse_lines(lines: Sequence[Any], fieldname: str) -> tuple[IDMap, ...]:
    if len(lines) > 1:
        # containerd: the remapped snapshot supports one line only
        raise InvalidArgument(f"{fieldname}: only one mapping line supported, got "
                              f"{len(lines)} mapping lines")
    out = []
    for m in lines:
        cid, hid, n = m.container_id, m.host_id, m.length
        if n < 1:
            raise InvalidArgument(f"{fieldname}: invalid mapping length: {n}")
        if cid + n > idmap.ID_LIMIT or hid + n > idmap.ID_LIMIT:
            raise InvalidArgument(f"{fieldname}: mapping {cid}:{hid}:{n} overflows 2^32 ids")
        if cid != 0:
            raise InvalidArgument(f"{fieldname}: mapping {cid}:{hid}:{n} leaves container "
                                  "id 0 (root) unmapped")
        out.append((cid, hid, n))
    return tuple(out)


def parse(nsopts: Any, where: str = "namespace_options") -> PodUserns | None:
    """The pod user namespace a NamespaceOption asks for; None for the host's. Errors
    (InvalidArgument) name the field under ``where``."""
    if nsopts is None or not nsopts.HasField("userns_options"):
        return None
    u = nsopts.userns_options
    base = f"{where}.userns_options"
    uids = _parse_lines(list(u.uids), f"{base}.uids")
    gids = _parse_lines(list(u.gids), f"{base}.gids")
    if u.mode == NODE:
        if uids or gids:
            raise InvalidArgument(f"{base}.mode: can't use user namespace mode NODE with "
                                  f"mappings (got {len(uids)} UID and {len(gids)} GID "
                                  "mappings)")
        return None
    if u.mode != POD:
        raise InvalidArgument(f"{base}.mode: unsupported user namespace mode: "
                              f"{_MODE_NAMES.get(u.mode, u.mode)!r}")
    if not uids or not gids:
        raise InvalidArgument(f"{base}: can't use user namespace mode POD without UID and "
                              "GID mappings")
    return PodUserns(uids, gids)


def check_container(container_nsopts: Any, pod_nsopts: Any,
                    where: str = "linux.security_context.namespace_options") -> None:
    """containerd's sameUsernsConfig: a container's userns options equal its pod's."""
    mine = parse(container_nsopts, where)
    pods = parse(pod_nsopts)
    has_mine = container_nsopts is not None and container_nsopts.HasField("userns_options")
    has_pods = pod_nsopts is not None and pod_nsopts.HasField("userns_options")
    if mine != pods or (has_mine != has_pods and (mine or pods)):
        raise InvalidArgument(f"{where}.userns_options: user namespace config for sandbox is "
                              f"different from container (sandbox {pods}, container {mine})")


def snapshot_labels(pu: PodUserns | None) -> dict[str, str]:
    """containerd's WithRemapperLabels for a container's snapshot ("0:<host>:<size>")."""
    if pu is None:
        return {}
    return {LABEL_UIDMAPPING: idmap.format_map(list(pu.uids)),
            LABEL_GIDMAPPING: idmap.format_map(list(pu.gids))}


def apply_to_spec(spec: dict, userns_path: str | None, pu: PodUserns | None) -> None:
    """Join the pod's user namespace (``userns_path``) with its maps, or none: the host's.
    With the host's network namespace (not owned by the pod's user namespace, so sysfs
    cannot be mounted) /sys is bound read-only instead, as containerd does (its ``rro``:
    runc 1.1 has no recursive read-only, so the bind is ``ro``)."""
    linux = spec.setdefault("linux", {})
    nss = [n for n in linux.get("namespaces", []) if n.get("type") != "user"]
    linux.pop("uidMappings", None)
    linux.pop("gidMappings", None)
    if pu is not None and userns_path:
        nss.append({"type": "user", "path": userns_path})
        linux["uidMappings"], linux["gidMappings"] = pu.spec_maps()
        if not any(n.get("type") == "network" for n in nss):
            spec["mounts"] = [m for m in spec.get("mounts", [])
                              if m.get("destination") != "/sys"] + [
                {"destination": "/sys", "type": "bind", "source": "/sys",
                 "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}]
    linux["namespaces"] = nss


# --- the pod's namespaces ------------------------------------------------------------------

def create_pod_namespaces(base: str, hostname: str, kinds: Sequence[str], pu: PodUserns,
                          name: str | None = None) -> dict[str, str]:
    """Make a new user namespace with ``pu``'s maps and new namespaces of ``kinds`` (net,
    ipc, uts) owned by it; pin all at ``<base>/<kind>ns/<name>`` (``userns`` for the user
    namespace). Returns ``{kind: pin path}`` with ``"user"`` included. On error nothing is
    left behind."""
    flags = {"net": "--net", "ipc": "--ipc", "uts": "--uts"}
    for k in kinds:
        if k not in flags:
            raise InvalidArgument(f"unknown namespace kind {k!r}")
    name = name or netns.new_name()
    pid = idmap.spawn_in_new_userns(tuple(flags[k] for k in kinds))
    paths: dict[str, str] = {}
    try:
        idmap.write_maps(pid, list(pu.uids), list(pu.gids))
        proc = {k: f"/proc/{pid}/ns/{k}" for k in kinds}
        if "uts" in kinds and hostname:
            netns.run_in_ns({"uts": proc["uts"]}, socket.sethostname, hostname)
        if "net" in kinds:
            netns.run_in_ns({"net": proc["net"]}, netns._loopback_up)
        for k in ("user", *kinds):
            path = netns.ns_path(base, k, name)
            netns.prepare_ns_dir(os.path.dirname(path))
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            os.close(fd)
            paths[k] = path
            _mount.mount(Mount("none", f"/proc/{pid}/ns/{k}", ["bind"]), path)
    except BaseException:
        for p in paths.values():
            try:
                netns.remove_path(p)
            except OSError:
                pass
        raise
    finally:
        idmap.reap(pid)
    return paths


# --- idmapped volumes ----------------------------------------------------------------------

@dataclass
class Volumes:
    """Idmapped clones made for one container: ``clones[i]`` is mounted on a directory (or
    file) under ``dir``."""

    dir: str
    clones: list[str] = field(default_factory=list)


def volumes_dir(state: str, container_id: str) -> str:
    return os.path.join(state, "containers", container_id, "idmapped")


def prepare_volumes(config: Any, pu: PodUserns | None, vdir: str) -> tuple[Any, Volumes]:
    """For each CRI mount of ``config`` with ``uidMappings``/``gidMappings``: an idmapped
    clone of its host path under ``vdir`` (each dir 0711 so the pod's root can reach it).
    Returns a copy of the config whose mounts name the clones (mappings cleared) and the
    clones to :func:`release_volumes`. InvalidArgument for mappings on a pod without a user
    namespace, for bad mappings, and for non-private propagation."""
    vols = Volumes(vdir)
    if not any(m.uidMappings or m.gidMappings for m in config.mounts):
        return config, vols
    out = type(config)()
    out.CopyFrom(config)
    try:
        nsfds: dict[tuple, int] = {}
        try:
            for i, m in enumerate(out.mounts):
                if not (m.uidMappings or m.gidMappings):
                    continue
                f = f"mounts[{i}]"
                if pu is None:
                    raise InvalidArgument(f"{f}.uidMappings: idmapped mounts need a pod user "
                                          "namespace (userns_options mode POD)")
                uids = _parse_lines(list(m.uidMappings), f"{f}.uidMappings")
                gids = _parse_lines(list(m.gidMappings), f"{f}.gidMappings")
                if not uids or not gids:
                    raise InvalidArgument(f"{f}: idmapped mounts need both uidMappings and "
                                          "gidMappings")
                if m.propagation != 0:
                    raise InvalidArgument(f"{f}.propagation: idmapped mounts are private")
                src = m.host_path
                if not src.startswith("/") or "\0" in src:
                    raise InvalidArgument(f"{f}.host_path: {src!r} must be an absolute path")
                try:
                    src = os.path.realpath(src, strict=True)
                except OSError as e:
                    raise InvalidArgument(f"{f}.host_path: {src!r}: {e.strerror}") from None
                os.makedirs(vdir, mode=0o711, exist_ok=True)
                os.chmod(os.path.dirname(vdir), 0o711)
                target = os.path.join(vdir, str(i))
                if os.path.isdir(src):
                    os.mkdir(target, 0o711)
                else:
                    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
                key = (uids, gids)
                if key not in nsfds:
                    nsfds[key] = idmap.userns_fd(list(uids), list(gids))
                vols.clones.append(target)
                idmap.clone_idmapped(src, target, nsfds[key], recursive=True)
                m.host_path = target
                del m.uidMappings[:]
                del m.gidMappings[:]
        finally:
            for fd in nsfds.values():
                os.close(fd)
    except BaseException:
        release_volumes(vols)
        raise
    return out, vols


POD_FILES = ("hostname_path", "hosts_path", "resolv_conf_path")


def idmap_pod_files(sandbox: Any, pu: PodUserns | None, vdir: str) -> Any:
    """containerd binds the pod's /etc/hostname, /etc/hosts and /etc/resolv.conf with the
    pod's id mappings, so the pod's root owns them (and may write them). ``sandbox`` (a
    :class:`ctrd.cri.spec.SandboxFacts`) with those paths moved to idmapped clones of the
    files under ``vdir`` (released by :func:`release_volumes`); unchanged without ``pu``.
    /dev/shm stays as it is (containerd: an empty tmpfs, 1777)."""
    import dataclasses

    if pu is None:
        return sandbox
    files = {k: getattr(sandbox, k) for k in POD_FILES
             if getattr(sandbox, k) and os.path.isfile(getattr(sandbox, k))}
    if not files:
        return sandbox
    os.makedirs(vdir, mode=0o711, exist_ok=True)
    os.chmod(os.path.dirname(vdir), 0o711)
    nsfd = idmap.userns_fd(list(pu.uids), list(pu.gids))
    moved = {}
    try:
        for k, src in files.items():
            target = os.path.join(vdir, os.path.basename(src))
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
            idmap.clone_idmapped(src, target, nsfd, recursive=False)
            moved[k] = target
    except BaseException:
        release_volumes(vdir)
        raise
    finally:
        os.close(nsfd)
    return dataclasses.replace(sandbox, **moved)


def release_volumes(vols: Volumes | str) -> None:
    """Detach and remove every clone under the volumes dir (idempotent; works after a
    restart from the dir alone). Detach first: removing a tree with a live clone in it
    would delete the volume's files."""
    vdir = vols.dir if isinstance(vols, Volumes) else vols
    try:
        names = os.listdir(vdir)
    except FileNotFoundError:
        return
    for n in names:
        p = os.path.join(vdir, n)
        idmap.detach(p)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass
    try:
        os.rmdir(vdir)
    except OSError:
        pass


# --- the feature ---------------------------------------------------------------------------

_SUPPORTED: bool | None = None


def supported(probe_dir: str | None = None) -> bool:
    """Whether this kernel and host can run POD-mode user namespaces as ctrd makes them:
    user namespaces, util-linux ``unshare``, and an idmapped clone of a directory under
    ``probe_dir`` (default: the temp dir) through a fresh mapping. Probed once, cached.
    ``Status`` reports it as ``runtime_handlers[].features.user_namespaces``."""
    global _SUPPORTED
    if _SUPPORTED is None:
        _SUPPORTED = _probe(probe_dir)
    return _SUPPORTED


def _probe(probe_dir: str | None) -> bool:
    import tempfile

    if not os.path.exists("/proc/self/ns/user"):
        return False
    try:
        td = tempfile.mkdtemp(prefix="ctrd-idmap-check-", dir=probe_dir)
    except OSError:
        return False
    src, dst = os.path.join(td, "src"), os.path.join(td, "dst")
    try:
        os.mkdir(src)
        os.mkdir(dst)
        nsfd = idmap.userns_fd([(0, 65536, 65536)], [(0, 65536, 65536)])
        try:
            idmap.clone_idmapped(src, dst, nsfd, recursive=False)
        finally:
            os.close(nsfd)
        ok = os.stat(dst).st_uid == os.stat(src).st_uid + 65536
        idmap.detach(dst)
        return ok
    except OSError:
        return False
    finally:
        idmap.detach(dst)
        for p in (dst, src, td):
            try:
                os.rmdir(p)
            except OSError:
                pass


def pod_userns(config) -> "PodUserns | None":
    """The pod's user namespace from its PodSandboxConfig, or None (NODE, or no options);
    InvalidArgument for bad options, FailedPrecondition where the host cannot do it."""
    from ctrd.errdefs import FailedPrecondition

    pu = parse(config.linux.security_context.namespace_options,
               "linux.security_context.namespace_options")
    if pu is not None and not supported():
        raise FailedPrecondition("user namespaces with idmapped mounts are not supported on "
                                 "this host")
    return pu


def container_userns(config, sandbox_config) -> "PodUserns | None":
    """The container's user namespace: its options (if any) must equal its pod's."""
    check_container(config.linux.security_context.namespace_options,
                    sandbox_config.linux.security_context.namespace_options)
    return pod_userns(sandbox_config)
