"""A CNI client, as containerd's go-cni over libcni: network configs from a directory, plugin
chains run for ADD / DEL / CHECK, results parsed.

Configs (:func:`load_conf_dir`): the files ``*.conf``, ``*.conflist`` and ``*.json`` of
``conf_dir``, sorted by name, the first ``max_conf_num`` of them (0: all); a ``.conf`` /
``.json`` holds one plugin and becomes a list of one. An invalid file fails the load with an
error naming the file, as go-cni's does (it is never skipped silently). The N-th network
attaches as interface ``eth<N>`` (go-cni's prefix "eth"); like containerd's CRI, a loopback
network (``cni-loopback``, ifname ``lo``) comes first unless ``loopback=False``.

The client re-reads the directory when its contents change (file names, sizes, mtimes: a
scandir per call to :meth:`CNI.status` / :meth:`CNI.setup`), standing in for containerd's
fsnotify watcher: drop a conflist in and the network becomes ready.

Running a chain (libcni's ``AddNetworkList``): each plugin ``<bin_dir>/<type>`` is executed
with ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``
(``K=V;K=V``), ``CNI_PATH`` in its environment and its config on stdin, with ``name``,
``cniVersion`` and ``prevResult`` (the previous plugin's result) injected, and
``runtimeConfig`` built from the capability args the plugin declares in ``capabilities``
(portMappings, bandwidth, ipRanges, dns, ...). Every execution has a timeout (the plugin's
process group is killed). A failing plugin's JSON error ``{code, msg, details}`` becomes a
:class:`PluginError` carrying msg and details.

Results are cached as libcni does (``<cache_dir>/results/<network>-<id>-<ifname>``, same JSON
shape, so CNI tooling can read them): DEL and CHECK get the ADD result as ``prevResult``, and
a teardown without capability args reuses the ones ADD had (port mappings to remove).

Failure rules, for a caller that must never leak:

- :meth:`CNI.setup` that fails has already run DEL over what it started (best effort) before
  raising; calling :meth:`CNI.teardown` afterwards is still fine.
- :meth:`CNI.teardown` follows the CNI spec's DEL rules: it succeeds when ADD never ran and
  when the network namespace is gone (the path is then passed empty, as containerd does); it
  runs every plugin's DEL even when one fails (then raises the first failure, for a retry);
  it uses the config ADD used (from the cache) even if the conf dir changed since; a plugin
  binary that no longer exists is skipped with a warning (retrying could never succeed).
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import json
import logging
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ctrd.cri import netns as _netns
from ctrd.errdefs import (CtrdError, DeadlineExceeded, FailedPrecondition, InvalidArgument,
                          NotFound)

log = logging.getLogger("ctrd.cri.cni")

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CACHE_DIR = "/var/lib/cni"  # libcni's CacheDir
DEFAULT_PREFIX = "eth"
DEFAULT_TIMEOUT = 60.0
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
MAX_CONF_SIZE = 1 << 20
MAX_OUTPUT = 1 << 20
CACHE_KIND = "cniCacheV1"

#: The CRI NetworkReady condition's reason when there is no usable network (containerd's).
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"
ERR_NOT_INITIALIZED = "cni plugin not initialized"

#: containerd's loopback network (go-cni ``WithLoNetwork``).
LOOPBACK_CONFLIST = {"cniVersion": "0.3.1", "name": "cni-loopback",
                     "plugins": [{"type": "loopback"}]}

# libcni's utils: container IDs, network names, plugin types
_VALID_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


# --- errors ----------------------------------------------------------------------------

class _Verbatim:
    """Mixin: the message is exactly the detail (no ``": <kind>"`` suffix), because these
    texts are containerd's / libcni's own and are matched by clients and tests."""

    def _verbatim(self, text: str) -> None:
        self.detail = text
        self.args = (text,)


class NotInitialized(_Verbatim, FailedPrecondition):
    """No usable network config: ``cni plugin not initialized``, or the load error ending
    in it (``no network config found in <dir>: cni plugin not initialized``)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self._verbatim(f"{detail}: {ERR_NOT_INITIALIZED}" if detail else ERR_NOT_INITIALIZED)


