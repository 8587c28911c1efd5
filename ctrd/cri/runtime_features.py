"""What a runtime handler's OCI runtime can do, as ``<runtime> features`` reports it (the
OCI runtime features document: ``mountOptions``, ``linux.namespaces``,
``linux.mountExtensions``, ...), and the CRI features that follow from it.

containerd 2.3.4 learns this at start from the shim's ``info`` command, which runs
``<BinaryName> features`` (``cmd/containerd-shim-runc-v2/manager``), and advertises in
``Status`` -> ``runtime_handlers[].features``:

- ``recursive_read_only_mounts``: the runtime lists the ``rro`` mount option and the kernel
  has ``mount_setattr`` (5.12+) (``internal/cri/server/service.go``,
  ``introspectRuntimeHandler``).

A runtime without a ``features`` command (runc < 1.1, crun 1.8, youki) supports none of
them. The probe runs the binary once per (path, mtime, size): an upgraded runtime is probed
again, an unchanged one never.

Contract of the probe: never raises for a runtime that is missing, slow, or prints
garbage; it answers None (no features known), as containerd logs and carries on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from typing import Any, Mapping

DEFAULT_BINARY = "runc"          # the runc shim's default BinaryName
PROBE_TIMEOUT = 10.0             # seconds for ``<runtime> features``
MAX_FEATURES_SIZE = 1 << 20      # real documents are ~2 KiB
RRO_MIN_KERNEL = (5, 12)         # mount_setattr(2) with AT_RECURSIVE

# runtime types whose shim drives a runc-compatible CLI named by the BinaryName option
RUNC_TYPES = ("io.containerd.runc.v1", "io.containerd.runc.v2",
              "io.containerd.runtime.v1.linux", "io.containerd.ctrd.v2")

_lock = threading.Lock()
_cache: dict[tuple[str, int, int], dict[str, Any] | None] = {}


def runtime_binary(handler: Any, shim_options: Mapping[str, Any] | None = None) -> str | None:
    """The absolute path of the OCI runtime a CRI runtime handler runs, or None when it is
    not a runc-type shim or the binary is not found: the handler's ``BinaryName`` option,
    else the shim's configured default (``shim_options``), else ``runc``, looked up on PATH
    as the shim does (``exec.LookPath``)."""
    if handler is None:
        return None
    if getattr(handler, "runtime_type", "io.containerd.runc.v2") not in RUNC_TYPES:
        return None
    opts = dict(shim_options or {})
    opts.update(getattr(handler, "options", None) or {})
    name = opts.get("BinaryName") or opts.get("binary_name") or DEFAULT_BINARY
    if not isinstance(name, str) or "\0" in name:
        return None
    if "/" in name:
        return os.path.abspath(name) if os.access(name, os.X_OK) else None
    return shutil.which(name)


def probe(binary: str) -> dict[str, Any] | None:
    """``binary features`` parsed (a JSON object), cached per binary file; None when the
    runtime has no such command or its answer is not a JSON object."""
    try:
        st = os.stat(binary)
    except OSError:
        return None
    key = (binary, st.st_mtime_ns, st.st_size)
    with _lock:
        if key in _cache:
            return _cache[key]
    doc = _run_features(binary)
    with _lock:
        _cache[key] = doc
    return doc


def _run_features(binary: str) -> dict[str, Any] | None:
    try:
        r = subprocess.run([binary, "features"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0 or len(r.stdout) > MAX_FEATURES_SIZE:
        return None
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def kernel_supports_rro(release: str | None = None) -> bool:
    """Whether the kernel (``uname -r``, or ``release``) is 5.12 or newer."""
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return m is not None and (int(m[1]), int(m[2])) >= RRO_MIN_KERNEL


def features_support_rro(doc: Mapping[str, Any] | None) -> bool:
    """Whether a features document lists the ``rro`` mount option."""
    if not doc:
        return False
    opts = doc.get("mountOptions")
    return isinstance(opts, list) and "rro" in opts


def recursive_read_only_supported(handler: Any,
                                  shim_options: Mapping[str, Any] | None = None) -> bool:
    """``RuntimeHandlerFeatures.recursive_read_only_mounts`` of a CRI runtime handler (a
    :class:`ctrd.cri.config.RuntimeHandler`): its runtime's features list ``rro`` and the
    kernel has mount_setattr. ``shim_options``: the runtime plugin's default options for
    the handler's runtime type (where BinaryName may be set instead)."""
    if not kernel_supports_rro():
        return False
    binary = runtime_binary(handler, shim_options)
    return binary is not None and features_support_rro(probe(binary))


__all__ = ["runtime_binary", "probe", "kernel_supports_rro", "features_support_rro",
           "recursive_read_only_supported"]
