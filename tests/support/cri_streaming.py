"""A running pod for the CRI streaming tests (``Pod``, the ``pod`` fixture), the servers its
port-forward tests dial inside the pod's netns (``PodServers``), and small decoders of the
streaming protocols' answers.

``pod`` needs the ``cri`` fixture (:mod:`support.cri`) in the test module.
"""

from __future__ import annotations

import socket
import threading

import pytest

from kubeapi import KubeAPI

class Pod:
    """A running pod with named containers, and a KubeAPI that maps kubectl's pod/container
    names onto them."""

    def __init__(self, cri, name: str = "web") -> None:
        self.cri = cri
        self.pb = cri.pb
        self.name = name
        self.sid, self.pconf = cri.run_pod(name, log_directory=str(cri.logdir / name))
        self.ids: dict[str, str] = {}
        self.specs: list[dict] = []
        self.api: KubeAPI | None = None

    def add(self, cname: str, command: list[str], **kw) -> str:
        cid = self.cri.create(self.sid, self.pconf, cname, command,
                              log_path=f"{cname}.log", **kw)
        self.ids[cname] = cid
        self.specs.append({"name": cname, "stdin": kw.get("stdin", False),
                           "stdin_once": kw.get("stdin_once", False),
                           "tty": kw.get("tty", False)})
        return cid

    def url_for(self, kind: str, pod: str, q: dict) -> str:
        pb = self.pb
        flag = lambda k: q.get(k, ["false"])[0] == "true"  # noqa: E731
        cname = q.get("container", [self.specs[0]["name"]])[0]
        if kind == "exec":
            return self.cri.rt.Exec(pb.ExecRequest(
                container_id=self.ids[cname], cmd=q.get("command", []), tty=flag("tty"),
                stdin=flag("stdin"), stdout=flag("stdout"), stderr=flag("stderr"))).url
        if kind == "attach":
            return self.cri.rt.Attach(pb.AttachRequest(
                container_id=self.ids[cname], tty=flag("tty"), stdin=flag("stdin"),
                stdout=flag("stdout"), stderr=flag("stderr"))).url
        ports = [int(p) for v in q.get("ports", []) for p in v.split(",")]
        return self.cri.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=self.sid,
                                                             port=ports)).url

    def kube(self) -> KubeAPI:
        if self.api is None:
            self.api = KubeAPI(self.url_for, {self.name: self.specs}).start()
        return self.api

    def close(self) -> None:
        if self.api is not None:
            self.api.stop()


@pytest.fixture
def pod(cri):
    p = Pod(cri)
    p.add("main", ["sleep", "3600"])
    try:
        yield p
    finally:
        p.close()


def ws_url(url: str) -> str:
    return "ws" + url[len("http"):]


def channel(got, n: int) -> bytes:
    return b"".join(d for c, d in got if c == n)


def exit_status(status: dict) -> int:
    if status.get("status") == "Success":
        return 0
    assert status["reason"] == "NonZeroExitCode", status
    return int(status["details"]["causes"][0]["message"])


class PodServers:
    """TCP servers listening on 127.0.0.1:<port> inside a pod's netns (sockets made there by
    the test): each says ``<port>:``, echoes what it gets upper-cased, closes after EOF."""

    def __init__(self, netns_path: str, ports: list[int]) -> None:
        from ctrd.cri import netns

        self.socks = []
        for port in ports:
            s = netns.run_in_ns(netns_path, self._listen, port)
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s, port), daemon=True).start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        return s

    @staticmethod
    def _serve(s: socket.socket, port: int) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            def one(c=c):
                with c:
                    try:
                        c.sendall(f"{port}:".encode())
                        while True:
                            d = c.recv(65536)
                            if not d:
                                break
                            c.sendall(d.upper())
                    except OSError:
                        pass  # the forwarder tore the connection down (a vanished client)
            threading.Thread(target=one, daemon=True).start()

    def close(self) -> None:
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def netns_of(cri, sid: str) -> str:
    return cri.pod_status(sid, verbose=True)[1]["netns"]
