"""Prometheus metrics as containerd serves them: off unless configured; with ``[metrics]
address``, ``GET /v1/metrics`` answers the text format (parsed here with prometheus-client's
own parser) with the gRPC counters per method and code and each running task's cgroup
figures under containerd's names; other paths are 404; a taken address is a clear error."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from conftest import ctr

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
