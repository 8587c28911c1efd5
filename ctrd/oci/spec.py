"""OCI runtime specs (Linux), as containerd 1.6's ``oci`` package and ``ctr run`` build them.

A spec is a JSON-ready ``dict`` with the runtime-spec's field names. :func:`default_spec` is
containerd's ``populateDefaultUnixSpec`` plus ``WithDefaultUnixDevices``, with two
hardenings containerd added later (1.7) or leaves to its CRI plugin:
``/sys/devices/virtual/powercap`` is masked (CVE-2020-8694: RAPL energy counters leak what
other tenants compute) and cgroupfs is mounted read-only at ``/sys/fs/cgroup``.

:func:`generate` applies a :class:`RunOptions` and an :class:`ImageConfig` in ctr's order
(default spec, env, mounts, image config, args, cwd, tty, host network, user, hostname, OOM
score): the result is what ``ctr run`` would send, bar those hardenings. Differences from
ctr on purpose: ARGS replace the image's Cmd but keep its Entrypoint (containerd's
``WithImageConfigArgs``, docker's rule; ctr drops the Entrypoint), and the container's
``cpu.shares`` is not set (ctr sets 1024 only because its ``--cpu-shares`` flag defaults to
it).

Capabilities: bounding, permitted and effective get containerd's default set; the
inheritable set is empty (absent), so a file with inheritable capabilities cannot gain them
via execve (CVE-2022-24769), and ambient is empty too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Sequence

from ctrd.errdefs import InvalidArgument
from ctrd.oci import oom
from ctrd.oci.user import Rootfs, resolve_user

OCI_VERSION = "1.0.2-dev"  # what containerd 1.6 vendors (runtime-spec specs.Version)
ROOTFS_PATH = "rootfs"     # relative to the bundle, as containerd's defaultRootfsPath
DEFAULT_UNIX_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
MAX_IMAGE_CONFIG = 16 << 20

DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi", "/sys/devices/virtual/powercap",
)

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

NAMESPACES = ("pid", "ipc", "uts", "mount", "network")


def default_mounts() -> list[dict[str, Any]]:
    def m(dst: str, typ: str, src: str, *opts: str) -> dict[str, Any]:
        return {"destination": dst, "type": typ, "source": src, "options": list(opts)}

    return [
        m("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        m("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        m("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666",
          "mode=0620", "gid=5"),
        m("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        m("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        m("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        m("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", "ro"),
        m("/run", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
    ]


def default_devices() -> list[dict[str, Any]]:
    """Device cgroup rules: deny all, then containerd's WithDefaultUnixDevices."""
    def c(major: int, minor: int | None) -> dict[str, Any]:
        d: dict[str, Any] = {"allow": True, "type": "c", "major": major}
        if minor is not None:
            d["minor"] = minor
        d["access"] = "rwm"
        return d

    return [{"allow": False, "access": "rwm"},
            c(1, 3), c(1, 8), c(1, 7), c(5, 0), c(1, 5), c(1, 9), c(5, 1), c(136, None),
            c(5, 2)]


def default_spec(namespace: str, container_id: str) -> dict[str, Any]:
    """containerd's default Linux spec for ``container_id`` in ``namespace``: root, cwd /,
    default capabilities, RLIMIT_NOFILE 1024, no_new_privileges, the default mounts, masked
    and read-only paths, new pid/ipc/uts/mount/network namespaces, cgroup
    ``/<namespace>/<id>``, and the default device rules."""
    if not namespace:
        raise InvalidArgument("a namespace is required to build a spec")
    caps = list(DEFAULT_CAPS)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {"bounding": list(caps), "effective": list(caps),
                             "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": ROOTFS_PATH},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": default_devices()},
            "cgroupsPath": posixpath.join("/", namespace, container_id),
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


# -- image config ---------------------------------------------------------------------------

