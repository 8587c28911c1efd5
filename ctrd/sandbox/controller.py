"""What a sandbox controller is (containerd 2.x's ``core/sandbox/controller.go``): the thing
that runs a sandbox whose record is in the sandbox store. ctrd has two, chosen by a record's
``sandboxer`` (:mod:`ctrd.services.sandbox_controller` dispatches):

- ``shim`` (:mod:`ctrd.sandbox.shim`): starts the runtime's shim for the sandbox and drives
  the ``containerd.runtime.sandbox.v1.Sandbox`` ttrpc service it serves;
- ``podsandbox`` (:mod:`ctrd.sandbox.podsandbox`): the CRI plugin's pods (a pause container,
  or ctrd's pod init, through a shim), in the CRI's namespace.

Every method is a coroutine; errors are :mod:`ctrd.errdefs` kinds. Times are nanoseconds
since the epoch (0: none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ctrd.metadata.sandboxes import Sandbox


@dataclass
class CreateOptions:
    """Controller.Create's extras (ControllerCreateRequest's fields)."""

    rootfs: list = field(default_factory=list)        # containerd.types.Mount messages
    options: Any = None                                # google.protobuf.Any or None
    netns_path: str = ""
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Instance:
    """What Start answers."""

    sandbox_id: str
    pid: int = 0
    created_at: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    address: str = ""
    version: int = 0
    spec: Any = None  # google.protobuf.Any or None


@dataclass
class Status:
    sandbox_id: str
    pid: int = 0
    state: str = ""
    info: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    exited_at: int = 0
    extra: Any = None   # google.protobuf.Any or None
    address: str = ""
    version: int = 0


@dataclass
class ExitStatus:
    exit_status: int
    exited_at: int


@dataclass
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""


class Controller(Protocol):
    async def create(self, ns: str, sandbox: Sandbox, opts: CreateOptions) -> None: ...

    async def start(self, ns: str, id_: str) -> Instance: ...

    async def platform(self, ns: str, id_: str) -> Platform: ...

    async def stop(self, ns: str, id_: str, timeout: float | None) -> None: ...

    async def wait(self, ns: str, id_: str) -> ExitStatus: ...

    async def status(self, ns: str, id_: str, verbose: bool) -> Status: ...

    async def shutdown(self, ns: str, id_: str) -> None: ...

    async def metrics(self, ns: str, id_: str) -> Any: ...   # containerd.types.Metric

    async def update(self, ns: str, id_: str, sandbox: Sandbox, fields: list[str]) -> None: ...
