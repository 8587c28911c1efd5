"""Deprecation warnings: the ids and messages clients see, and the registry components report to.

Contract (containerd 2.3.4's ``pkg/deprecation`` and ``plugins/services/warning``):
- A warning is an id under ``io.containerd.deprecation/`` with one fixed message; components
  call :meth:`Deprecations.emit` with the id each time they meet the deprecated thing, and the
  registry keeps the last occurrence of each id.
- Introspection.Server reports them (``ctr deprecations list``; every ``ctr`` 2.x command prints
  them as ``DEPRECATION:`` lines unless ``CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS`` is set); the
  CRI status's ``ContainerdHasNoDeprecationWarnings`` condition lists them.
- An id without a message is not recorded (logged), as containerd does.

The ids and texts below are containerd 2.3.4's where containerd has the warning; the ones
containerd 2.x no longer needs (it refuses or ignores those configs) keep containerd 1.7's ids
with the text saying what ctrd does. ``CONFIG_VERSION`` is ctrd's own: containerd 2.x only logs
that it migrated an old config file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("ctrd.deprecation")

PREFIX = "io.containerd.deprecation/"

CRI_REGISTRY_MIRRORS = PREFIX + "cri-registry-mirrors"
CRI_REGISTRY_AUTHS = PREFIX + "cri-registry-auths"
CRI_REGISTRY_CONFIGS = PREFIX + "cri-registry-configs"
CRI_CNI_BIN_DIR = PREFIX + "cri-cni-bin-dir"
CGROUP_V1 = PREFIX + "cgroup-v1"
CRI_ENABLE_CDI = PREFIX + "enable-cdi"
RUNC_OPTIONS_TASK_API_ADDRESS = PREFIX + "runc-options-task-api-address"
RUNC_OPTIONS_TASK_API_VERSION = PREFIX + "runc-options-task-api-version"
# containerd 1.7's ids for keys containerd 2.0 removed (ctrd still reads them).
CRI_SYSTEMD_CGROUP = PREFIX + "cri-systemd-cgroup-v1"
CRI_RUNTIME_ENGINE = PREFIX + "cri-runtime-engine"
CRI_RUNTIME_ROOT = PREFIX + "cri-runtime-root"
# ctrd's own.
CONFIG_VERSION = PREFIX + "config-version"

_CRI = '[plugins."io.containerd.grpc.v1.cri"'
MESSAGES: dict[str, str] = {
    CRI_REGISTRY_MIRRORS: f"The `mirrors` property of `{_CRI}.registry]` is deprecated since "
                          "containerd v1.5 and will be removed in containerd v2.4. "
                          "Use `config_path` instead.",
    CRI_REGISTRY_AUTHS: f"The `auths` property of `{_CRI}.registry]` is deprecated since "
                        "containerd v1.3 and will be removed in containerd v2.4. "
                        "Use `ImagePullSecrets` instead.",
    CRI_REGISTRY_CONFIGS: f"The `configs` property of `{_CRI}.registry]` is deprecated since "
                          "containerd v1.5 and will be removed in containerd v2.4. "
                          "Use `config_path` instead.",
    CRI_CNI_BIN_DIR: "The `bin_dir` property of `[plugins.\"io.containerd.cri.v1.runtime\".cni`] "
                     "is deprecated since containerd v2.1 and will be removed in containerd "
                     "v2.4. Use `bin_dirs` in the same section instead.",
    CGROUP_V1: "The support for cgroup v1 is deprecated since containerd v2.2 and will be "
               "removed by no later than May 2029. Upgrade the host to use cgroup v2.",
    CRI_ENABLE_CDI: "The `enable_cdi` property of `[plugins.\"io.containerd.cri.v1.runtime\"]` is "
                    "deprecated, will be removed in containerd v2.3, and CDI support will "
                    "always be enabled.",
    RUNC_OPTIONS_TASK_API_ADDRESS: "The `task_api_address` field in runc options is deprecated "
                                   "since containerd v2.3. Set `task_api_address` on "
                                   "CreateTaskRequest instead.",
    RUNC_OPTIONS_TASK_API_VERSION: "The `task_api_version` field in runc options is deprecated "
                                   "since containerd v2.3. Set `task_api_version` on "
                                   "CreateTaskRequest instead.",
    CRI_SYSTEMD_CGROUP: f"The `systemd_cgroup` property (old form) of `{_CRI}]` is deprecated "
                        "since containerd v1.3 and was removed in containerd v2.0 (ctrd reads "
                        "it). Use `SystemdCgroup` in the runtime's `options` instead.",
    CRI_RUNTIME_ENGINE: f"The `runtime_engine` property of `{_CRI}.containerd.runtimes.*]` is "
                        "deprecated since containerd v1.3 and was removed in containerd v2.0 "
                        "(ctrd ignores it). Use a v2 runtime and `options` instead.",
    CRI_RUNTIME_ROOT: f"The `runtime_root` property of `{_CRI}.containerd.runtimes.*]` is "
                      "deprecated since containerd v1.3 and was removed in containerd v2.0 "
                      "(ctrd ignores it). Use a v2 runtime and `options.Root` instead.",
    CONFIG_VERSION: "Config files of version 1 and 2 (the containerd 1.x format) are migrated "
                    "in memory at every start. Use `ctrd config migrate` to print the file "
                    "as version 3.",
}


def message(id_: str) -> str | None:
    """The fixed text of warning ``id_`` (None: not a known warning)."""
    return MESSAGES.get(id_)


@dataclass(frozen=True)
class Warning:
    """One reported deprecation: its id, text and when it was last met (ns since the epoch)."""

    id: str
    message: str
    last_occurrence_ns: int


class Deprecations:
    """The daemon's registry of deprecation warnings (thread-safe: components report from
    worker threads too). One per daemon; tests make their own."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def emit(self, id_: str) -> None:
        """Record that deprecated thing ``id_`` was met now; an unknown id is logged and
        dropped."""
        if id_ not in MESSAGES:
            log.warning("invalid deprecation warning %s", id_)
            return
        with self._lock:
            self._last[id_] = time.time_ns()

    def warnings(self) -> list[Warning]:
        """Every reported warning, by id."""
        with self._lock:
            items = sorted(self._last.items())
        return [Warning(k, MESSAGES[k], t) for k, t in items]

    def as_dict(self) -> dict[str, str]:
        """{id: message}, the shape of the CRI's deprecation condition."""
        return {w.id: w.message for w in self.warnings()}


def cgroup_v1_host(root: str = "/sys/fs/cgroup") -> bool:
    """True unless the host is on the unified hierarchy (cgroup v2 alone), as containerd's
    ``cgroups.Mode() != Unified``: a hybrid host counts as v1."""
    return not os.path.exists(os.path.join(root, "cgroup.controllers"))