class ConfigError(_Verbatim, InvalidArgument):
    """A network config file is invalid; the message names the file and the problem."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self._verbatim(detail)


class PluginError(_Verbatim, CtrdError):
    """A plugin failed: ``plugin type="bridge" name="net" failed (add): <msg>; <details>``.

    ``cni_code``/``msg``/``details`` are the plugin's JSON error (the CNI spec's codes: 1
    incompatible version, 4 invalid env, 7 invalid config, 11 try again later, ...);
    ``stderr`` is what it printed there (truncated)."""

    def __init__(self, plugin: str, network: str, command: str, msg: str, details: str = "",
                 cni_code: int | None = None, stderr: str = "") -> None:
        self.plugin, self.network, self.command = plugin, network, command
        self.msg, self.details, self.cni_code, self.stderr = msg, details, cni_code, stderr
        text = (f"plugin type={json.dumps(plugin)} name={json.dumps(network)} failed "
                f"({command.lower()}): {msg}" + (f"; {details}" if details else ""))
        super().__init__(text)
        self._verbatim(text)


# --- configs ---------------------------------------------------------------------------

@dataclass
class NetworkConfList:
    """One network: a named chain of plugin configs (libcni's NetworkConfigList)."""

    name: str
    cni_version: str
    plugins: list[dict]
    disable_check: bool = False
    source: str = ""           # the file it came from ("" when built in)
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes | str, source: str = "") -> "NetworkConfList":
        """Parse a ``.conflist``; :class:`ConfigError` names ``source`` and the problem."""
        where = f" {source}" if source else ""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"invalid CNI config list{where}: not JSON: {e}") from None
        return cls.from_obj(obj, source)

    @classmethod
    def from_obj(cls, obj: Any, source: str = "") -> "NetworkConfList":
        where = f" {source}" if source else ""

        def bad(why: str) -> ConfigError:
            return ConfigError(f"invalid CNI config list{where}: {why}")

        if not isinstance(obj, dict):
            raise bad(f"want a JSON object, got {type(obj).__name__}")
        name = obj.get("name")
        if name is None:
            raise bad("no name")
        if not isinstance(name, str) or not _VALID_NAME.match(name):
            raise bad(f"invalid network name {json.dumps(name)}: want "
                      f"{_VALID_NAME.pattern}")
        version = obj.get("cniVersion", "")
        if not isinstance(version, str):
            raise bad(f"invalid cniVersion type {type(version).__name__}")
        if version and not _VERSION.match(version):
            raise bad(f"invalid cniVersion {json.dumps(version)}")
        disable_check = obj.get("disableCheck", False)
        if not isinstance(disable_check, bool):
            raise bad(f"invalid disableCheck type {type(disable_check).__name__}")
        plugins = obj.get("plugins")
        if plugins is None:
            raise bad("no 'plugins' key")
        if not isinstance(plugins, list):
            raise bad(f"invalid 'plugins' type {type(plugins).__name__}")
        if not plugins:
            raise bad("no plugins in list")
        for i, p in enumerate(plugins):
            why = _plugin_problem(p)
            if why:
                raise bad(f"plugin {i}: {why}")
        return cls(name, version, [dict(p) for p in plugins], disable_check, source, obj)

    @classmethod
    def from_conf_bytes(cls, data: bytes | str, source: str = "") -> "NetworkConfList":
        """Parse a single-plugin ``.conf`` / ``.json`` and wrap it in a list of one, as
        libcni's ConfListFromConf does (the list takes its name and cniVersion)."""
        where = f" {source}" if source else ""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"invalid CNI config{where}: not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"invalid CNI config{where}: want a JSON object, "
                              f"got {type(obj).__name__}")
        if "plugins" in obj and "type" not in obj:
            raise ConfigError(f"invalid CNI config{where}: a config list (has 'plugins'): "
                              "name the file *.conflist")
        why = _plugin_problem(obj)
        if why:
            raise ConfigError(f"invalid CNI config{where}: {why}")
        return cls.from_obj({"name": obj.get("name"), "cniVersion": obj.get("cniVersion", ""),
                             "plugins": [obj]}, source)


def _plugin_problem(p: Any) -> str:
    if not isinstance(p, dict):
        return f"want a JSON object, got {type(p).__name__}"
    t = p.get("type")
    if t is None or t == "":
        return "missing 'type'"
    if not isinstance(t, str):
        return f"invalid 'type' {json.dumps(t)}: want a string"
    # A type is a file name in bin_dir: no paths ("../../bin/sh").
    if not _VALID_NAME.match(t) or ".." in t:
        return f"invalid plugin type {json.dumps(t)}: want a file name ({_VALID_NAME.pattern})"
    caps = p.get("capabilities", {})
    if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
        return "invalid 'capabilities': want an object of booleans"
    return ""


def conf_files(conf_dir: str) -> list[str]:
    """The config files of ``conf_dir`` libcni would consider, sorted (none if it does not
    exist)."""
    try:
        entries = list(os.scandir(conf_dir))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"failed to read config file: {conf_dir}: {e.strerror}") from None
    return sorted(e.path for e in entries
                  if os.path.splitext(e.name)[1] in CONF_EXTENSIONS and not e.is_dir())


