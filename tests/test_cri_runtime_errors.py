"""Mistakes and hostile requests to the CRI RuntimeService: each error names the problem,
nothing is left half-done (no netns, dir, record, snapshot, reserved name) and the daemon
keeps serving; concurrent pod creation."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import tarfile

import grpc
import pytest

from conftest import ctr
from taskutil import mounts_under
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory, pod_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kw)
    return e.value


def cri_dirs(cri) -> dict[str, list[str]]:  # noqa: F811
    """What the CRI plugin holds on disk: pod dirs, pins, status dirs, snapshots."""
    state = cri.daemon.state / "io.containerd.grpc.v1.cri"
    root = cri.daemon.root / "io.containerd.grpc.v1.cri"
    out = {}
    for name, d in (("pods", state / "sandboxes"), ("netns", state / "netns"),
                    ("ipcns", state / "ipcns"), ("utsns", state / "utsns"),
                    ("status-pods", root / "sandboxes"), ("status-ctrs", root / "containers")):
        out[name] = sorted(os.listdir(d)) if d.is_dir() else []
    r = ctr(cri.daemon.address, "-n", "k8s.io", "snapshots", "ls")
    out["snapshots"] = sorted(line.split()[0] for line in r.stdout.splitlines()[1:])
    r = ctr(cri.daemon.address, "-n", "k8s.io", "containers", "ls", "-q")
    out["records"] = sorted(r.stdout.split())
    return out


def test_bad_requests(cri):  # noqa: F811
    pb = cri.pb
    before = cri_dirs(cri)
    # missing metadata: containerd 2.3.4 answers UNKNOWN (a plain error); incomplete
    # metadata (which containerd accepts) ctrd refuses as invalid (test_cri_error_codes.py)
    e = rpc_error(cri.rt.RunPodSandbox, pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()))
    assert e.code() == grpc.StatusCode.UNKNOWN and "metadata" in e.details()
    for md in (pb.PodSandboxMetadata(name="x", namespace="default"),
               pb.PodSandboxMetadata(name="", namespace="d", uid="u")):
        config = pb.PodSandboxConfig(metadata=md)
        e = rpc_error(cri.rt.RunPodSandbox, pb.RunPodSandboxRequest(config=config))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata" in e.details()
    # unknown and hostile ids
    for bad in ("nosuch", "../../../etc", "\x00", "a" * 5000):
        for call, req in ((cri.rt.PodSandboxStatus, pb.PodSandboxStatusRequest(
                pod_sandbox_id=bad)), (cri.rt.ContainerStatus, pb.ContainerStatusRequest(
                        container_id=bad)), (cri.rt.StartContainer, pb.StartContainerRequest(
                            container_id=bad)), (cri.rt.ExecSync, pb.ExecSyncRequest(
                                container_id=bad, cmd=["true"]))):
            e = rpc_error(call, req)
            assert e.code() == grpc.StatusCode.NOT_FOUND, (call, bad, e)
        # stops and removals of what does not exist succeed (the CRI contract, containerd
        # 2.x: the kubelet retries them)
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=bad))
        cri.rt.StopContainer(pb.StopContainerRequest(container_id=bad, timeout=0))
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=bad))
        cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=bad))
    e = rpc_error(cri.rt.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id="nosuch", config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image=cri.image))))
    assert e.code() == grpc.StatusCode.NOT_FOUND

    sid, pconf = cri.run_pod("errs")
    # container metadata missing
    e = rpc_error(cri.rt.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=pb.ContainerConfig(image=pb.ImageSpec(image=cri.image)),
        sandbox_config=pconf))
    # (the codes below are containerd 2.3.4's: plain errors, UNKNOWN)
    assert e.code() == grpc.StatusCode.UNKNOWN and "metadata" in e.details()
    # StartContainer twice
    cid = cri.create(sid, pconf, "twice", ["sleep", "1000"])
    e = rpc_error(cri.rt.StartContainer, pb.StartContainerRequest(container_id=cid))
    assert e.code() == grpc.StatusCode.UNKNOWN
    assert "CONTAINER_RUNNING" in e.details()
    # an empty exec command
    e = rpc_error(cri.rt.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=[]))
    assert e.code() == grpc.StatusCode.UNKNOWN and "args must not be empty" in e.details()
    # a command that does not exist in the image: the runtime's error, the container lives
    e = rpc_error(cri.exec, cid, ["/no/such/binary"])
    assert "no/such/binary" in e.details()
    assert cri.status(cid).state == pb.CONTAINER_RUNNING
    # ExecSync on a stopped container
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))  # again: ok
    e = rpc_error(cri.exec, cid, ["true"])
    assert e.code() == grpc.StatusCode.UNKNOWN and "CONTAINER_EXITED" in e.details()
    e = rpc_error(cri.rt.StartContainer, pb.StartContainerRequest(container_id=cid))
    assert "CONTAINER_EXITED" in e.details()
    # CreateContainer in a NOTREADY sandbox; StartContainer of a created one there
    created = cri.create(sid, pconf, "created", ["sleep", "1000"], start=False)
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))  # again: ok
    e = rpc_error(cri.create, sid, pconf, "late", ["true"])
    assert e.code() == grpc.StatusCode.UNKNOWN and "is not running" in e.details()
    e = rpc_error(cri.rt.StartContainer, pb.StartContainerRequest(container_id=created))
    assert e.code() == grpc.StatusCode.UNKNOWN
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert cri_dirs(cri) == before
    cri.rt.Version(pb.VersionRequest())


def test_huge_command_and_env(cri):  # noqa: F811
    """Larger than the kernel takes for one exec (MAX_ARG_STRLEN 128 KiB): runc's init fails
    its execve after the start (as under containerd): EXITED with an error, removable."""
    pb = cri.pb
    sid, pconf = cri.run_pod("huge")
    before = cri_dirs(cri)
    big = "x" * (1 << 20)
    cid = cri.create(sid, pconf, "bigenv", ["sleep", "1000"],
                     envs=[pb.KeyValue(key="BIG", value=big)])
    cs = cri.wait_exited(cid)
    assert (cs.state, cs.reason) == (pb.CONTAINER_EXITED, "Error") and cs.exit_code != 0
    cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert cri_dirs(cri) == before
    # many arguments: fine for create and start, and for ExecSync
    many = [str(i) for i in range(20000)]
    cid = cri.create(sid, pconf, "many", ["sh", "-c", 'echo $#; exec sleep 1000', "sh"] + many)
    r = cri.exec(cid, ["sh", "-c", "echo $#", "sh"] + many)
    assert r.stdout == b"20000\n"
    # runc's exec fails its execve after the start, as for the init: a failed exec
    r = cri.exec(cid, ["echo", big])
    assert r.exit_code != 0 and r.stdout == b""
    # a request beyond gRPC's 16 MiB limit is refused at the door
    e = rpc_error(cri.exec, cid, ["echo"] + ["y" * 1000] * 20000)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert cri.exec(cid, ["true"]).exit_code == 0
    cri.remove_pod(sid)


def test_cni_failure_leaves_nothing(cri_factory, testnet):  # noqa: F811
    testnet.plugin("failing", """\
        cat >/dev/null
        if [ "$CNI_COMMAND" = ADD ]; then
          echo '{"cniVersion":"1.0.0","code":11,"msg":"no more addresses","details":"pool empty"}'
          exit 1
        fi
        exit 0
        """)
    cri = cri_factory(plugins=[testnet.bridge_conf(ip_masq=False),  # noqa: F811
                               {"type": "failing"}])
    pb = cri.pb
    before = cri_dirs(cri)
    e = rpc_error(cri.run_pod, "netfail")
    assert "no more addresses" in e.details()
    assert cri_dirs(cri) == before
    assert cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert cri.net.leases() == [], "the bridge's lease was released by the failed ADD's DEL"
    assert mounts_under(cri.daemon.state) == [], "no pin (nor pin dir) of a failed pod"
    # the name was released: with a working network the same pod runs
    testnet.write([testnet.bridge_conf(ip_masq=False)])
    sid, _ = cri.run_pod("netfail")
    assert cri.pod_status(sid).network.ip
    cri.remove_pod(sid)


def _import_hostile_image(cri, registry, tmp_path, config: dict, tag: str) -> str:  # noqa: F811
    """An OCI archive with the busybox layer and ``config`` imported into k8s.io."""
    from images import MT_OCI_CONFIG, MT_OCI_MANIFEST, canonical, sha256

    bb = registry.pushed["busybox"]
    manifest = json.loads(bb.read_blob(bb.digest))
    layer = manifest["layers"][0]
    cfg = dict(config, architecture=json.loads(bb.read_blob(manifest["config"]["digest"]))
               ["architecture"], os="linux", rootfs={"type": "layers",
                                                      "diff_ids": bb.diff_ids or [
                                                          json.loads(bb.read_blob(
                                                              manifest["config"]["digest"]))
                                                          ["rootfs"]["diff_ids"][0]]})
    cdata = canonical(cfg)
    mdata = canonical({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                       "config": {"mediaType": MT_OCI_CONFIG, "digest": sha256(cdata),
                                  "size": len(cdata)}, "layers": [layer]})
    index = canonical({"schemaVersion": 2, "manifests": [{
        "mediaType": MT_OCI_MANIFEST, "digest": sha256(mdata), "size": len(mdata),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]})
    path = tmp_path / f"{tag}.tar"
    with tarfile.open(path, "w") as t:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for data in (cdata, mdata, bb.read_blob(layer["digest"])):
            add(f"blobs/sha256/{sha256(data).split(':')[1]}", data)
    name = "example.test/hostile"
    r = ctr(cri.daemon.address, "-n", "k8s.io", "images", "import", "--base-name", name,
            str(path))
    assert r.returncode == 0, r.stderr
    return f"{name}:{tag}"


def test_hostile_image_configs(cri, registry, tmp_path):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("hostile")
    before = cri_dirs(cri)
    cases = [
        ({"config": {"User": "ghost", "Cmd": ["sh"]}}, "ghost"),
        ({"config": {"WorkingDir": "relative/dir", "Cmd": ["sh"]}}, "relative/dir"),
        ({"config": {}}, "no command"),
        ({"config": {"User": "0:nogroup-at-all", "Cmd": ["sh"]}}, "nogroup-at-all"),
    ]
    for i, (config, problem) in enumerate(cases):
        ref = _import_hostile_image(cri, registry, tmp_path, config, f"bad{i}")
        e = rpc_error(cri.rt.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=sid, sandbox_config=pconf, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=f"c{i}"), image=pb.ImageSpec(image=ref))))
        assert problem in e.details(), (config, e.details())
        assert cri_dirs(cri) == before, config
    # odd but acceptable: an unknown stop signal (SIGTERM then), a huge env list
    ref = _import_hostile_image(cri, registry, tmp_path, {"config": {
        "StopSignal": "SIGNOPE", "Cmd": ["sleep", "1000"],
        "Env": [f"V{i}={i}" for i in range(3000)] + ["NOEQUALS"]}}, "odd")
    cid = cri.create(sid, pconf, "odd", [], image=pb.ImageSpec(image=ref))
    assert cri.sh(cid, "echo $V2999") == "2999\n"
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5))
    assert cri.status(cid).state == pb.CONTAINER_EXITED
    cri.remove_pod(sid)


def test_concurrent_pods(cri):  # noqa: F811
    pb = cri.pb

    def one(i: int) -> tuple[str, str]:
        sid, pconf = cri.run_pod(f"conc{i}")
        cid = cri.create(sid, pconf, "c", ["sleep", "1000"])
        return sid, cid

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        got = list(pool.map(one, range(5)))
    ips = {cri.pod_status(sid).network.ip for sid, _ in got}
    assert len(ips) == 5 and "" not in ips
    for sid, cid in got:
        assert cri.status(cid).state == pb.CONTAINER_RUNNING
    # the same pod created five times at once (kubelet retries while the first is in
    # flight): all get the one pod (a retry waits instead of hearing "reserved")
    def same(_):
        try:
            return cri.run_pod("dup")[0]
        except grpc.RpcError as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(same, range(5)))
    assert all(isinstance(r, str) for r in results), results
    wins = sorted(set(results))
    assert len(wins) == 1, results
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        list(pool.map(cri.remove_pod, [sid for sid, _ in got] + wins))
    assert cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
