"""The shim's ``-info`` command: the options protobuf (an Any) on stdin, a
``containerd.types.RuntimeInfo`` on stdout, as containerd 2.3.4's runc shim answers it
(``cmd/containerd-shim-runc-v2/manager``: name, version, the options given, and the OCI
runtime's ``features`` document). containerd's Introspection.PluginInfo for the runtime plugin
runs it (``ctr plugins inspect-runtime``).

Contract: options of another type than containerd.runc.v1.Options are an error (containerd's
shim fails to read them too); a runtime without a ``features`` command gives no features.
"""

from __future__ import annotations

import json

FEATURES_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"


def runtime_info(stdin: bytes, name: str, version: str) -> bytes:
    """The serialized RuntimeInfo for the options in ``stdin`` (empty: none given)."""
    import shutil

    from google.protobuf import any_pb2

    from ctrd import typeurl
    from ctrd.api.containerd.runc.options import oci_pb2
    from ctrd.api.containerd.types import introspection_pb2 as ipb
    from ctrd.cri.runtime_features import DEFAULT_BINARY, _run_features

    info = ipb.RuntimeInfo(name=name)
    info.version.version = version
    binary = DEFAULT_BINARY
    if stdin:
        given = any_pb2.Any()
        given.ParseFromString(stdin)
        if typeurl.name_of(given) != oci_pb2.Options.DESCRIPTOR.full_name:
            raise ValueError(f"failed to read runtime options (*options.Options): got "
                             f"{given.type_url!r}")
        opts = typeurl.unpack(given, oci_pb2.Options)
        info.options.CopyFrom(given)
        binary = opts.binary_name or binary
    path = shutil.which(binary)
    if path is None:
        raise ValueError(f'failed to look up the path of "{binary}": executable file not '
                         "found in $PATH")
    features = _run_features(path)
    if features is not None:
        info.features.type_url = FEATURES_TYPE
        info.features.value = json.dumps(features, separators=(",", ":")).encode()
    return info.SerializeToString()
