"""Config file versions: containerd's 1 to 4, brought to the one shape ctrd decodes.

The shapes (containerd 2.3.4's ``cmd/containerd/server/config`` and the CRI plugins'
``ConfigMigration`` functions):

- 1: plugin sections by short name (``[plugins.cri]``); 2: by URI (``[plugins."io.containerd
  .grpc.v1.cri"]``), the CRI plugin's whole config in that one section (containerd 1.x);
- 3: the CRI config split into ``io.containerd.cri.v1.runtime`` (containers, CNI, runtimes),
  ``io.containerd.cri.v1.images`` (snapshotter, registry, pinned images) and
  ``io.containerd.grpc.v1.cri`` (the streaming server); ``cni.bin_dir`` became ``bin_dirs``;
- 4: the top-level ``[grpc]``/``[ttrpc]`` tables became the ``io.containerd.server.v1.grpc`` /
  ``...ttrpc`` plugin sections.

Contract:
- :func:`to_v3` turns a file's table (any version) into the version 3 shape, as containerd's
  migrations do (1 -> 2 -> 3 forward; 4 -> 3 by moving the server sections back to the
  top-level tables ctrd keeps): the shape ctrd decodes.
- :func:`fold_cri` turns the version 3 CRI sections into the one table ctrd's CRI plugin
  decodes (containerd 1.x's layout, :class:`ctrd.cri.config.CRIConfig`), with the renames that
  let messages name the key as the file spells it.
- :func:`split_cri` is the reverse, and :func:`to_v4` moves the server tables into their
  plugin sections: ``ctrd config default``/``migrate``/``dump`` print version 4, as
  containerd 2.3.4's do (a version 4 file is read by containerd 2.3 and later only).
- A table where a table must be, and an unknown version, are :class:`ConfigError` s naming the
  key; a version 3 section in a version 1 or 2 file too (containerd would merge it silently).
"""

from __future__ import annotations

import copy
from typing import Any

from ctrd import deprecation
from ctrd.config_keys import ConfigError, join_key
from ctrd.durations import check_duration

CRI = "io.containerd.grpc.v1.cri"
CRI_RUNTIME = "io.containerd.cri.v1.runtime"
CRI_IMAGES = "io.containerd.cri.v1.images"
SERVER_GRPC = "io.containerd.server.v1.grpc"
SERVER_TTRPC = "io.containerd.server.v1.ttrpc"
SERVER_DEBUG = "io.containerd.server.v1.debug"
SERVER_METRICS = "io.containerd.server.v1.metrics"
METRICS_GRPC = "io.containerd.metrics.v1.grpc-prometheus"
LATEST = 4  # the newest version ctrd reads (containerd 2.3's)
OUTPUT = 4  # what ctrd prints (config default/migrate/dump), as containerd 2.3.4 does

_V1_NAMES = {
    "cri": CRI, "cgroups": "io.containerd.monitor.v1.cgroups",
    "linux": "io.containerd.runtime.v1.linux", "scheduler": "io.containerd.gc.v1.scheduler",
    "bolt": "io.containerd.metadata.v1.bolt", "task": "io.containerd.runtime.v2.task",
    "opt": "io.containerd.internal.v1.opt", "restart": "io.containerd.internal.v1.restart",
    "tracing": "io.containerd.internal.v1.tracing",
    "otlp": "io.containerd.tracing.processor.v1.otlp",
    "aufs": "io.containerd.snapshotter.v1.aufs", "btrfs": "io.containerd.snapshotter.v1.btrfs",
    "devmapper": "io.containerd.snapshotter.v1.devmapper",
    "native": "io.containerd.snapshotter.v1.native",
    "overlayfs": "io.containerd.snapshotter.v1.overlayfs",
    "zfs": "io.containerd.snapshotter.v1.zfs",
}
# The keys of containerd 1.x's CRI section that moved (containerd's migrateConfig).
_SERVER_KEYS = ("disable_tcp_service", "stream_server_address", "stream_server_port",
                "stream_idle_timeout", "enable_tls_streaming", "x509_key_pair_streaming")
_IMAGE_KEYS = ("registry", "image_decryption", "max_concurrent_downloads",
               "image_pull_progress_timeout", "image_pull_with_sync_fs", "stats_collect_period")
_IMAGE_CONTAINERD_KEYS = ("snapshotter", "disable_snapshot_annotations",
                          "discard_unpacked_layers")
_DEFAULT_BIN_DIRS = ["/opt/cni/bin"]


def _plugin_key(uri: str) -> str:
    return join_key("plugins", uri)


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        kind = {str: "string", int: "integer", float: "float", bool: "boolean",
                list: "array"}.get(type(value), type(value).__name__)
        raise ConfigError(f"{where}: expected a table, got {kind}")
    return value


