"""Pieces of the CRI status answers that containerd 2.3.4 derives from its own records, built
here from ctrd's: a container's ``ContainerStatus.resources`` (from its OCI spec), the
PodSandboxStatus verbose ``sandboxMetadata`` and ``cniResult`` (go-cni's ``Result`` shape),
and Status's verbose ``cniconfig`` (go-cni's ``GetConfig``). Pure functions: no sockets, no
daemon state (tests/test_cri_compare.py compares the answers with containerd's).
"""

from __future__ import annotations

import json

__all__ = ["cni_config_info", "cni_result_info", "container_resources", "go_json",
           "sandbox_metadata"]


def go_json(msg) -> dict:
    """A CRI message as containerd's ``json.Marshal`` of the Go struct writes it: proto field
    names (``log_directory``), enums as numbers, unset fields left out."""
    from google.protobuf import json_format

    out = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                    use_integers_for_enums=True)
    _int64_as_numbers(msg, out)
    return out


_INT64 = {3, 4, 6, 16, 18}  # FieldDescriptor.TYPE_INT64, UINT64, FIXED64, SFIXED64, SINT64


def _int64_as_numbers(msg, out: dict) -> None:
    """Proto3 JSON writes 64-bit integers as strings; Go's json.Marshal as numbers."""
    for fd, v in msg.ListFields():
        name = fd.name
        if name not in out:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.message_type is not None:
                for k in v:
                    _int64_as_numbers(v[k], out[name][str(k)])
            elif vfd.type in _INT64:
                out[name] = {k: int(x) for k, x in out[name].items()}
        elif fd.message_type is not None:
            if isinstance(out[name], list):
                for m, d in zip(v, out[name]):
                    _int64_as_numbers(m, d)
            else:
                _int64_as_numbers(v, out[name])
        elif fd.type in _INT64:
            out[name] = [int(x) for x in out[name]] if isinstance(out[name], list) \
                else int(out[name])


def container_resources(spec: dict):
    """containerd's ``copyResourcesToStatus``: the limits the container's spec holds (set at
    create, replaced by UpdateContainerResources), ``linux`` present for a Linux spec."""
    from ctrd.api.cri.runtime.v1 import api_pb2 as pb

    out = pb.ContainerResources()
    linux = spec.get("linux")
    if linux is None:
        return out
    r = out.linux
    out.linux.SetInParent()
    adj = (spec.get("process") or {}).get("oomScoreAdj")
    if adj is not None:
        r.oom_score_adj = int(adj)
    res = linux.get("resources")
    if not res:
        return out
    cpu = res.get("cpu") or {}
    r.cpu_period = int(cpu.get("period") or 0)
    r.cpu_quota = int(cpu.get("quota") or 0)
    r.cpu_shares = int(cpu.get("shares") or 0)
    r.cpuset_cpus = cpu.get("cpus") or ""
    r.cpuset_mems = cpu.get("mems") or ""
    mem = res.get("memory") or {}
    r.memory_limit_in_bytes = int(mem.get("limit") or 0)
    r.memory_swap_limit_in_bytes = int(mem.get("swap") or 0)
    for h in res.get("hugepageLimits") or []:
        r.hugepage_limits.add(page_size=h.get("pageSize", ""), limit=int(h.get("limit", 0)))
    r.unified.update(res.get("unified") or {})
    return out


def cni_result_info(result: dict) -> dict | None:
    """ctrd's recorded CNI result (``interfaces`` by name with ``ips``, ``mac``,
    ``sandbox``; ``dns``; ``routes``) as go-cni's ``Result``, the shape containerd puts in
    the sandbox's verbose info: ``Interfaces`` by name with ``IPConfigs`` (IP without its
    prefix length, Gateway; null when none), ``Mac``, ``Sandbox``, ``PciID``,
    ``SocketPath``; ``DNS`` (empty fields left out, as Go's omitempty); ``Routes``."""
    if not result:
        return None
    ifaces = {}
    for name, i in (result.get("interfaces") or {}).items():
        ips = [{"IP": str(ip.get("address", "")).split("/")[0],
                "Gateway": ip.get("gateway") or ""} for ip in i.get("ips") or []]
        ifaces[name] = {"IPConfigs": ips or None, "Mac": i.get("mac", ""),
                        "Sandbox": i.get("sandbox", ""), "PciID": "", "SocketPath": ""}
    dns = [{k.capitalize(): v for k, v in d.items() if v} for d in result.get("dns") or []]
    routes = [{k: v for k, v in r.items() if v} for r in result.get("routes") or []]
    return {"Interfaces": ifaces, "DNS": dns, "Routes": routes or None}


def sandbox_metadata(meta, status, config: dict, cni_result: dict | None) -> dict:
    """containerd's ``sandboxstore.Metadata`` in its versioned wrapper (``sandboxMetadata``)."""
    return {"Version": "v1", "Metadata": {
        "ID": meta.id, "Name": meta.name, "Config": config, "NetNSPath": meta.netns,
        "IP": status.ip, "AdditionalIPs": list(status.additional_ips) or None,
        "RuntimeHandler": meta.runtime_handler, "CNIResult": cni_result, "ProcessLabel": ""}}


def cni_config_info(cni) -> dict:
    """go-cni's ``GetConfig`` of the CRI's CNI client (Status verbose ``cniconfig``)."""
    nets = []
    for n in cni.networks():
        c = n.config
        nets.append({"Config": {
            "Name": c.name, "CNIVersion": c.cni_version,
            # libcni's NetConf keeps only the type of the ipam section; Source: the JSON
            "Plugins": [{"Network": {"type": p.get("type", ""), "ipam": {
                "type": p["ipam"]["type"]} if isinstance(p.get("ipam"), dict)
                and "type" in p["ipam"] else {}}, "Source": json.dumps(p)}
                for p in c.plugins],
            "Source": json.dumps(c.raw) if c.raw else ""}, "IFName": n.ifname})
    return {"PluginDirs": list(cni.bin_dirs), "PluginConfDir": cni.conf_dir,
            "PluginMaxConfNum": cni.max_conf_num, "Prefix": cni.prefix, "Networks": nets}