def load_conf_dir(conf_dir: str, max_conf_num: int = 1) -> list[NetworkConfList]:
    """The networks of ``conf_dir`` (go-cni's ``loadFromConfDir``): the first
    ``max_conf_num`` config files by name (0: all). :class:`NotInitialized` when there is
    none, :class:`ConfigError` (naming the file) when one of them is invalid."""
    files = conf_files(conf_dir)
    if not files:
        raise NotInitialized(f"no network config found in {conf_dir}")
    out: list[NetworkConfList] = []
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CONF_SIZE + 1)
        except OSError as e:
            raise ConfigError(f"failed to read CNI config file {path}: {e.strerror}") from None
        if len(data) > MAX_CONF_SIZE:
            raise ConfigError(f"CNI config file {path} is larger than {MAX_CONF_SIZE} bytes")
        if path.endswith(".conflist"):
            out.append(NetworkConfList.from_bytes(data, path))
        else:
            out.append(NetworkConfList.from_conf_bytes(data, path))
        if len(out) == max_conf_num:
            break
    return out


# --- capability args and CNI_ARGS -------------------------------------------------------

@dataclass
class PortMapping:
    """A pod port mapping (the ``portMappings`` capability, read by the portmap plugin)."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_cni(self) -> dict:
        d = {"hostPort": self.host_port, "containerPort": self.container_port,
             "protocol": self.protocol.lower()}
        if self.host_ip:
            d["hostIP"] = self.host_ip
        return d


@dataclass
class BandWidth:
    """The ``bandwidth`` capability (bits per second, bits), read by the bandwidth plugin."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_cni(self) -> dict:
        return {"ingressRate": self.ingress_rate, "ingressBurst": self.ingress_burst,
                "egressRate": self.egress_rate, "egressBurst": self.egress_burst}


@dataclass
class IPRange:
    subnet: str
    range_start: str = ""
    range_end: str = ""
    gateway: str = ""

    def to_cni(self) -> dict:
        d = {"subnet": self.subnet}
        for k, v in (("rangeStart", self.range_start), ("rangeEnd", self.range_end),
                     ("gateway", self.gateway)):
            if v:
                d[k] = v
        return d


def capability_args(port_mappings: Sequence[PortMapping] = (), bandwidth: BandWidth | None = None,
                    dns_servers: Sequence[str] = (), dns_searches: Sequence[str] = (),
                    dns_options: Sequence[str] = (), ip_ranges: Sequence[Sequence[IPRange]] = (),
                    pod_annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The capability args containerd's CRI passes for a pod (only the ones that are set):
    ``portMappings``, ``bandwidth``, ``dns``, ``ipRanges`` and the pod's annotations
    (``io.kubernetes.cri.pod-annotations``)."""
    caps: dict[str, Any] = {}
    if port_mappings:
        caps["portMappings"] = [p.to_cni() for p in port_mappings]
    if bandwidth is not None:
        caps["bandwidth"] = bandwidth.to_cni()
    if dns_servers or dns_searches or dns_options:
        caps["dns"] = {"servers": list(dns_servers), "searches": list(dns_searches),
                       "options": list(dns_options)}
    if ip_ranges:
        caps["ipRanges"] = [[r.to_cni() for r in rs] for rs in ip_ranges]
    if pod_annotations is not None:
        caps["io.kubernetes.cri.pod-annotations"] = dict(pod_annotations)
    return caps


def pod_args(sandbox_id: str, namespace: str, name: str, uid: str) -> dict[str, str]:
    """The CNI_ARGS containerd passes for a pod (its ``toCNILabels``)."""
    return {"K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name,
            "K8S_POD_INFRA_CONTAINER_ID": sandbox_id, "K8S_POD_UID": uid,
            "IgnoreUnknown": "1"}


# --- results ---------------------------------------------------------------------------

@dataclass
class IPConfig:
    address: str                 # CIDR, "10.88.0.5/16"
    gateway: str = ""
    interface: int | None = None  # index into the result's interfaces

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass
class Route:
    dst: str
    gw: str = ""


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class NetworkResult:
    """One network's final result (the last plugin's), normalised to CNI 1.0's shape."""

    network: str
    ifname: str
    cni_version: str
    interfaces: list[Interface]
    ips: list[IPConfig]
    routes: list[Route]
    dns: DNS
    raw: dict


@dataclass
class InterfaceConfig:
    ips: list[IPConfig] = field(default_factory=list)
    mac: str = ""
    sandbox: str = ""


