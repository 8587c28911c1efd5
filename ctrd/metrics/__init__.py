"""Prometheus metrics, as containerd serves them: off unless ``[metrics] address`` (version
3) or ``[plugins."io.containerd.server.v1.metrics"] address`` (version 4) is set; then
``GET /v1/metrics`` on that address answers the text exposition format (prometheus-client's).

- :mod:`.server`: the HTTP listener, in its own thread (a scrape never waits for the event
  loop, and the API never waits for a scrape);
- :mod:`.rpc`: gRPC request counts per method and code (go-grpc-prometheus' names, what
  containerd exports), with ``grpc_histogram`` the handling-time histogram;
- :mod:`.tasks`: each running task's cgroup figures under containerd's cgroups-plugin names
  (``container_cpu_total_nanoseconds{container_id, namespace}``, ...), read at scrape time.
"""
