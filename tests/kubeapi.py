"""A stand-in Kubernetes API server for driving the real ``kubectl`` against ctrd's CRI
streaming server, as the kubelet would proxy it.

It answers what ``kubectl exec|attach|port-forward`` asks before streaming (discovery, the
pod), then for ``pods/<name>/{exec,attach,portforward}`` asks the test for a streaming URL
(``url_for(kind, pod, query) -> url``: the test makes the CRI Exec/Attach/PortForward call),
sends kubectl's request on to that URL unchanged but for its path, and splices the bytes both
ways: the upgrade (SPDY/3.1 or WebSocket) and every frame are kubectl's and ctrd's own.

Lifecycle: ``api = KubeAPI(url_for, pods)``; ``api.start()``; ``api.kubectl(...)``;
``api.stop()`` (closes the listener and every spliced connection).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
from urllib.parse import parse_qs, urlsplit

RESOURCES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
    "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["get", "list"], "shortNames": ["po"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True,
         "kind": "PodExecOptions", "verbs": ["create", "get"]},
        {"name": "pods/attach", "singularName": "", "namespaced": True,
         "kind": "PodAttachOptions", "verbs": ["create", "get"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": True,
         "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
    ]}


def pod_json(name: str, containers: list[dict]) -> dict:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": c["name"], "image": "busybox",
                                     "stdin": c.get("stdin", False),
                                     "stdinOnce": c.get("stdin_once", False),
                                     "tty": c.get("tty", False)} for c in containers]},
            "status": {"phase": "Running",
                       "containerStatuses": [{"name": c["name"], "ready": True,
                                              "state": {"running": {}}}
                                             for c in containers]}}


class KubeAPI:
    def __init__(self, url_for, pods: dict[str, list[dict]]) -> None:
        self.url_for = url_for
        self.pods = pods
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = False
        self.home = tempfile.mkdtemp(prefix="kubeapi-")

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "KubeAPI":
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        import shutil

        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(10)
        shutil.rmtree(self.home, ignore_errors=True)

    def kubectl_argv(self, *args: str) -> list[str]:
        return ["kubectl", "--server", self.server, "--cache-dir",
                os.path.join(self.home, "cache"), "-n", "default", *args]

    def kubectl_env(self, websockets: bool = True) -> dict[str, str]:
        env = dict(os.environ, HOME=self.home, KUBECONFIG=os.path.join(self.home, "none"))
        flag = "true" if websockets else "false"
        env["KUBECTL_REMOTE_COMMAND_WEBSOCKETS"] = flag
        env["KUBECTL_PORT_FORWARD_WEBSOCKETS"] = flag
        return env

    def kubectl(self, *args: str, websockets: bool = True, input: bytes | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.kubectl_argv(*args), env=self.kubectl_env(websockets),
                              input=input, capture_output=True, timeout=timeout)

    # --- serving ---------------------------------------------------------------------------

    def _track(self, c: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(c)

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _read_head(c: socket.socket) -> tuple[bytes, bytes] | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = c.recv(65536)
            if not data:
                return None
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        return buf[:end], buf[end:]

    @staticmethod
    def _send_json(c: socket.socket, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        c.sendall(f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def _handle(self, c: socket.socket) -> None:
        self._track(c, True)
        try:
            while True:
                got = self._read_head(c)
                if got is None:
                    return
                head, rest = got
                line = head.split(b"\r\n", 1)[0].decode()
                method, target, _ = line.split(" ", 2)
                u = urlsplit(target)
                parts = u.path.strip("/").split("/")
                if u.path == "/api":
                    self._send_json(c, 200, {"kind": "APIVersions", "versions": ["v1"],
                                             "serverAddressByClientCIDRs": []})
                elif u.path == "/apis":
                    self._send_json(c, 200, {"kind": "APIGroupList", "apiVersion": "v1",
                                             "groups": []})
                elif u.path == "/api/v1":
                    self._send_json(c, 200, RESOURCES)
                elif (len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"]
                      and parts[4] == "pods" and method == "GET"):
                    name = parts[5]
                    if name not in self.pods:
                        self._send_json(c, 404, {"kind": "Status", "status": "Failure",
                                                 "reason": "NotFound", "code": 404,
                                                 "message": f'pods "{name}" not found'})
                    else:
                        self._send_json(c, 200, pod_json(name, self.pods[name]))
                elif (len(parts) == 7 and parts[4] == "pods"
                      and parts[6] in ("exec", "attach", "portforward")):
                    self._splice(c, parts[6], parts[5], parse_qs(u.query), head, rest,
                                 u.path + ("?" + u.query if u.query else ""))
                    return
                else:
                    self._send_json(c, 404, {"kind": "Status", "status": "Failure",
                                             "reason": "NotFound", "code": 404,
                                             "message": "not found"})
        except OSError:
            pass
        finally:
            self._track(c, False)
            c.close()

    def _splice(self, c: socket.socket, kind: str, pod: str, query: dict, head: bytes,
                rest: bytes, target: str) -> None:
        try:
            url = self.url_for(kind, pod, query)
        except Exception as e:  # noqa: BLE001 - the test's CRI call failed: say so
            self._send_json(c, 500, {"kind": "Status", "status": "Failure", "code": 500,
                                     "message": str(e)})
            return
        u = urlsplit(url)
        up = socket.create_connection((u.hostname, u.port))
        self._track(up, True)
        try:
            lines = head.decode("latin-1").split("\r\n")
            lines[0] = lines[0].replace(target, u.path, 1)
            lines = [ln for ln in lines if not ln.lower().startswith("host:")]
            lines.insert(1, f"Host: {u.hostname}:{u.port}")
            up.sendall("\r\n".join(lines).encode("latin-1") + rest)

            def pipe(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while True:
                        data = src.recv(65536)
                        if not data:
                            break
                        dst.sendall(data)
                except OSError:
                    pass
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

            t = threading.Thread(target=pipe, args=(up, c), daemon=True)
            t.start()
            pipe(c, up)
            t.join()
        finally:
            self._track(up, False)
            up.close()
