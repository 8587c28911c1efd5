"""Helpers of the sandbox API tests: gRPC stubs of the Store and Controller with a namespace,
the ``ctr`` 2.3.4 binary, a runnable wrapper of tests/sandbox_shim.py, and a ``ctr events``
watcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc

import containerd2

CTR2 = str(containerd2.CTR)
RUNC_SHIM2 = str(containerd2.BIN_DIR / "containerd-shim-runc-v2")
SHIM_SCRIPT = Path(__file__).resolve().parent / "sandbox_shim.py"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def have_ctr2() -> bool:
    return os.access(CTR2, os.X_OK)


def ctr2(address: str, *args: str, namespace: str = "default",
         timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run([CTR2, "--address", address, "-n", namespace, *args],
                       capture_output=True, text=True, timeout=timeout)
    # ctr 2.x warns about the host's cgroup v1 on every call; not what the tests compare
    r.stderr = "\n".join(x for x in r.stderr.splitlines() if "DEPRECATION" not in x)
    return r


def shim_wrapper(dirpath: Path) -> str:
    """An executable that runs the test sandbox shim with this interpreter."""
    p = dirpath / "sandbox-shim"
    p.write_text(f"#!/bin/sh\nexec {sys.executable} {SHIM_SCRIPT} \"$@\"\n")
    p.chmod(0o755)
    return str(p)


class Stubs:
    """Store and Controller stubs on ``address``; every call in ``namespace``."""

    def __init__(self, address: str, namespace: str = "default") -> None:
        from ctrd.api.containerd.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

        self.pb = sandbox_pb2
        self.channel = grpc.insecure_channel("unix:" + address)
        self.store = sandbox_pb2_grpc.StoreStub(self.channel)
        self.ctl = sandbox_pb2_grpc.ControllerStub(self.channel)
        self.md = (("containerd-namespace", namespace),)

    def call(self, stub, method: str, **fields):
        req = getattr(self.pb, ("Store" if stub is self.store else "Controller") + method
                      + "Request")(**fields)
        return getattr(stub, method)(req, metadata=self.md, timeout=60)

    def close(self) -> None:
        self.channel.close()


class Events:
    """``ctr events`` (2.3.4) running in the background; :meth:`topics` stops it and
    answers the topics it printed."""

    def __init__(self, address: str) -> None:
        self.proc = subprocess.Popen([CTR2, "--address", address, "events"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)

    def topics(self) -> list[str]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        # "<time (4 words)> <namespace> <topic> <event JSON>"
        return [next((w for w in line.split() if w.startswith("/")), "")
                for line in out.splitlines() if line.strip()]