@dataclass
class ImageConfig:
    """What a container takes from an image config's ``config`` object."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> ImageConfig:
        """From an OCI or Docker image config blob (bounded; wrong types are
        InvalidArgument naming the field; absent or null fields are empty)."""
        if len(data) > MAX_IMAGE_CONFIG:
            raise InvalidArgument(f"image config of {len(data)} bytes exceeds the "
                                  f"{MAX_IMAGE_CONFIG}-byte limit")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise InvalidArgument(f"image config is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument("image config is not a JSON object")
        cfg = doc.get("config") or {}
        if not isinstance(cfg, dict):
            raise InvalidArgument("image config: config must be an object")

        def strings(key: str) -> list[str]:
            v = cfg.get(key)
            if v is None:
                return []
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise InvalidArgument(f"image config: {key} must be a list of strings")
            return list(v)

        def string(key: str) -> str:
            v = cfg.get(key)
            if v is None:
                return ""
            if not isinstance(v, str):
                raise InvalidArgument(f"image config: {key} must be a string")
            return v

        labels = cfg.get("Labels") or {}
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise InvalidArgument("image config: Labels must map strings to strings")
        return cls(strings("Entrypoint"), strings("Cmd"), strings("Env"), string("WorkingDir"),
                   string("User"), string("StopSignal"), dict(labels))


# -- options --------------------------------------------------------------------------------

def replace_or_append_env(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """containerd's replaceOrAppendEnvValues: ``KEY=VALUE`` overrides replace the default
    with the same key (in place) or are appended; a bare ``KEY`` removes it."""
    results = list(defaults)
    index = {e.partition("=")[0]: i for i, e in enumerate(results)}
    removed: set[int] = set()
    for value in overrides:
        key, sep, _ = value.partition("=")
        if not sep:
            if key in index:
                removed.add(index[key])
            continue
        if key in index:
            results[index[key]] = value
            removed.discard(index[key])
        else:
            index[key] = len(results)
            results.append(value)
    return [e for i, e in enumerate(results) if i not in removed]


def parse_mount(text: str) -> dict[str, Any]:
    """A mount in ctr's ``--mount`` syntax: comma-separated (CSV-quoted) ``key=value`` with
    keys ``type``, ``source``/``src``, ``destination``/``dst``, ``options`` (colon-separated),
    e.g. ``type=bind,src=/srv,dst=/data,options=rbind:ro``."""
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise InvalidArgument(f"mount {text!r}: {e}") from None
    if len(rows) != 1:
        raise InvalidArgument(f"mount {text!r}: expected one line of key=value fields")
    m: dict[str, Any] = {"destination": "", "type": "", "source": "", "options": []}
    for f in rows[0]:
        key, sep, val = f.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid mount specification {text!r}: expected key=val")
        if key == "type":
            m["type"] = val
        elif key in ("source", "src"):
            m["source"] = val
        elif key in ("destination", "dst"):
            m["destination"] = val
        elif key == "options":
            m["options"] = val.split(":")
        else:
            raise InvalidArgument(f"mount option {key!r} not supported (in {text!r})")
    if not m["destination"].startswith("/"):
        raise InvalidArgument(f"mount {text!r}: destination must be an absolute path")
    if not m["type"]:
        # ctr leaves it empty; runc then needs bind/rbind in the options
        if not {"bind", "rbind"} & set(m["options"]):
            raise InvalidArgument(f"mount {text!r}: type is required (or options=rbind)")
        m["type"] = "bind"
    if m["type"] == "bind" and not m["source"].startswith("/"):
        raise InvalidArgument(f"mount {text!r}: a bind mount needs an absolute source")
    return m


@dataclass
class RunOptions:
    """What a ``run`` asks for on top of the image.

    ``args`` replace the image's Cmd (its Entrypoint stays); ``env`` entries override the
    image's by key (bare ``KEY`` removes one); ``user`` replaces the image's USER;
    ``oom_score_adj`` is clamped by :func:`ctrd.oci.oom.restrict`.
    """

    args: Sequence[str] = ()
    env: Sequence[str] = ()
    cwd: str = ""
    user: str | None = None
    tty: bool = False
    hostname: str = ""
    net_host: bool = False
    mounts: Sequence[dict[str, Any]] = ()
    oom_score_adj: int | None = None
    readonly_rootfs: bool = False
    annotations: dict[str, str] = field(default_factory=dict)


def host_network_mounts() -> list[dict[str, Any]]:
    """The host's /etc/hosts and /etc/resolv.conf, read-only (WithHostHostsFile,
    WithHostResolvconf)."""
    return [{"destination": p, "type": "bind", "source": p, "options": ["rbind", "ro"]}
            for p in ("/etc/hosts", "/etc/resolv.conf")]


def _check_cwd(cwd: str) -> str:
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} must be an absolute path")
    return cwd


def generate(namespace: str, container_id: str, image: ImageConfig | None,
             rootfs: str | Rootfs | None, opts: RunOptions | None = None, *,
             host_hostname: str | None = None) -> dict[str, Any]:
    """The spec ``ctr run`` would build for ``container_id`` from ``image`` and ``opts``.

    ``rootfs`` is the container's root directory (mounted, read-only is enough) or a
    :class:`Rootfs`; it is read only to resolve users and groups, and None means "no rootfs
    to read" (a named user is then an error). ``host_hostname``: for ``net_host``, the
    HOSTNAME put in the environment (default: this host's).
    """
    opts = opts or RunOptions()
    spec = default_spec(namespace, container_id)
    proc = spec["process"]
    if opts.env:
        proc["env"] = replace_or_append_env([], opts.env)
    spec["mounts"].extend(dict(m) for m in opts.mounts)
    db = rootfs if isinstance(rootfs, Rootfs) or rootfs is None else Rootfs(rootfs)

    user = opts.user
    if image is not None:
        # the request's env over the image's: a bare KEY unsets one of the image's too
        # (ctr applies it to an empty list first, where it removes nothing)
        proc["env"] = replace_or_append_env(image.env or DEFAULT_UNIX_ENV, opts.env)
        proc["args"] = image.entrypoint + (list(opts.args) if opts.args else image.cmd)
        proc["cwd"] = image.working_dir or "/"
        if user is None:
            user = image.user
    elif opts.args:
        proc["args"] = list(opts.args)
    if not proc.get("args"):
        raise InvalidArgument("no command to run: the image has no Entrypoint or Cmd and "
                              "none was given")
    if opts.cwd:
        proc["cwd"] = _check_cwd(opts.cwd)
    else:
        _check_cwd(proc["cwd"])
    if opts.readonly_rootfs:
        spec["root"]["readonly"] = True
    if opts.tty:
        proc["terminal"] = True
        proc.setdefault("env", []).append("TERM=xterm")
    if opts.net_host:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "network"]
        spec["mounts"].extend(host_network_mounts())
        name = host_hostname if host_hostname is not None else os.uname().nodename
        proc["env"] = replace_or_append_env(proc.get("env", []), [f"HOSTNAME={name}"])
    if image is not None or user:
        proc["user"] = resolve_user(user or "", db).to_spec()
    if opts.hostname:
        spec["hostname"] = opts.hostname
    if opts.oom_score_adj is not None:
        proc["oomScoreAdj"] = oom.restrict(opts.oom_score_adj)
    if opts.annotations:
        spec["annotations"] = dict(opts.annotations)
    return spec


def exec_process(spec: dict[str, Any], args: Sequence[str], *, tty: bool = False,
                 cwd: str = "", env: Sequence[str] = (), user: str = "",
                 rootfs: str | Rootfs | None = None) -> dict[str, Any]:
    """The ``process`` of an exec in a container with ``spec``: the container's process
    with ``args``, ``terminal`` and optionally another cwd, extra env and user (as ``ctr
    tasks exec``)."""
    if not args:
        raise InvalidArgument("exec needs a command")
    proc = json.loads(json.dumps(spec.get("process") or {}))
    proc["args"] = list(args)
    proc["terminal"] = bool(tty)
    if not tty:
        proc.pop("consoleSize", None)
    if cwd:
        proc["cwd"] = _check_cwd(cwd)
    if env:
        proc["env"] = replace_or_append_env(proc.get("env", []), env)
    if user:
        proc["user"] = resolve_user(user, rootfs).to_spec()
    return proc
