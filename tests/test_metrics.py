"""Prometheus metrics as containerd serves them: off unless configured; with ``[metrics]
address``, ``GET /v1/metrics`` answers the text format (parsed here with prometheus-client's
own parser) with the gRPC counters per method and code and each running task's cgroup
figures under containerd's names, CRI image pulls and plugin states; other paths are 404; a
taken address is a clear error; a scrape during pod starts disturbs none of them."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import urllib.error
import urllib.request

import grpc
import pytest

from conftest import ctr
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri_factory, pod_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, **labels) -> float | None:
    for s in family.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_metrics_of_rpcs_and_tasks(start_ctrd, registry):
    port = _free_port()
    d = start_ctrd(config_text=f'version = 3\n[metrics]\naddress = "127.0.0.1:{port}"\n'
                               "grpc_histogram = true\n")
    image = registry.ref("busybox")
    assert ctr(d.address, "images", "pull", "--plain-http", image).returncode == 0
    assert ctr(d.address, "run", "-d", image, "m1", "sh", "-c",
               "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 1000").returncode == 0
    try:
        assert ctr(d.address, "version").returncode == 0
        ctr(d.address, "images", "rm", "nope")  # a NotFound (ctr only warns)
        fams = _scrape(port)
        version = {"grpc_service": "containerd.services.version.v1.Version",
                   "grpc_method": "Version", "grpc_type": "unary"}
        assert _value(fams["grpc_server_started"], **version) >= 2
        assert _value(fams["grpc_server_handled"], grpc_code="OK", **version) >= 2
        assert _value(fams["grpc_server_handled"], grpc_code="NotFound",
                      grpc_service="containerd.services.images.v1.Images",
                      grpc_method="Delete") >= 1
        assert _value(fams["grpc_server_handling_seconds"], **version) is not None
        cpu = fams.get("container_cpu_total_nanoseconds") or \
            fams["container_cpu_usage_usec_microseconds"]  # a cgroup v2 host's name
        assert _value(cpu, container_id="m1", namespace="default") > 0
        assert _value(fams["container_pids_current"], container_id="m1",
                      namespace="default") >= 1
        # other paths: 404
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as e:  # only GET (and HEAD)
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/metrics", data=b"x" * 100000, method="POST"),
                timeout=10)
        assert e.value.code == 405
        assert ctr(d.address, "version").returncode == 0  # the daemon serves on
    finally:
        ctr(d.address, "tasks", "kill", "-s", "SIGKILL", "m1")
        for _ in range(100):
            if "STOPPED" in ctr(d.address, "tasks", "ls").stdout:
                break
        ctr(d.address, "tasks", "rm", "-f", "m1")
        ctr(d.address, "containers", "rm", "m1")
    fams = _scrape(port)  # the task gone: its series too
    cpu = fams.get("container_cpu_total_nanoseconds") or \
        fams["container_cpu_usage_usec_microseconds"]
    assert _value(cpu, container_id="m1") is None
    d.stop()
    with pytest.raises(OSError):  # the listener went with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=5)


def test_metrics_are_off_unless_configured_and_a_taken_address_is_named(start_ctrd):
    d = start_ctrd()
    assert "metrics served" not in d.read_log()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = start_ctrd(config_text=f'version = 3\n[metrics]\naddress = "127.0.0.1:{port}"\n',
                       name="taken", wait=False)
        assert p.proc.wait(60) != 0
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in p.read_log()


def test_metrics_of_image_pulls_and_plugins_and_a_scrape_during_pod_starts(
        cri_factory, registry):  # noqa: F811
    """CRI pulls under containerd's names (successes, failures, throughput) and ctrd's (bytes,
    seconds); each plugin's state; scrapes while 8 kubelet-like workers start pods: every
    scrape answers and no pod start fails."""
    port = _free_port()
    c = cri_factory(f'[metrics]\naddress = "127.0.0.1:{port}"\n')
    pb = c.pb

    def pull(ref: str):
        return c.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))

    pull(registry.ref("busybox"))
    with pytest.raises(grpc.RpcError):
        pull(registry.ref("busybox").rpartition(":")[0] + ":no-such-tag")
    fams = _scrape(port)
    pulls = fams["containerd_cri_sandboxed_image_pulls"]
    assert _value(pulls, status="success") >= 1 and _value(pulls, status="failure") >= 1
    assert _value(fams["containerd_cri_sandboxed_in_progress_image_pulls_total"]) == 0
    assert _value(fams["ctrd_image_pull_bytes"]) > 0
    count = [s for s in fams["containerd_cri_sandboxed_image_pulling_throughput"].samples
             if s.name.endswith("_count")]
    assert count and count[0].value >= 1
    assert _value(fams["ctrd_image_pull_duration_seconds"], le="+Inf") >= 1
    loaded = fams["ctrd_plugin_loaded"]
    assert _value(loaded, type="io.containerd.grpc.v1", id="cri") == 1
    assert {s.labels["type"] for s in loaded.samples} >= {
        "io.containerd.content.v1", "io.containerd.snapshotter.v1", "io.containerd.runtime.v2"}
    assert _value(fams["containerd_build_info"]) == 1

    errors: list[BaseException] = []
    scrapes = []
    done = threading.Event()

    def scraper():
        while not done.is_set():
            try:
                scrapes.append(len(_scrape(port)))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

    def start(n: int):
        config = pod_config(pb, name=f"mp{n}", uid=f"mp-{n}")
        sid = c.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
        cid = c.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, sandbox_config=config,
            config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                      image=pb.ImageSpec(image=c.image),
                                      command=["sleep", "600"]))).container_id
        c.rt.StartContainer(pb.StartContainerRequest(container_id=cid))

    t = threading.Thread(target=scraper)
    t.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            list(ex.map(start, range(16)))
    finally:
        done.set()
        t.join()
    assert not errors, errors[:3]
    assert scrapes
    fams = _scrape(port)
    started = fams["grpc_server_handled"]
    assert _value(started, grpc_method="StartContainer", grpc_code="OK") == 16
    assert len({s.labels["container_id"] for s in fams["container_pids_current"].samples
                if s.labels.get("namespace") == "k8s.io"}) >= 16


def test_plugin_states_render_failed_and_skipped_plugins_as_0():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from ctrd.metrics.pulls import PluginCollector, PullCollector, PullStats

    stats = PullStats()
    stats.begin()
    stats.end(True, 3 << 20, 2.0)  # 1.5 MB/s
    stats.begin()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PluginCollector(lambda: [("t.v1", "ok", True), ("t.v1", "broken", False)],
                                 "1.0"))
    reg.register(PullCollector(stats))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert _value(fams["ctrd_plugin_loaded"], id="ok") == 1
    assert _value(fams["ctrd_plugin_loaded"], id="broken") == 0
    assert _value(fams["containerd_cri_sandboxed_in_progress_image_pulls_total"]) == 1
    tp = fams["containerd_cri_sandboxed_image_pulling_throughput"]
    assert _value(tp, le="1.0") == 0 and _value(tp, le="2.5") == 1
    assert _value(fams["ctrd_image_pull_bytes"]) == 3 << 20