def file_version(data: dict) -> int:
    """The file's ``version`` (1 when absent); ConfigError for a non-integer or one ctrd does
    not read."""
    version = data.get("version", 1)
    if type(version) is not int:
        raise ConfigError(f"version = {version!r}: expected an integer")
    if not 1 <= version <= LATEST:
        raise ConfigError(f"version = {version}: ctrd reads config versions 1 to {LATEST} "
                          "(containerd 1.x writes 1 and 2, containerd 2.x 3 and 4)")
    return version


def v1_plugin_name(name: str) -> str:
    """A version 1 plugin name as a URI (containerd's v1MigratePluginName)."""
    if "." in name:
        return name
    if name in _V1_NAMES:
        return _V1_NAMES[name]
    if name.endswith("-service"):
        return "io.containerd.service.v1." + name
    return "io.containerd.grpc.v1." + name


def to_v2(data: dict) -> dict:
    """A version 1 or 2 file's table in the version 2 shape (plugins by URI); a new table."""
    version = file_version(data)
    out = copy.deepcopy(data)
    if version > 2:
        raise ConfigError(f"version = {version}: not a containerd 1.x config")
    _check_sections(out, version)
    plugins = out.get("plugins", {})
    if version == 1:
        out["plugins"] = {v1_plugin_name(k): v for k, v in plugins.items()}
        for key in ("disabled_plugins", "required_plugins"):
            if isinstance(out.get(key), list):
                out[key] = [v1_plugin_name(p) if isinstance(p, str) else p for p in out[key]]
    return out


def _check_sections(out: dict, version: int) -> None:
    plugins = _table(out.get("plugins", {}), "plugins")
    for uri, section in plugins.items():
        _table(section, _plugin_key(uri))
    if version <= 2:
        names = set(plugins) | {v1_plugin_name(k) for k in plugins}
        for uri in (CRI_RUNTIME, CRI_IMAGES, SERVER_GRPC, SERVER_TTRPC):
            if uri in names:
                raise ConfigError(f"{_plugin_key(uri)}: a version 3 section in a version "
                                  f"{version} config file; set version = 3 and move the "
                                  f"{CRI} keys into it, or remove it")


def to_v3(data: dict) -> dict:
    """``data`` (a parsed config file of any version) in the version 3 shape; a new table."""
    version = file_version(data)
    if version <= 2:
        out = to_v2(data)
        plugins = out.get("plugins", {})
        if CRI in plugins:
            plugins.update(split_cri(plugins[CRI]))
        out["version"] = 3
        return out
    out = copy.deepcopy(data)
    _check_sections(out, version)
    plugins = out.get("plugins", {})
    if version == 4:
        _from_v4(out, plugins)
    if plugins or "plugins" in data:
        out["plugins"] = plugins
    out["version"] = 3
    return out


def _from_v4(out: dict, plugins: dict) -> None:
    """Version 4's server sections as the top-level tables (containerd's serviceMigrate,
    reversed). In a version 4 file containerd reads no top-level ``[grpc]``/``[ttrpc]``: the
    section wins where both are there."""
    for uri, key in ((SERVER_GRPC, "grpc"), (SERVER_TTRPC, "ttrpc")):
        section = plugins.pop(uri, None)
        if section is not None:
            out[key] = section
    for uri, keys in ((SERVER_METRICS, ("address",)), (METRICS_GRPC, ("grpc_histogram",))):
        section = plugins.pop(uri, None)
        if isinstance(section, dict):
            metrics = out.setdefault("metrics", {})
            if isinstance(metrics, dict):
                metrics.update({k: section[k] for k in keys if k in section})


