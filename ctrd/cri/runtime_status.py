"""What the kubelet reads about the runtime itself: ``Status`` (conditions, runtime handlers
and their features, node-level features) and ``RuntimeConfig`` (the cgroup driver).

containerd 2.3 is the reference (internal/cri/server/status.go, service.go's
introspectRuntimeHandler, runtime_config_linux.go):

- conditions ``RuntimeReady``, ``NetworkReady`` (CNI's state) and
  ``ContainerdHasNoDeprecationWarnings``;
- one ``RuntimeHandler`` per configured handler plus the unnamed default (``""``, with the
  default handler's features), sorted by name; a handler's features say whether the kubelet
  may send it pods with recursive read-only mounts and user namespaces (a kubelet 1.36
  refuses or skips such pods when the handler says no);
- ``RuntimeFeatures``: supplemental-groups policy and user namespaces with the host network;
- the cgroup driver: the first handler (the default first, then by name) whose runc options
  say ``SystemdCgroup``; a handler of a runc type without the option says cgroupfs; none
  says anything: systemd when systemd runs the host, else cgroupfs.

Feature probes are plain functions (``features_of``) so the answer is testable without a
socket; their results are computed once per handler and kept (a handler's binary does not
change under a running daemon; containerd too introspects once, at start).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from ctrd.cri.config import CRIConfig, RuntimeHandler

RUNC_TYPES = ("io.containerd.runc.v1", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux")

CONDITION_NO_DEPRECATIONS = "ContainerdHasNoDeprecationWarnings"
REASON_DEPRECATIONS = "ContainerdHasDeprecationWarnings"

SYSTEMD, CGROUPFS = 0, 1  # runtime.v1 CgroupDriver


@dataclass(frozen=True)
class HandlerFeatures:
    """runtime.v1 RuntimeHandlerFeatures of one handler."""

    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


@dataclass(frozen=True)
class HandlerInfo:
    name: str          # "" is the default handler
    features: HandlerFeatures


def runtime_handlers(config: CRIConfig,
                     features_of: Callable[[str, RuntimeHandler], HandlerFeatures]
                     ) -> list[HandlerInfo]:
    """Every configured handler and the unnamed default, sorted by name (containerd's order:
    the kubelet compares lists)."""
    out: dict[str, HandlerInfo] = {}
    default = config.containerd.default_runtime_name
    for name, h in config.containerd.runtimes.items():
        info = HandlerInfo(name, features_of(name, h))
        out[name] = info
        if name == default:
            out[""] = HandlerInfo("", info.features)
    return [out[k] for k in sorted(out)]


def _systemd_option(h: RuntimeHandler) -> bool | None:
    """The handler's cgroup driver from its runc options; None when it has no say (not a
    runc-type runtime)."""
    if h.runtime_type not in RUNC_TYPES and not h.options.get("SystemdCgroup"):
        return None
    return bool(h.options.get("SystemdCgroup"))


def running_systemd(root: str = "/") -> bool:
    """systemd's own test (sd_booted): /run/systemd/system exists."""
    return os.path.isdir(os.path.join(root, "run/systemd/system"))


def cgroup_driver(config: CRIConfig, systemd_running: Callable[[], bool] = running_systemd
                  ) -> int:
    """runtime.v1 CgroupDriver for ``RuntimeConfig``: the default handler first, then the
    others by name; the first that says wins; else what runs the host."""
    default = config.containerd.default_runtime_name
    names = sorted(config.containerd.runtimes, key=lambda n: (n != default, n))
    if config.systemd_cgroup:  # the deprecated global switch still decides for runc
        return SYSTEMD
    for name in names:
        v = _systemd_option(config.containerd.runtimes[name])
        if v is not None:
            return SYSTEMD if v else CGROUPFS
    return SYSTEMD if systemd_running() else CGROUPFS


def deprecation_condition(deprecations: dict[str, str], ignore: list[str]
                          ) -> tuple[str, bool, str, str]:
    """(type, status, reason, message) of ``ContainerdHasNoDeprecationWarnings``: false with
    the warnings as a JSON object {id: message} unless every one is ignored by the config's
    ``ignore_deprecation_warnings``."""
    import json

    left = {k: v for k, v in deprecations.items() if k not in set(ignore)}
    if not left:
        return CONDITION_NO_DEPRECATIONS, True, "", ""
    return (CONDITION_NO_DEPRECATIONS, False, REASON_DEPRECATIONS,
            json.dumps(left, sort_keys=True, separators=(",", ":")))
