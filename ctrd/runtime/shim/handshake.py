"""What ``start`` exchanges: with the daemon (runtime options or BootstrapParams on stdin; the
address or a BootstrapResult on stdout) and with the template (the request format, decoded by
:class:`.template.Request`).

Shared by the command line (:mod:`.cli`), the template (:mod:`.template`) and the daemon's
shim client (which asks a template directly). Imports only built-in modules at module level
(``start``'s hot path imports it); the protobuf modules it needs are in the template's
``_PREWARM``.
"""

from __future__ import annotations

import os

TEMPLATE_PROTOCOL = b"ctrd-shim-start/1"


def encode_request(id: str, namespace: str, address: str, bundle: str, debug: bool,
                   daemon_pid: int, options: bytes, env: dict[bytes, bytes]) -> bytes:
    """A ``start`` request to the template (format: :mod:`.template`)."""
    fields = [TEMPLATE_PROTOCOL, *(os.fsencode(s) for s in (id, namespace, address, bundle)),
              b"1" if debug else b"0", str(daemon_pid).encode(), options.hex().encode()]
    fields += [k + b"=" + v for k, v in env.items() if b"\0" not in k + v]
    return b"\0".join(fields)


def bootstrap_params(data: bytes):
    """The BootstrapParams containerd 2.3 writes on ``start``'s stdin, None when ``data`` is
    the bare options Any of older daemons. Both parse as either message (an Any is fields 1
    and 2, BootstrapParams' id and namespace): containerd's params always carry more
    (addresses, version, log level), an Any never does."""
    if not data:
        return None
    from google.protobuf.message import DecodeError

    from ctrd.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2

    p = bootstrap_pb2.BootstrapParams()
    try:
        p.ParseFromString(data)
    except DecodeError:
        return None  # an Any whose value is no UTF-8 text
    if p.containerd_version or p.containerd_ttrpc_address or p.containerd_grpc_address or \
            p.containerd_binary or p.extensions or p.log_level or p.HasField("socket_dir"):
        return p
    return None


def extension_options(p) -> bytes | None:
    """The marshalled runtime options Any among BootstrapParams' extensions (the first
    ``containerd.runc.v1.Options``, else the first extension), None without any."""
    exts = [e.value for e in p.extensions if e.HasField("value")]
    for a in exts:
        if a.type_url.rsplit("/", 1)[-1] == "containerd.runc.v1.Options":
            return a.SerializeToString()
    return exts[0].SerializeToString() if exts else None


def read_options(data: bytes):
    """The runc Options ``start`` got on stdin, bare or in BootstrapParams' extensions (None
    if absent or another type)."""
    if not data:
        return None
    from google.protobuf import any_pb2

    from ctrd import typeurl
    from ctrd.api.containerd.runc.options import oci_pb2

    params = bootstrap_params(data)
    if params is not None:
        data = extension_options(params) or b""
    a = any_pb2.Any()
    a.ParseFromString(data)
    if typeurl.name_of(a) != oci_pb2.Options.DESCRIPTOR.full_name:
        return None
    return typeurl.unpack(a, oci_pb2.Options)


def start_answer(address: str, stdin: bytes) -> bytes:
    """What ``start`` prints: to a daemon that sent BootstrapParams (containerd 2.3), a
    BootstrapResult of shim API version 3 (task API v3 and the sandbox API are served);
    to older ones, the bare address they parse."""
    if bootstrap_params(stdin) is None:
        return address.encode()
    from ctrd.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2

    return bootstrap_pb2.BootstrapResult(version=3, address=address,
                                         protocol="ttrpc").SerializeToString()