def to_v4(data: dict) -> dict:
    """A version 3 table in the version 4 shape containerd 2.3 writes (its
    ``serviceMigrate``): the top-level ``[grpc]`` and ``[ttrpc]`` tables (and ``[debug]``'s
    and ``[metrics]``' listener keys) become the ``io.containerd.server.v1.*`` plugin
    sections; a ttrpc address left empty is the gRPC one plus ``.ttrpc``, as containerd
    derives it. A section the file already has wins."""
    out = copy.deepcopy(data)
    plugins = out.setdefault("plugins", {})
    grpc = out.pop("grpc", None)
    grpc = grpc if isinstance(grpc, dict) else {}
    tcp_keys = {"tcp_address": "address", "tcp_tls_ca": "tls_ca", "tcp_tls_cert": "tls_cert",
                "tcp_tls_key": "tls_key", "tcp_tls_common_name": "tls_common_name"}
    tcp = {new: grpc.pop(old) for old, new in tcp_keys.items() if grpc.get(old)}
    if tcp:
        for k in ("max_recv_message_size", "max_send_message_size"):
            if k in grpc:
                tcp[k] = grpc[k]
        plugins.setdefault(SERVER_GRPC + "-tcp", tcp)
    if grpc:
        plugins.setdefault(SERVER_GRPC, grpc)
    ttrpc = out.pop("ttrpc", None)
    ttrpc = dict(ttrpc) if isinstance(ttrpc, dict) else {}
    if not ttrpc.get("address") and grpc.get("address"):
        ttrpc["address"] = grpc["address"] + ".ttrpc"
        for k in ("uid", "gid"):
            if not ttrpc.get(k) and grpc.get(k):
                ttrpc[k] = grpc[k]
    if ttrpc.get("address") or ttrpc.get("uid") or ttrpc.get("gid"):
        plugins.setdefault(SERVER_TTRPC, ttrpc)
    debug = out.get("debug")
    if isinstance(debug, dict) and debug.get("address"):
        plugins.setdefault(SERVER_DEBUG, {k: debug.pop(k) for k in ("address", "uid", "gid")
                                          if k in debug})
    metrics = out.get("metrics")
    if isinstance(metrics, dict):
        if "address" in metrics:
            plugins.setdefault(SERVER_METRICS, {"address": metrics.pop("address")})
        if "grpc_histogram" in metrics:
            plugins.setdefault(METRICS_GRPC, {"grpc_histogram": metrics.pop("grpc_histogram")})
        if not metrics:
            del out["metrics"]
    out["plugins"] = dict(sorted(plugins.items()))
    out["version"] = 4
    return out


def split_cri(src: dict) -> dict[str, dict]:
    """containerd 1.x's CRI table as the three version 3 sections (containerd's migration:
    the runtime section takes every key not moved elsewhere)."""
    src = copy.deepcopy(_table(src, _plugin_key(CRI)))
    _drop_removed_defaults(src)
    server = {k: src[k] for k in _SERVER_KEYS if k in src}
    images: dict[str, Any] = {k: src[k] for k in _IMAGE_KEYS if k in src}
    if "sandbox_image" in src:
        images["pinned_images"] = {"sandbox": src["sandbox_image"]}
    runtime = {k: v for k, v in src.items()
               if k not in _SERVER_KEYS and k not in _IMAGE_KEYS
               and k not in ("sandbox_image", "cni", "containerd")}
    cni = src.get("cni")
    if isinstance(cni, dict):
        new_cni = {k: v for k, v in cni.items() if k != "bin_dir"}
        if isinstance(cni.get("bin_dir"), str) and not new_cni.get("bin_dirs"):
            new_cni["bin_dirs"] = [d for d in cni["bin_dir"].split(":") if d]
        runtime["cni"] = new_cni
    elif cni is not None:
        runtime["cni"] = cni
    containerd = src.get("containerd")
    if isinstance(containerd, dict):
        for k in _IMAGE_CONTAINERD_KEYS:
            if k in containerd:
                images[k] = containerd[k]
        runtime["containerd"] = {k: v for k, v in containerd.items()
                                 if k not in _IMAGE_CONTAINERD_KEYS}
        for handler in (runtime["containerd"].get("runtimes") or {}).values():
            if isinstance(handler, dict) and "sandbox_mode" in handler:
                handler.setdefault("sandboxer", handler.pop("sandbox_mode"))
    elif containerd is not None:
        runtime["containerd"] = containerd
    return {CRI: server, CRI_RUNTIME: runtime, CRI_IMAGES: images}


# Keys containerd 2.0 removed (ctrd still reads them), with the value that means "unused".
_REMOVED = {("systemd_cgroup",): False, ("registry", "mirrors"): {},
            ("registry", "configs"): {}, ("registry", "auths"): {}}
_REMOVED_HANDLER = {"runtime_engine": "", "runtime_root": ""}


def _drop_removed_defaults(src: dict) -> None:
    """Leave out of a version 3 file the removed keys that only carry their default (a set
    one stays: ctrd reads it and reports it as deprecated)."""
    for keys, unused in _REMOVED.items():
        table = src
        for k in keys[:-1]:
            table = table.get(k) if isinstance(table.get(k), dict) else {}
        if keys[-1] in table and table[keys[-1]] == unused:
            del table[keys[-1]]
    runtimes = (src.get("containerd") or {}).get("runtimes") if isinstance(
        src.get("containerd"), dict) else None
    for handler in (runtimes or {}).values() if isinstance(runtimes, dict) else ():
        for k, unused in _REMOVED_HANDLER.items():
            if isinstance(handler, dict) and handler.get(k) == unused:
                handler.pop(k)