@dataclass
class SetupResult:
    """go-cni's Result: every network's interfaces by name (an IP naming no interface goes
    to the default one, ``eth0``), all DNS and routes, and each network's result."""

    interfaces: dict[str, InterfaceConfig]
    dns: list[DNS]
    routes: list[Route]
    networks: list[NetworkResult]
    default_ifname: str = "eth0"

    def pod_ips(self, ip_pref: str = "") -> tuple[str, list[str]]:
        """(primary IP, additional IPs) of the default interface, as containerd's
        ``selectPodIPs``: ``ip_pref`` "" / "ipv4" takes the first IPv4 as primary, "ipv6"
        the first IPv6, "cni" the plugin's order. ("", []) when it has no IP."""
        ips = [c.ip for c in self.interfaces.get(self.default_ifname, InterfaceConfig()).ips]
        if len(ips) <= 1:
            return (ips[0] if ips else ""), []
        want = {"ipv6": 6, "cni": 0}.get(ip_pref, 4)
        if want:
            for i, ip in enumerate(ips):
                if ipaddress.ip_address(ip).version == want:
                    return ip, ips[:i] + ips[i + 1:]
        return ips[0], ips[1:]


def parse_result(obj: Any) -> tuple[list[Interface], list[IPConfig], list[Route], DNS]:
    """A plugin's ADD result (any CNI version: 0.1/0.2's ``ip4``/``ip6``, 0.3+'s
    ``interfaces``/``ips``), checked. ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"want a JSON object, got {type(obj).__name__}")
    interfaces: list[Interface] = []
    ips: list[IPConfig] = []
    routes: list[Route] = []
    if "ip4" in obj or "ip6" in obj:  # 0.1.0 / 0.2.0
        for key in ("ip4", "ip6"):
            c = obj.get(key)
            if c is None:
                continue
            if not isinstance(c, dict) or not isinstance(c.get("ip"), str):
                raise ValueError(f"{key}: want an object with 'ip'")
            ips.append(IPConfig(_cidr(c["ip"], f"{key}.ip"), _ip(c.get("gateway"), key)))
            routes += _routes(c.get("routes"))
    else:
        raw_ifs = obj.get("interfaces") or []
        if not isinstance(raw_ifs, list):
            raise ValueError("interfaces: want a list")
        for i, itf in enumerate(raw_ifs):
            if not isinstance(itf, dict) or not isinstance(itf.get("name", ""), str):
                raise ValueError(f"interfaces[{i}]: want an object with a name")
            interfaces.append(Interface(itf.get("name", ""), str(itf.get("mac", "")),
                                        str(itf.get("sandbox", ""))))
        raw_ips = obj.get("ips") or []
        if not isinstance(raw_ips, list):
            raise ValueError("ips: want a list")
        for i, c in enumerate(raw_ips):
            if not isinstance(c, dict) or not isinstance(c.get("address"), str):
                raise ValueError(f"ips[{i}]: want an object with an address")
            idx = c.get("interface")
            if idx is not None and (not isinstance(idx, int) or isinstance(idx, bool)
                                    or not 0 <= idx < len(interfaces)):
                raise ValueError(f"ips[{i}]: interface {idx!r} is not one of the "
                                 f"{len(interfaces)} interfaces")
            ips.append(IPConfig(_cidr(c["address"], f"ips[{i}]"),
                                _ip(c.get("gateway"), f"ips[{i}]"), idx))
        routes = _routes(obj.get("routes"))
    d = obj.get("dns") or {}
    if not isinstance(d, dict):
        raise ValueError("dns: want an object")
    dns = DNS([str(x) for x in d.get("nameservers") or []], str(d.get("domain") or ""),
              [str(x) for x in d.get("search") or []], [str(x) for x in d.get("options") or []])
    return interfaces, ips, routes, dns


def _cidr(v: str, where: str) -> str:
    try:
        return str(ipaddress.ip_interface(v))
    except ValueError:
        raise ValueError(f"{where}: invalid address {v!r}") from None


def _ip(v: Any, where: str) -> str:
    if v in (None, ""):
        return ""
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{where}: invalid gateway {v!r}") from None


def _routes(raw: Any) -> list[Route]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("routes: want a list")
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
            raise ValueError(f"routes[{i}]: want an object with dst")
        out.append(Route(r["dst"], str(r.get("gw") or "")))
    return out


# --- the client ------------------------------------------------------------------------

@dataclass
class Network:
    """A network attached as ``ifname``."""

    config: NetworkConfList
    ifname: str


@dataclass
class NetworkStatus:
    """For the CRI's NetworkReady condition: ``ready``, containerd's ``reason`` and
    ``message`` when not, and the last load error (containerd's ``lastCNILoadStatus``)."""

    ready: bool
    reason: str = ""
    message: str = ""
    last_load_error: str = ""


class CNI:
    """A CNI client over ``conf_dir`` and the plugins in ``bin_dirs``. Thread-safe: setup and
    teardown of different pods may run concurrently (the plugins lock what they share)."""

    def __init__(self, bin_dirs: str | Sequence[str] = DEFAULT_BIN_DIR,
                 conf_dir: str = DEFAULT_CONF_DIR, max_conf_num: int = 1,
                 cache_dir: str = DEFAULT_CACHE_DIR, prefix: str = DEFAULT_PREFIX,
                 loopback: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bin_dirs = [bin_dirs] if isinstance(bin_dirs, str) else list(bin_dirs)
        self.conf_dir = conf_dir
        self.max_conf_num = max_conf_num
        self.cache_dir = cache_dir
        self.prefix = prefix
        self.loopback = loopback
        self.timeout = timeout
        self._lock = threading.Lock()
        self._networks: list[Network] = []
        self._load_error: CtrdError | None = NotInitialized()
        self._fingerprint: object = None

    # -- configs --

    def load(self) -> None:
        """(Re)read ``conf_dir`` now. On failure no network is usable (as go-cni's Load
        resets first) and the error is raised and remembered for :meth:`status`."""
        fp = self._dir_fingerprint()
        with self._lock:
            self._load_locked(fp)
            if self._load_error is not None:
                raise self._load_error

    def _load_locked(self, fp: object) -> None:
        self._fingerprint = fp
        self._networks = []
        try:
            confs = load_conf_dir(self.conf_dir, self.max_conf_num)
        except CtrdError as e:
            self._load_error = e
            log.warning("failed to load cni config: %s", e)
            return
        nets = []
        if self.loopback:
            nets.append(Network(NetworkConfList.from_obj(LOOPBACK_CONFLIST), "lo"))
        nets += [Network(c, f"{self.prefix}{i}") for i, c in enumerate(confs)]
        self._networks, self._load_error = nets, None

    def _dir_fingerprint(self) -> object:
        out = []
        try:
            for e in os.scandir(self.conf_dir):
                if os.path.splitext(e.name)[1] in CONF_EXTENSIONS:
                    try:
                        st = e.stat()
                    except OSError:
                        continue
                    out.append((e.name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError as e:
            return ("error", e.errno)
        return tuple(sorted(out))

    def _sync(self) -> list[Network]:
        fp = self._dir_fingerprint()
        with self._lock:
            if fp != self._fingerprint:
                self._load_locked(fp)
            return list(self._networks)

    def networks(self) -> list[Network]:
        """The networks in use (re-read if ``conf_dir`` changed)."""
        return self._sync()

    def status(self) -> NetworkStatus:
        """Whether a network config is loaded: the CRI's NetworkReady condition."""
        self._sync()
        with self._lock:
            err = self._load_error
        if err is None:
            return NetworkStatus(True)
        return NetworkStatus(False, NETWORK_NOT_READY_REASON,
                             f"Network plugin returns error: {ERR_NOT_INITIALIZED}", str(err))

    # -- operations --

    def setup(self, sandbox_id: str, netns_path: str, *, args: Mapping[str, str] | None = None,
              capability_args: Mapping[str, Any] | None = None,
              labels: Mapping[str, str] | None = None) -> SetupResult:
        """ADD every network for the pod ``sandbox_id`` in the namespace at ``netns_path``.

        ``labels`` then ``args`` become CNI_ARGS (containerd passes :func:`pod_args` as
        labels); ``capability_args`` feed the plugins' runtimeConfig. On failure, what was
        started is torn down again before the error propagates (:class:`NotInitialized`
        without a config, :class:`PluginError`, :class:`~ctrd.errdefs.DeadlineExceeded`)."""
        nets = self._sync()
        if not any(n.ifname != "lo" for n in nets):
            with self._lock:
                raise self._load_error or NotInitialized()
        cni_args = _merge_args(labels, args)
        _check_id(sandbox_id)
        if not netns_path:
            raise InvalidArgument("setup needs a network namespace path")
        caps = dict(capability_args or {})
        results: list[NetworkResult] = []
        started: list[Network] = []
        try:
            for net in nets:
                started.append(net)
                results.append(self._add_list(net, sandbox_id, netns_path, cni_args, caps))
        except BaseException:
            for net in reversed(started):
                try:
                    self._del_list(net.config, net.ifname, sandbox_id, netns_path, cni_args,
                                   caps, None)
                except Exception as e:  # the ADD error is the one to report
                    log.warning("cleanup after failed cni setup of %s: %s", sandbox_id, e)
            raise
        return self._combine(results)

    def teardown(self, sandbox_id: str, netns_path: str = "", *,
                 args: Mapping[str, str] | None = None,
                 capability_args: Mapping[str, Any] | None = None,
                 labels: Mapping[str, str] | None = None) -> None:
        """DEL every network of the pod, in reverse order (see the module doc's rules).
        ``netns_path`` may be empty or gone. Idempotent."""
        _check_id(sandbox_id)
        cni_args = _merge_args(labels, args)
        if netns_path and not _netns.is_pinned(netns_path, "net"):
            netns_path = ""  # gone: plugins then only release what lives outside it
        nets = [(n.config, n.ifname) for n in self._sync()]
        cached = self._cached_for(sandbox_id)
        seen = set()
        todo = []
        for conf, ifname in nets:
            entry = cached.get((conf.name, ifname))
            if entry is not None and entry[0] is not None:
                conf = entry[0]  # DEL with the config ADD used
            todo.append((conf, ifname, entry[1] if entry else None))
            seen.add((conf.name, ifname))
        for key, (conf, _) in cached.items():  # networks since removed from conf_dir
            if key not in seen and conf is not None:
                todo.append((conf, key[1], cached[key][1]))
        errors: list[BaseException] = []
        for conf, ifname, cached_caps in reversed(todo):
            caps = dict(capability_args) if capability_args is not None else (cached_caps or {})
            try:
                self._del_list(conf, ifname, sandbox_id, netns_path, cni_args, caps,
                               errors)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def check(self, sandbox_id: str, netns_path: str, *, args: Mapping[str, str] | None = None,
              capability_args: Mapping[str, Any] | None = None,
              labels: Mapping[str, str] | None = None) -> None:
        """CHECK every network (networks older than CNI 0.4.0, which has no CHECK, and those
        with ``disableCheck`` are skipped).
        Raises :class:`PluginError` when a plugin finds the pod's network broken."""
        nets = self._sync()
        if not any(n.ifname != "lo" for n in nets):
            with self._lock:
                raise self._load_error or NotInitialized()
        _check_id(sandbox_id)
        cni_args = _merge_args(labels, args)
        caps = dict(capability_args or {})
        for net in nets:
            conf = net.config
            if conf.disable_check or not _version_ge(conf.cni_version, (0, 4, 0)):
                # CHECK exists from CNI 0.4.0 on; libcni refuses older lists, which would
                # make containerd's own loopback network (0.3.1) fail every check.
                continue
            entry = self._read_cache(conf.name, sandbox_id, net.ifname)
            prev = entry.get("result") if entry else None
            if prev is None:
                raise NotFound(f"network {json.dumps(conf.name)} of {sandbox_id} has no "
                               "cached result (was it set up?)")
            for p in conf.plugins:
                self._exec(p, conf, "CHECK", sandbox_id, netns_path, net.ifname, cni_args,
                           caps, prev)

    # -- chains --

    def _add_list(self, net: Network, cid: str, netns_path: str, cni_args: list[tuple[str, str]],
                  caps: dict) -> NetworkResult:
        conf, prev = net.config, None
        for p in conf.plugins:
            out = self._exec(p, conf, "ADD", cid, netns_path, net.ifname, cni_args, caps, prev)
            try:
                prev = json.loads(out)
                parse_result(prev)
            except (ValueError, UnicodeDecodeError) as e:
                raise PluginError(p["type"], conf.name, "ADD",
                                  f"invalid result: {e}",
                                  f"output {out[:200]!r}") from None
        assert prev is not None
        interfaces, ips, routes, dns = parse_result(prev)
        self._write_cache(conf, net.ifname, cid, cni_args, caps, prev)
        return NetworkResult(conf.name, net.ifname, conf.cni_version, interfaces, ips, routes,
                             dns, prev)

    def _del_list(self, conf: NetworkConfList, ifname: str, cid: str, netns_path: str,
                  cni_args: list[tuple[str, str]], caps: dict,
                  errors: list[BaseException] | None) -> None:
        prev = None
        if _version_ge(conf.cni_version, (0, 4, 0)):
            entry = self._read_cache(conf.name, cid, ifname)
            prev = entry.get("result") if entry else None
        failed: list[BaseException] = []
        for p in reversed(conf.plugins):
            try:
                self._exec(p, conf, "DEL", cid, netns_path, ifname, cni_args, caps, prev)
            except _MissingPlugin as e:
                log.warning("cni teardown of %s: %s: skipped", cid, e)
            except PluginError as e:
                # go-cni ignores these (a gone namespace, a network already released)
                if "not found" in e.msg or (not netns_path and "no such file or directory"
                                            in e.msg.lower()):
                    log.info("cni teardown of %s: %s (ignored)", cid, e)
                    continue
                failed.append(e)
            except Exception as e:
                failed.append(e)
        if failed:
            if errors is not None:
                errors.extend(failed)
                return
            raise failed[0]
        self._remove_cache(conf.name, cid, ifname)

    def _exec(self, plugin: dict, conf: NetworkConfList, command: str, cid: str,
              netns_path: str, ifname: str, cni_args: list[tuple[str, str]], caps: dict,
              prev: dict | None) -> bytes:
        ptype = plugin["type"]
        path = self._find(ptype)
        if path is None:
            raise _MissingPlugin(ptype, conf.name, command,
                                 f"failed to find plugin {json.dumps(ptype)} in path "
                                 f"{self.bin_dirs}")
        stdin = json.dumps(_build_conf(plugin, conf, prev, caps)).encode()
        env = dict(os.environ)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns_path,
                    "CNI_IFNAME": ifname, "CNI_ARGS": ";".join(f"{k}={v}" for k, v in cni_args),
                    "CNI_PATH": os.pathsep.join(self.bin_dirs)})
        out, err, rc = _run(path, stdin, env, self.timeout, ptype, conf.name, command)
        if err:
            log.debug("cni plugin %s %s stderr: %s", ptype, command, err[:2000])
        if rc != 0:
            raise _plugin_failure(ptype, conf.name, command, rc, out, err)
        return out

    def _find(self, ptype: str) -> str | None:
        for d in self.bin_dirs:
            p = os.path.join(d, ptype)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        return None

    def _combine(self, results: list[NetworkResult]) -> SetupResult:
        default = f"{self.prefix}0"
        ifs: dict[str, InterfaceConfig] = {default: InterfaceConfig()}
        dns: list[DNS] = []
        routes: list[Route] = []
        for r in results:
            for itf in r.interfaces:
                ifs[itf.name] = InterfaceConfig([], itf.mac, itf.sandbox)
            for c in r.ips:
                name = r.interfaces[c.interface].name if c.interface is not None else default
                ifs.setdefault(name, InterfaceConfig()).ips.append(c)
            dns.append(r.dns)
            routes += r.routes
        return SetupResult(ifs, dns, routes, results, default)

    # -- the result cache (libcni's format) --

    def _cache_path(self, net: str, cid: str, ifname: str) -> str:
        return os.path.join(self.cache_dir, "results", f"{net}-{cid}-{ifname}")

    def _write_cache(self, conf: NetworkConfList, ifname: str, cid: str,
                     cni_args: list[tuple[str, str]], caps: dict, result: dict) -> None:
        entry = {"kind": CACHE_KIND, "containerId": cid,
                 "config": base64.b64encode(json.dumps(conf.raw).encode()).decode(),
                 "ifName": ifname, "networkName": conf.name,
                 "cniArgs": [list(a) for a in cni_args] or None,
                 "capabilityArgs": caps or None, "result": result}
        entry = {k: v for k, v in entry.items() if v is not None}
        path = self._cache_path(conf.name, cid, ifname)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(entry, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _read_cache(self, net: str, cid: str, ifname: str) -> dict | None:
        try:
            with open(self._cache_path(net, cid, ifname), "rb") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND:
            return None
        return entry

    def _remove_cache(self, net: str, cid: str, ifname: str) -> None:
        try:
            os.unlink(self._cache_path(net, cid, ifname))
        except FileNotFoundError:
            pass

    def _cached_for(self, cid: str) -> dict[tuple[str, str], tuple[NetworkConfList | None,
                                                                    dict | None]]:
        """Cached ADDs of container ``cid``: (network, ifname) -> (config, capability args)."""
        out: dict = {}
        d = os.path.join(self.cache_dir, "results")
        try:
            names = os.listdir(d)
        except OSError:
            return out
        marker = f"-{cid}-"
        for name in names:
            if marker not in name:
                continue
            try:
                with open(os.path.join(d, name), "rb") as f:
                    entry = json.load(f)
                if entry.get("kind") != CACHE_KIND or entry.get("containerId") != cid:
                    continue
                conf = None
                if entry.get("config"):
                    conf = NetworkConfList.from_bytes(base64.b64decode(entry["config"]))
                caps = entry.get("capabilityArgs")
                out[(entry["networkName"], entry["ifName"])] = (
                    conf, caps if isinstance(caps, dict) else None)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, CtrdError) as e:
                log.warning("ignoring unreadable cni cache file %s: %s", name, e)
        return out


class _MissingPlugin(PluginError):
    def __init__(self, plugin: str, network: str, command: str, msg: str) -> None:
        super().__init__(plugin, network, command, msg)


# --- helpers ---------------------------------------------------------------------------

def _check_id(cid: str) -> None:
    if not cid:
        raise InvalidArgument("missing container ID")
    if not _VALID_NAME.match(cid):
        raise InvalidArgument(f"invalid characters in container ID {json.dumps(cid)}")


def _merge_args(*maps: Mapping[str, str] | None) -> list[tuple[str, str]]:
    merged: dict[str, str] = {}
    for m in maps:
        for k, v in (m or {}).items():
            k, v = str(k), str(v)
            if not k or any(c in k for c in "=;") or ";" in v or "\0" in k + v:
                raise InvalidArgument(f"invalid CNI arg {k!r}={v!r}: no '=' in keys, no ';'")
            merged[k] = v
    return list(merged.items())


def _version_ge(v: str, want: tuple[int, int, int]) -> bool:
    m = _VERSION.match(v or "0.1.0")
    return bool(m) and tuple(int(x) for x in m.groups()) >= want


def _build_conf(plugin: dict, conf: NetworkConfList, prev: dict | None, caps: dict) -> dict:
    out = dict(plugin)
    out["name"] = conf.name
    out["cniVersion"] = conf.cni_version
    if prev is not None:
        out["prevResult"] = prev
    declared = plugin.get("capabilities") or {}
    rc = {k: caps[k] for k, on in declared.items() if on and k in caps}
    if rc:
        out["runtimeConfig"] = rc
    return out


def _run(path: str, stdin: bytes, env: dict, timeout: float, ptype: str, net: str,
         command: str) -> tuple[bytes, str, int]:
    """Run a plugin: (stdout, stderr text, exit code). Kills its process group on timeout."""
    for attempt in range(6):
        try:
            proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, close_fds=True,
                                    start_new_session=True)
            break
        except OSError as e:
            if e.errno == errno.ETXTBSY and attempt < 5:  # libcni retries "text file busy"
                time.sleep(0.2)
                continue
            raise PluginError(ptype, net, command,
                              f"failed to execute {path}: {e.strerror}") from None
    try:
        out, err = _communicate(proc, stdin, time.monotonic() + timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise DeadlineExceeded(f"plugin type={json.dumps(ptype)} name={json.dumps(net)} "
                               f"({command.lower()}) did not finish in {timeout:g}s: "
                               "killed") from None
    except _TooMuchOutput:
        _kill_group(proc)
        raise PluginError(ptype, net, command,
                          f"printed more than {MAX_OUTPUT} bytes: killed") from None
    except BaseException:
        _kill_group(proc)
        raise
    return out, err.decode(errors="replace").strip(), proc.returncode


class _TooMuchOutput(Exception):
    pass


def _communicate(proc: subprocess.Popen, data: bytes, deadline: float) -> tuple[bytes, bytes]:
    """Popen.communicate with a cap on what is kept in memory (a plugin printing without
    end is killed, not buffered) and one deadline for the I/O and the exit."""
    assert proc.stdin and proc.stdout and proc.stderr
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    pos = 0
    with selectors.DefaultSelector() as sel:
        if data:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        for f in bufs:
            sel.register(f, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in sel.select(left):
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        pos += os.write(proc.stdin.fileno(), data[pos:pos + 65536])
                    except BrokenPipeError:  # it does not read its config: its business
                        pos = len(data)
                    if pos >= len(data):
                        sel.unregister(f)
                        proc.stdin.close()
                    continue
                chunk = os.read(f.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    sel.unregister(f)
                    continue
                bufs[f] += chunk  # type: ignore[index]
                if len(bufs[f]) > MAX_OUTPUT:  # type: ignore[index]
                    raise _TooMuchOutput()
    proc.wait(max(deadline - time.monotonic(), 0.001))
    proc.stdout.close()
    proc.stderr.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr])


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the plugin and everything in its process group (it runs in its own session),
    reap it, close our ends of its pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


def _plugin_failure(ptype: str, net: str, command: str, rc: int, out: bytes,
                    err: str) -> PluginError:
    # libcni's RawExec.pluginErr: the JSON error on stdout, else stderr, else the exit
    stderr = err[:4000]
    if not out.strip():
        if err:
            return PluginError(ptype, net, command, f"netplugin failed: {json.dumps(err[:1000])}",
                               stderr=stderr)
        return PluginError(ptype, net, command,
                           f"netplugin failed with no error message: exit status {rc}"
                           if rc > 0 else f"netplugin killed by signal {-rc}", stderr=stderr)
    try:
        e = json.loads(out)
        if not isinstance(e, dict):
            raise ValueError("not an object")
        msg = e.get("msg")
        details = e.get("details") or ""
        code = e.get("code")
        if not isinstance(msg, str):
            raise ValueError("no msg")
        return PluginError(ptype, net, command, msg, str(details),
                           code if isinstance(code, int) else None, stderr)
    except ValueError as pe:
        return PluginError(ptype, net, command,
                           f"netplugin failed but error parsing its diagnostic message "
                           f"{out[:500].decode(errors='replace')!r}: {pe}", stderr=stderr)


def describe(networks: Iterable[Network]) -> list[dict]:
    """The loaded networks as plain data (for verbose status / debugging)."""
    return [{"name": n.config.name, "ifname": n.ifname, "cniVersion": n.config.cni_version,
             "source": n.config.source, "plugins": [p.get("type") for p in n.config.plugins]}
            for n in networks]
