"""A CRI pod's record in the sandbox store (containerd 2.x's internal/cri/server/sandbox_run.go):
so ``ctr sandboxes ls -n k8s.io`` lists the pods, as against containerd 2.x.

The record, as containerd 2.3.4 leaves it once the pod runs: id the pod's, runtime = the
handler's runtime type and options (an empty ``containerd.runc.v1.Options`` for a runc
runtime without any, as containerd generates), sandboxer ``podsandbox``, labels and spec
those of the pod's container record (its labels plus ``oci_runtime_type``; the pause
container's OCI spec), and extension ``metadata`` holding what containerd keeps there (its
``sandboxstore.Metadata`` as versioned JSON, under containerd's type URL): ID, Name, Config
(the PodSandboxConfig), NetNSPath, IP, AdditionalIPs, RuntimeHandler. Written when RunPodSandbox succeeds, removed with the pod
(RemovePodSandbox); a pod run through the Sandbox API's podsandbox controller already has
the record its client created.
"""

from __future__ import annotations

import json

from ctrd import errdefs
from ctrd.cri.helpers import NAMESPACE

SANDBOXER = "podsandbox"
METADATA_KEY = "metadata"
METADATA_TYPE = "github.com/containerd/cri/pkg/store/sandbox/Metadata"


def metadata_value(meta, ip: str = "", additional_ips: list[str] | None = None) -> bytes:
    return json.dumps({"Version": "v1", "Metadata": {
        "ID": meta.id, "Name": meta.name, "Config": meta.config or None,
        "NetNSPath": meta.netns, "IP": ip, "AdditionalIPs": additional_ips or None,
        "RuntimeHandler": meta.runtime_handler, "CNIResult": None, "ProcessLabel": ""}},
        separators=(",", ":")).encode()


def add(md, meta, options, ip: str = "", additional_ips: list[str] | None = None) -> None:
    """Store the pod's record (blocking: a worker thread), after its container record.
    ``options`` is the handler's runtime options Any, or None."""
    from ctrd.metadata.containers import AnyValue, ContainerStore, Runtime
    from ctrd.metadata.sandboxes import Sandbox, SandboxStore
    from ctrd.runtime.manager import RUNC_OPTIONS_TYPE

    container = ContainerStore(md.db).get(NAMESPACE, meta.id)
    opts = AnyValue(options.type_url, options.value) if options is not None else None
    if opts is None and meta.runtime_type == "io.containerd.runc.v2":
        opts = AnyValue(RUNC_OPTIONS_TYPE)
    sb = Sandbox(id=meta.id, sandboxer=SANDBOXER, runtime=Runtime(meta.runtime_type, opts),
                 labels={**container.labels, "oci_runtime_type": meta.runtime_type},
                 spec=container.spec,
                 extensions={METADATA_KEY: AnyValue(METADATA_TYPE,
                                                    metadata_value(meta, ip, additional_ips))})
    SandboxStore(md.db).create(NAMESPACE, sb)


def remove(md, id_: str) -> None:
    """Remove the pod's record if there is one (blocking)."""
    from ctrd.metadata.sandboxes import SandboxStore

    try:
        SandboxStore(md.db).delete(NAMESPACE, id_)
    except errdefs.NotFound:
        pass  # a pod of an older ctrd, or its client removed it
