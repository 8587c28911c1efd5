"""The CRI plugin's configuration, in containerd 1.6's schema (``[plugins."io.containerd.grpc.v1.cri"]``).

An existing containerd 1.6 config works unchanged: the keys below are containerd's, with its
defaults; keys ctrd does not implement are accepted with a warning (the config loader warns on
unknown keys and names them). Durations are Go duration strings as in containerd ("4h0m0s").
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrd.config import setting
from ctrd.durations import check_duration

# Config sections are built at every daemon start: dataclasses without the generated
# __repr__/__eq__ cost less to create (a few ms for these), and nothing compares or
# prints them (`ctrd config dump` encodes them).
_section = dataclass(repr=False, eq=False)


def _duration_or_empty(v: str) -> str | None:
    """containerd's check of stream_idle_timeout: empty (its default) or a Go duration."""
    return None if v == "" else check_duration(v)


@_section
class RuntimeHandler:
    """``[...cri.containerd.runtimes.<handler>]``: a RuntimeClass handler."""

    runtime_type: str = setting("io.containerd.runc.v2", doc="runtime name of the shim")
    runtime_engine: str = setting("", doc="deprecated in containerd; accepted, unused")
    runtime_root: str = setting("", doc="deprecated in containerd; accepted, unused")
    runtime_path: str = setting("", doc="shim binary path (instead of resolving runtime_type)")
    options: dict = setting(default_factory=dict,
                            doc="runtime options (runc: BinaryName, Root, SystemdCgroup, ...)")
    privileged_without_host_devices: bool = setting(False)
    base_runtime_spec: str = setting("", doc="a JSON OCI spec file to start containers from")
    cni_conf_dir: str = setting("", doc="per-handler CNI config dir (empty: the global one)")
    cni_max_conf_num: int = setting(0)
    pod_annotations: list[str] = setting(default_factory=list,
                                         doc="pod annotations (globs) passed to the runtime")
    container_annotations: list[str] = setting(default_factory=list)


def _default_runtimes() -> dict[str, RuntimeHandler]:
    return {"runc": RuntimeHandler()}


@_section
class ContainerdSection:
    """``[...cri.containerd]``."""

    snapshotter: str = setting("overlayfs")
    default_runtime_name: str = setting("runc")
    runtimes: dict[str, RuntimeHandler] = setting(default_factory=_default_runtimes)
    no_pivot: bool = setting(False)
    disable_snapshot_annotations: bool = setting(True)
    discard_unpacked_layers: bool = setting(False)
    ignore_rdt_not_enabled_errors: bool = setting(False)


@_section
class CNISection:
    """``[...cri.cni]``."""

    bin_dir: str = setting("/opt/cni/bin", doc="where the CNI plugin binaries are")
    conf_dir: str = setting("/etc/cni/net.d", doc="where the CNI network configs are")
    max_conf_num: int = setting(1, doc="how many config files to load (0: all)")
    conf_template: str = setting("", doc="template to write a config from the pod CIDR")
    ip_pref: str = setting("", doc="which IP becomes the pod's primary: ipv4, ipv6, cni")


@_section
class AuthConfig:
    """Registry credentials (``configs.<host>.auth``, ``auths.<host>``)."""

    username: str = setting("")
    password: str = setting("")
    auth: str = setting("", doc="base64 of username:password")
    identitytoken: str = setting("")


@_section
class TLSConfig:
    """``configs.<host>.tls``."""

    insecure_skip_verify: bool = setting(False)
    ca_file: str = setting("")
    cert_file: str = setting("")
    key_file: str = setting("")


@_section
class RegistryHostConfig:
    """``[...cri.registry.configs.<host>]``."""

    auth: AuthConfig | None = setting(None)
    tls: TLSConfig | None = setting(None)


@_section
class Mirror:
    """``[...cri.registry.mirrors.<host>]``."""

    endpoint: list[str] = setting(default_factory=list)


@_section
class RegistrySection:
    """``[...cri.registry]``: ``config_path`` (hosts.toml dirs) or the older mirrors/configs."""

    config_path: str = setting("", doc="directory of <host>/hosts.toml files")
    mirrors: dict[str, Mirror] = setting(default_factory=dict)
    configs: dict[str, RegistryHostConfig] = setting(default_factory=dict)
    auths: dict[str, AuthConfig] = setting(default_factory=dict,
                                           doc="deprecated in containerd: use configs")
    headers: dict[str, list[str]] = setting(default_factory=dict)


@_section
class StreamingTLS:
    """``[...cri.x509_key_pair_streaming]``."""

    tls_cert_file: str = setting("")
    tls_key_file: str = setting("")


