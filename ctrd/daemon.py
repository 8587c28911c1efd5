"""The ctrd daemon: plugins loaded into one process, served on a gRPC and a ttrpc socket.

Lifecycle: :meth:`Daemon.start` (prepare and lock the root and state dirs, discover and load
plugins, bind the sockets, run the ``ctrd_plugins_loaded`` hook), then serve until
:meth:`Daemon.stop` (stop accepting, let in-flight calls finish within a grace period, close
plugins, remove the sockets, run the ``ctrd_shutdown`` hook, release the lock). ``run`` wires
SIGTERM/SIGINT to ``stop``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import time
from typing import Any

from ctrd.config import ServerConfig
from ctrd.errdefs import FailedPrecondition
from ctrd.plugins.registry import PluginSet, Registry

log = logging.getLogger("ctrd")
WARM_DELAY = 0.3  # seconds after boot before the services clients ask later are built


def _prepare_dir(path: str) -> None:
    """Create a top-level dir 0711: others may traverse to what we expose (e.g. a socket's
    path) but not list or read it (containerd's fix for CVE-2021-41103). Plugin dirs below are
    0700."""
    os.makedirs(path, mode=0o711, exist_ok=True)
    os.chmod(path, 0o711)


def _socket_in_use(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _claim_socket_path(path: str) -> None:
    """Make ``path`` free for a new socket: a stale socket file goes, a live one or any other
    file is an error (never unlink another daemon's socket)."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o711, exist_ok=True)
    if not os.path.lexists(path):
        return
    if _socket_in_use(path):
        raise FailedPrecondition(f"address {path} is in use by another process")
    import stat

    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise FailedPrecondition(f"address {path} exists and is not a socket")
    os.unlink(path)


class Daemon:
    def __init__(self, config: ServerConfig, registry: Registry | None = None,
                 warnings: list[str] | None = None) -> None:
        self.config = config
        self.registry = registry
        self.warnings = warnings if warnings is not None else []
        self.plugins: PluginSet | None = None
        self._lock_fd: int | None = None
        self._grpc: Any = None
        self._ttrpc: Any = None
        self._bound: list[str] = []  # socket paths this daemon created (and may remove)
        self._stopped = asyncio.Event()
        self.started_at: float | None = None
        self._metrics: Any = None  # ctrd.metrics.server.MetricsServer when served

    def _lock_root(self) -> None:
        path = os.path.join(self.config.root, "ctrd.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FailedPrecondition(f"root {self.config.root} is in use by another ctrd "
                                     f"(pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    async def start(self) -> None:
        cfg = self.config
        for d in (cfg.root, cfg.state):
            _prepare_dir(d)
        self._lock_root()
        try:
            await self._start()
        except BaseException:
            await self._teardown()
            raise

    async def _start(self) -> None:
        import grpc
        from grpc import aio

        from ctrd.services.grpcutil import Dispatcher
        from ctrd.ttrpc.server import Server as TTRPCServer

        cfg = self.config
        if self.registry is None:
            self.registry = Registry()
            for problem in self.registry.discover():
                log.error("could not load a plugin package", extra={"error": problem})
        self.plugins = await self.registry.load(
            cfg, self.warnings, properties={"root": cfg.root, "state": cfg.state,
                                     "deprecations": cfg.deprecations})
        for w in self.warnings:
            log.warning(w)

        self._grpc = aio.server(
            options=[("grpc.max_receive_message_length", cfg.grpc.max_recv_message_size),
                     ("grpc.max_send_message_length", cfg.grpc.max_send_message_size)])
        # Services register on the dispatcher, which maps their errors to statuses (and,
        # with metrics served, counts their calls).
        dispatcher = Dispatcher(self._start_metrics())
        self._grpc.add_generic_rpc_handlers((dispatcher,))
        self._ttrpc = TTRPCServer()
        served: set[int] = set()  # a service plugin and its gRPC plugin share an instance
        for p in self.plugins:
            if p.error is None and id(p.instance) not in served:
                served.add(id(p.instance))
                if hasattr(p.instance, "register_grpc"):
                    p.instance.register_grpc(dispatcher)
                if hasattr(p.instance, "register_ttrpc"):
                    p.instance.register_ttrpc(self._ttrpc)

        _claim_socket_path(cfg.ttrpc_address)
        await self._ttrpc.start(cfg.ttrpc_address, mode=0o660)
        self._bound.append(cfg.ttrpc_address)
        os.chown(cfg.ttrpc_address, cfg.ttrpc.uid, cfg.ttrpc.gid)

        _claim_socket_path(cfg.grpc.address)
        old = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
        try:
            if self._grpc.add_insecure_port("unix:" + os.path.abspath(cfg.grpc.address)) == 0:
                raise FailedPrecondition(f"cannot listen on {cfg.grpc.address}")
            await self._grpc.start()
            self._bound.append(cfg.grpc.address)
        except grpc.RpcError as e:
            raise FailedPrecondition(f"cannot listen on {cfg.grpc.address}: {e}") from None
        finally:
            os.umask(old)
        os.chmod(cfg.grpc.address, 0o660)
        os.chown(cfg.grpc.address, cfg.grpc.uid, cfg.grpc.gid)

        for p in self.plugins:
            if p.error is None and hasattr(p.instance, "set_serving"):
                await p.instance.set_serving(True)
        try:
            self.registry.hooks.hook.ctrd_plugins_loaded(plugins=self.plugins)
        except Exception:  # noqa: BLE001 - a third party's hook must not stop the daemon
            log.exception("ctrd_plugins_loaded hook failed")
        self.started_at = time.monotonic()
        self._warm_task = asyncio.ensure_future(self._warm_up())
        log.info("ctrd successfully booted", extra={
            "address": cfg.grpc.address, "plugins": len(self.plugins),
            "failed": sum(p.error is not None and p.status == "error" for p in self.plugins)})

    def _start_metrics(self):
        """With ``[metrics] address``: the Prometheus registry, its listener (started now: a
        taken address stops the start naming it) and the gRPC counters the dispatcher
        uses; None (and nothing imported) without."""
        cfg = self.config.metrics
        if not cfg.address:
            return None
        from prometheus_client import CollectorRegistry

        from ctrd.metrics.rpc import RpcMetrics
        from ctrd.metrics.server import MetricsServer
        from ctrd.metrics.tasks import TaskCollector

        registry = CollectorRegistry(auto_describe=False)
        rpc = RpcMetrics(registry, cfg.grpc_histogram)
        managers = [p.instance for p in self.plugins.by_type("io.containerd.runtime.v2")
                    if p.error is None and hasattr(p.instance, "list")]
        if managers:
            from ctrd.runtime.manager import DeadTask

            manager = managers[0]
            registry.register(TaskCollector(lambda: [
                (t.namespace, t.id, t.bundle.path) for t in manager.list()
                if not isinstance(t, DeadTask)]))
        from ctrd import __version__
        from ctrd.metrics.pulls import PluginCollector, PullCollector
        from ctrd.services.version import revision

        registry.register(PullCollector())
        registry.register(PluginCollector(lambda: [
            (p.registration.type, p.registration.id, p.error is None)
            for p in self.plugins or ()], __version__, revision()))
        self._metrics = MetricsServer(cfg.address, registry)
        self._metrics.start()
        log.info("metrics served", extra={"address": f"{self._metrics.host}:"
                                                     f"{self._metrics.port}"})
        return rpc

    async def _warm_up(self) -> None:
        """Build lazily loaded services one at a time while the loop is idle, in the order
        clients usually need them (``ctr version`` first). Each build is a few ms of imports
        on the loop thread; a call that arrives meanwhile waits at most for one of them.
        The services clients ask first are built at once; the rest after
        :data:`WARM_DELAY`: a client that polled for the socket calls within that time, and
        builds running then held its first call up (imports hold the GIL that
        gRPC's poller thread needs to hand the call over; bench/README.md, "Figures the code
        cites")."""
        order = ["io.containerd.grpc.v1.version", "io.containerd.grpc.v1.introspection"]
        plugins = sorted(self.plugins or (), key=lambda p: (
            order.index(p.registration.uri) if p.registration.uri in order else len(order)))
        delayed = False
        for p in plugins:
            # Looked up on the class: probing a LazyObject's instance for it (e.g. the event
            # exchange) would build the object, imports and all, right when the first client
            # call is due.
            if p.error is not None or getattr(type(p.instance), "warm", None) is None:
                continue
            warm = p.instance.warm
            if not delayed and p.registration.uri not in order:
                delayed = True
                await asyncio.sleep(WARM_DELAY)
            else:
                await asyncio.sleep(0)
            try:
                warm()
            except Exception:  # noqa: BLE001 - the first real call will report it
                log.exception("warming up a service failed",
                              extra={"id": p.registration.uri})

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish in-flight calls (up to ``grace`` seconds), clean up."""
        if self._stopped.is_set():
            return
        log.info("stopping")
        if getattr(self, "_warm_task", None) is not None:
            self._warm_task.cancel()
        if self.plugins is not None:
            for p in self.plugins:
                if p.error is None and hasattr(p.instance, "set_serving"):
                    await p.instance.set_serving(False)
        await self._teardown(grace)
        if self.registry is not None:
            try:
                self.registry.hooks.hook.ctrd_shutdown()
            except Exception:  # noqa: BLE001
                log.exception("ctrd_shutdown hook failed")
        self._stopped.set()
        log.info("stopped")

    async def _teardown(self, grace: float = 0.0) -> None:
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
            self._metrics = None
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._ttrpc is not None:
            await self._ttrpc.stop(grace)
            self._ttrpc = None
        for path in self._bound:
            _remove_socket(path)
        self._bound.clear()
        # Plugins close in reverse order of init (dependents before what they depend on).
        for p in reversed(list(self.plugins or ())):
            close = getattr(p.instance, "close", None) if p.error is None else None
            if close is not None:
                try:
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:  # noqa: BLE001
                    log.exception("closing plugin failed", extra={"id": p.registration.uri})
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def wait(self) -> None:
        await self._stopped.wait()


def _remove_socket(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def run(config: ServerConfig, warnings: list[str] | None = None) -> None:
    """Start a daemon and serve until SIGTERM or SIGINT."""
    daemon = Daemon(config, warnings=warnings)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stopping.append(
            asyncio.ensure_future(daemon.stop())) if not stopping else None)
    await daemon.start()
    await daemon.wait()
