"""containerd 2.3's shim bootstrap protocol, the daemon's side.

containerd 2.3 starts a shim with a ``containerd.runtime.bootstrap.v1.BootstrapParams``
protobuf on the ``start`` command's stdin (instance id, namespace, log level, the daemon's
addresses and binary, the runtime options Any as an extension) where older daemons wrote the
bare options Any; the shim answers a ``BootstrapResult`` (version, address, protocol), which
the daemon keeps in ``<bundle>/bootstrap.json`` to reconnect after a restart.

Which shims get which stdin: containerd 2.3.4 sends BootstrapParams to every shim except
``*-shim-runc-v1``/``*-shim-runhcs-v1``, which breaks the 1.6/1.7 runc v2 shims that still
run on hosts (Debian 12's ``containerd-shim-runc-v2`` 1.6.20 refuses any stdin that is not a
runtime options Any). ctrd tells them apart instead: a shim that answers ``-info`` (every
containerd 2.x shim, and ctrd's) gets BootstrapParams; one that does not gets the options
Any it expects. The probe runs once per binary (path, size, mtime).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from ctrd import __version__, errdefs

log = logging.getLogger("ctrd.runtime")

PROBE_TIMEOUT = 10.0
BOOTSTRAP_FILE = "bootstrap.json"
MAX_BOOTSTRAP_FILE = 1 << 16

_probed: dict[tuple[str, int, int], bool] = {}


def _key(binary: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(binary)
    except OSError:
        return None
    return binary, st.st_size, st.st_mtime_ns


async def speaks_bootstrap(binary: str) -> bool:
    """Whether ``binary`` is a shim of containerd 2.x's generation (it answers ``-info``)."""
    if os.path.basename(binary) == "containerd-shim-ctrd-v2":
        return True  # ctrd's own: no probe (an interpreter start) on the task start path
    key = _key(binary)
    if key is None:
        return False
    known = _probed.get(key)
    if known is not None:
        return known
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "-info", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return False
    try:
        rc = await asyncio.wait_for(proc.wait(), PROBE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        rc = -1
        log.warning("%s -info gave no answer in %.0fs: treated as a shim of containerd 1.x",
                    binary, PROBE_TIMEOUT)
    _probed[key] = rc == 0
    return rc == 0


def params(instance_id: str, namespace: str, grpc_address: str, ttrpc_address: str,
           publish_binary: str, debug: bool, options: bytes | None) -> bytes:
    """The marshalled BootstrapParams containerd 2.3.4 writes (``pkg/shim.Command``);
    ``options`` is the marshalled runtime options Any, carried as an extension."""
    from google.protobuf import any_pb2

    from ctrd.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2 as pb

    p = pb.BootstrapParams(
        instance_id=instance_id, namespace=namespace,
        log_level=pb.LOG_LEVEL_DEBUG if debug else pb.LOG_LEVEL_INFO,
        containerd_version=__version__, containerd_ttrpc_address=ttrpc_address,
        containerd_grpc_address=grpc_address, containerd_binary=publish_binary)
    if options:
        a = any_pb2.Any()
        a.ParseFromString(options)
        p.extensions.add().value.CopyFrom(a)
    return p.SerializeToString()


MAX_SHIM_VERSION = 3  # containerd 2.x's CurrentShimVersion


def parse_start_output(raw: bytes) -> tuple[str, int]:
    """(address, shim API version) from what a shim's ``start`` printed: containerd 2.x's
    bootstrap answer (a ``BootstrapResult`` protobuf, or the JSON ``{"version", "address",
    "protocol"}`` of 2.0) or the plain address of shim v2. Only ttrpc is spoken here; a
    version above 3 or another protocol is NotImplemented (containerd's words)."""
    text = raw.strip()
    if text.startswith(b"unix://"):
        return text.decode(errors="replace"), 2
    if text.startswith(b"{"):
        import json

        try:
            params = json.loads(text)
            version = int(params.get("version", 0))
            address, protocol = str(params.get("address", "")), params.get("protocol", "")
        except (ValueError, AttributeError, TypeError):
            return text.decode(errors="replace"), 2
        if version < 2:
            return text.decode(errors="replace"), 2
    else:
        from ctrd.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2

        result = bootstrap_pb2.BootstrapResult()
        try:
            result.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - garbage: named below
            raise errdefs.FailedPrecondition(f"shim printed an unreadable start answer "
                                             f"{raw[:200]!r}") from None
        version, address, protocol = result.version or 2, result.address, result.protocol
    if version > MAX_SHIM_VERSION:
        raise errdefs.NotImplemented_(f"unsupported shim version ({version})")
    if protocol and protocol != "ttrpc":
        raise errdefs.NotImplemented_(f"unsupported shim protocol {protocol!r}")
    return address, version


def write_result(bundle_dir: str, version: int, address: str, protocol: str = "ttrpc") -> None:
    """``<bundle>/bootstrap.json`` as containerd 2.3.4 writes it (the Go JSON of a
    BootstrapResult), replaced atomically."""
    data = json.dumps({"version": version, "address": address, "protocol": protocol},
                      separators=(",", ":"))
    tmp = os.path.join(bundle_dir, ".bootstrap.json.tmp")
    with open(tmp, "w") as f:
        f.write(data)
    os.rename(tmp, os.path.join(bundle_dir, BOOTSTRAP_FILE))


def read_result(bundle_dir: str) -> tuple[str, int] | None:
    """(address, version) from ``<bundle>/bootstrap.json``; None when there is none.
    A file that is not what :func:`write_result` (or containerd) wrote is an error."""
    path = os.path.join(bundle_dir, BOOTSTRAP_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BOOTSTRAP_FILE + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_BOOTSTRAP_FILE:
        raise errdefs.FailedPrecondition(f"{path}: larger than {MAX_BOOTSTRAP_FILE} bytes")
    return parse_start_output(data)