@_section
class ImageDecryption:
    """``[...cri.image_decryption]``: accepted, not implemented."""

    key_model: str = setting("node")


@_section
class CRIConfig:
    """``[plugins."io.containerd.grpc.v1.cri"]``."""

    containerd: ContainerdSection = setting(default_factory=ContainerdSection)
    cni: CNISection = setting(default_factory=CNISection)
    registry: RegistrySection = setting(default_factory=RegistrySection)
    image_decryption: ImageDecryption = setting(default_factory=ImageDecryption)
    x509_key_pair_streaming: StreamingTLS = setting(default_factory=StreamingTLS)
    disable_tcp_service: bool = setting(True)
    stream_server_address: str = setting("127.0.0.1")
    stream_server_port: str = setting("0", doc="0: a free port")
    stream_idle_timeout: str = setting("4h0m0s", check=_duration_or_empty,
                                       doc="empty: 4h0m0s")
    enable_selinux: bool = setting(False)
    selinux_category_range: int = setting(1024)
    # containerd's default is k8s.gcr.io/pause:3.6; ctrd's is no pause container at all (see
    # ctrd.cri): nothing to pull before the first pod, one process fewer per pod.
    sandbox_image: str = setting("", doc="image of the pod's pause container; empty: no pause "
                                         "container (ctrd pins the pod's namespaces itself)")
    stats_collect_period: int = setting(10)
    systemd_cgroup: bool = setting(False, doc="deprecated in containerd: use runtime options")
    enable_tls_streaming: bool = setting(False)
    max_container_log_line_size: int = setting(16 * 1024,
                                               doc="longer lines are split; -1: no limit")
    disable_cgroup: bool = setting(False)
    disable_apparmor: bool = setting(False)
    restrict_oom_score_adj: bool = setting(False,
                                           doc="never set a lower oom_score_adj than ctrd's own")
    max_concurrent_downloads: int = setting(3)
    disable_proc_mount: bool = setting(False)
    unset_seccomp_profile: str = setting("")
    tolerate_missing_hugetlb_controller: bool = setting(True)
    disable_hugetlb_controller: bool = setting(True)
    device_ownership_from_security_context: bool = setting(False)
    ignore_image_defined_volumes: bool = setting(False)
    netns_mounts_under_state_dir: bool = setting(False,
                                                 doc="pin pod netns under the state dir "
                                                     "instead of /var/run/netns")
    enable_unprivileged_ports: bool = setting(False)
    enable_unprivileged_icmp: bool = setting(False)
    enable_cdi: bool = setting(True, doc="containerd 2.x's; accepted, ctrd injects no CDI "
                                         "devices (false is reported as deprecated)")
    ignore_deprecation_warnings: list[str] = setting(
        default_factory=list, doc="deprecation ids the CRI status's "
                                  "ContainerdHasNoDeprecationWarnings condition leaves out")
    # containerd 2.3.4's default (5m0s, raised from kubelet's 1m0s for IO-loaded nodes). Empty
    # is refused here: containerd accepts it at load, then fails every pull ("failed to parse
    # image_pull_progress_timeout"). ctrd applies it per registry response (the stall rule of
    # ctrd.remotes.registry): stricter than containerd's pull-wide check, never looser.
    image_pull_progress_timeout: str = setting("5m0s", check=check_duration,
                                               doc="a pull that makes no progress this long "
                                                   "fails; 0: no limit")


def deprecated_settings(cfg: CRIConfig) -> list[str]:
    """The deprecation ids (:mod:`ctrd.deprecation`) ``cfg`` uses, as containerd 2.3.4's
    ValidateImageConfig reports them, plus the keys containerd 2.0 removed that ctrd reads."""
    from ctrd import deprecation as d

    out = []
    if cfg.registry.mirrors:
        out.append(d.CRI_REGISTRY_MIRRORS)
    if cfg.registry.configs:
        out.append(d.CRI_REGISTRY_CONFIGS)
    if cfg.registry.auths:
        out.append(d.CRI_REGISTRY_AUTHS)
    if not cfg.enable_cdi:
        out.append(d.CRI_ENABLE_CDI)
    if cfg.systemd_cgroup:
        out.append(d.CRI_SYSTEMD_CGROUP)
    handlers = cfg.containerd.runtimes.values()
    if any(h.runtime_engine for h in handlers):
        out.append(d.CRI_RUNTIME_ENGINE)
    if any(h.runtime_root for h in handlers):
        out.append(d.CRI_RUNTIME_ROOT)
    return out
