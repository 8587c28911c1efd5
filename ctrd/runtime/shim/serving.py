"""The shim server's main: one function that wires a shim together and runs it.

Its imports are at module level on purpose: the shim template imports this module before it
forks, so a forked shim executes no ``import`` statement of its own (each one walks the
import machinery and copies pages of it from the template).
"""

from __future__ import annotations

import os
import signal

from ctrd.api.containerd.runtime.sandbox.v1 import sandbox_pb2
from ctrd.api.containerd.runtime.v2.task import shim_pb2
from ctrd.api.containerd.runtime.v3.task import shim_pb2 as shim_v3_pb2
from ctrd.runtime.shim import ksm, log
from ctrd.runtime.shim.events import Publisher
from ctrd.runtime.shim.loop import Loop
from ctrd.runtime.shim.reaper import Reaper, set_subreaper
from ctrd.runtime.shim.sandbox import SandboxService
from ctrd.runtime.shim.server import Server
from ctrd.runtime.shim.service import TaskService

#: Seconds after the server starts at which it marks its copied pages (ksm.mark_copied):
#: once the task's start is done, and once it has served a while.
MARK_COPIED_AFTER = (3.0, 30.0)

#: What a shim serves (the template resolves their message classes before forking).
SERVICES = (shim_pb2.DESCRIPTOR.services_by_name["Task"],
            shim_v3_pb2.DESCRIPTOR.services_by_name["Task"],
            sandbox_pb2.DESCRIPTOR.services_by_name["Sandbox"])


def adjust_oom_score(parent: int) -> None:
    """Set this process's OOM score one above the daemon's (``parent``), so the OOM killer
    picks the shim before the daemon. Best effort."""
    try:
        with open(f"/proc/{parent}/oom_score_adj") as f:
            score = int(f.read())
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(min(score + 1, 1000)))
    except (OSError, ValueError):
        pass


def serve(id: str, namespace: str, bundle: str, listener, socket_path: str,
          ttrpc_address: str, options=None, debug: bool = False) -> None:
    """Run a shim server on ``listener`` until Shutdown (or SIGTERM); then remove
    ``socket_path`` and ``<bundle>/address``. Callable in a freshly forked process: it sets
    up the log, the subreaper and signal handling itself."""
    log.setup(log.open_fifo(os.path.join(bundle, "log")), debug)
    set_subreaper()
    loop = Loop()
    publisher = Publisher(loop, ttrpc_address, namespace)
    service = TaskService(loop, namespace, publisher, options, loop.stop)
    sandboxes = SandboxService(loop, service, loop.stop)
    service.keep_alive = lambda: sandboxes.active
    Reaper(loop, service.on_exit)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    server = Server(loop)
    # Task API v2 (containerd 1.x, ctrd) and v3 (containerd 2.x): the same messages under
    # another service name; the sandbox API for containerd's shim sandbox controller.
    task_v2, task_v3, sandbox = SERVICES
    server.register_service(task_v2, service)
    server.register_service(task_v3, service)
    server.register_service(sandbox, sandboxes)
    server.serve(listener)
    # Offer ksmd the pages starting the task copied from the template, and later the ones
    # serving it did (ksm.py: why only those).
    for delay in MARK_COPIED_AFTER:
        loop.call_later(delay, ksm.mark_copied)
    log.debug("shim serving", id=id, namespace=namespace, address=socket_path, pid=os.getpid())
    try:
        loop.run()
        # Answer the Shutdown call and deliver the last events (e.g. /tasks/delete).
        loop.run_until(lambda: server.flush() and publisher.idle, 2.0)
    finally:
        server.close()
        publisher.close()
        for p in (socket_path, os.path.join(bundle, "address")):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        log.debug("shim exiting", id=id)
        loop.close()