class Renames:
    """Key paths of the folded CRI table -> the paths the file spells (longest prefix wins)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def add(self, internal: str, file: str) -> None:
        self.pairs.append((internal, file))

    def apply(self, text: str) -> str:
        for internal, file in sorted(self.pairs, key=lambda p: -len(p[0])):
            if internal in text:
                # The longest match is the right one; a shorter prefix of it must not be
                # rewritten again inside the replacement.
                return text.replace(internal, file)
        return text


def fold_cri(plugins: dict, renames: Renames, deprecations: list[str]) -> dict:
    """Version 3's CRI sections (removed from ``plugins``) folded into ctrd's one CRI table;
    the folded table replaces ``plugins[CRI]``. Keys of the version 3 sections win over the
    same keys left in ``io.containerd.grpc.v1.cri`` (which containerd 2.3 migrates too)."""
    cri = copy.deepcopy(_table(plugins.get(CRI, {}), _plugin_key(CRI)))
    runtime = _table(plugins.pop(CRI_RUNTIME, {}), _plugin_key(CRI_RUNTIME))
    images = _table(plugins.pop(CRI_IMAGES, {}), _plugin_key(CRI_IMAGES))
    ipath, rpath, gpath = (_plugin_key(u) for u in (CRI, CRI_RUNTIME, CRI_IMAGES))

    def put(keys: tuple[str, ...], value: Any, file_path: str) -> None:
        table = cri
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):  # the file set a scalar where a table goes
                raise ConfigError(f"{_path(ipath, keys[:-1])}: expected a table")
        table[keys[-1]] = copy.deepcopy(value)
        renames.add(_path(ipath, keys), file_path)

    for k, v in runtime.items():
        where = join_key(rpath, k)
        if k == "containerd":
            for ck, cv in _table(v, where).items():
                put(("containerd", ck), cv, join_key(where, ck))
        elif k == "cni":
            if _fold_cni(_table(v, where), where, put):
                deprecations.append(deprecation.CRI_CNI_BIN_DIR)
        elif k in ("stats_collect_period", "stats_retention_period"):
            # Durations here (the images section's stats_collect_period is an integer):
            # checked as containerd does (empty, or Go duration text), not used (ctrd
            # collects stats on demand).
            if not isinstance(v, str):
                raise ConfigError(f"{where}: expected string, got {type(v).__name__} {v!r}")
            if v and (problem := check_duration(v)):
                raise ConfigError(f"{where} = {v!r}: {problem}")
        else:
            put((k,), v, where)
    for k, v in images.items():
        where = join_key(gpath, k)
        if k in _IMAGE_CONTAINERD_KEYS:
            put(("containerd", k), v, where)
        elif k == "pinned_images":
            pinned = dict(_table(v, where))
            if "sandbox" in pinned:
                put(("sandbox_image",), pinned.pop("sandbox"), join_key(where, "sandbox"))
            for pk, pv in pinned.items():
                put(("pinned_images", pk), pv, join_key(where, pk))
        else:
            put((k,), v, where)
    plugins[CRI] = cri
    return cri


def _fold_cni(cni: dict, where: str, put) -> bool:
    """Fold the runtime section's ``cni``; True when it uses the deprecated ``bin_dir``."""
    bin_dir = cni.get("bin_dir", "")
    bin_dirs = cni.get("bin_dirs")
    if bin_dirs is not None and (not isinstance(bin_dirs, list)
                                 or not all(isinstance(d, str) for d in bin_dirs)):
        raise ConfigError(f"{join_key(where, 'bin_dirs')}: expected an array of strings")
    if bin_dir and bin_dirs and bin_dirs != _DEFAULT_BIN_DIRS:
        raise ConfigError(f"{where}: `bin_dir` and `bin_dirs` cannot be set at the same time")
    for k, v in cni.items():
        if k == "bin_dirs":
            if not bin_dir:
                put(("cni", "bin_dir"), ":".join(v), join_key(where, k))
        elif k == "bin_dir" and not bin_dir:
            continue  # "" (containerd 2.x's default): bin_dirs says where
        else:
            put(("cni", k), v, join_key(where, k))
    return bool(bin_dir)


def cri_plugin_names(data: dict) -> None:
    """In ``disabled_plugins``/``required_plugins``, the version 3 CRI plugins stand for ctrd's
    one CRI plugin (it cannot run without either half)."""
    for key in ("disabled_plugins", "required_plugins"):
        if isinstance(data.get(key), list):
            data[key] = list(dict.fromkeys(CRI if p in (CRI_RUNTIME, CRI_IMAGES) else p
                                           for p in data[key]))


def _path(prefix: str, keys: tuple[str, ...]) -> str:
    for k in keys:
        prefix = join_key(prefix, k)
    return prefix
