"""The ``shim`` sandbox controller (containerd 2.x's ``plugins/sandbox/controller.go``): one
shim per sandbox, driven through the ``containerd.runtime.sandbox.v1.Sandbox`` ttrpc service
the shim serves.

Contract:
- Create makes the sandbox's bundle (``<state>/<ns>/<id>``, its spec as config.json), starts
  the runtime's shim binary (the runtime name resolves as for tasks: ctrd's shim for
  ``io.containerd.runc.v2`` unless configured otherwise) and calls CreateSandbox. If the
  shim does not serve the service or the call fails, everything is undone (ShutdownSandbox
  tried, the shim told to exit, its ``delete`` run, its process killed if it is still there,
  the bundle removed) and the error names the sandbox: unlike containerd 2.3.4, whose
  ``containerd-shim-runc-v2`` stays running after such a failure, nothing is left.
- Start calls StartSandbox (a failure undoes as above); Platform, Wait, Status, Metrics call
  theirs. Stop of an unknown sandbox is no error (NotFound/Unavailable from the shim neither).
  Status of an unknown sandbox answers its id and an exit time of now, as containerd.
- Shutdown calls ShutdownSandbox, then removes the shim (as a failed Create does). A
  sandbox whose shim went away on its own is cleaned up the same way when noticed.

Shims outlive the daemon: at its start (:meth:`ShimController.load`) it reconnects to the
shims of the bundles it finds (their ``address`` file, a Ping) and cleans up after the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field

from ctrd import errdefs
from ctrd.metadata.sandboxes import Sandbox
from ctrd.runtime import shimclient
from ctrd.runtime.bundle import Bundle, load_bundles, new_bundle
from ctrd.sandbox.controller import CreateOptions, ExitStatus, Instance, Platform, Status

log = logging.getLogger("ctrd.sandbox")

SERVICE = "containerd.runtime.sandbox.v1.Sandbox"
TASK_SERVICES = ("containerd.task.v3.Task", "containerd.task.v2.Task")


def _pb():
    from ctrd.api.containerd.runtime.sandbox.v1 import sandbox_pb2

    return sandbox_pb2


@dataclass
class _Shim:
    bundle: Bundle
    command: shimclient.ShimCommand
    client: object           # ctrd.ttrpc.client.Client
    address: str             # "unix://<socket>"
    log: shimclient.ShimLog | None = None
    pid: int = 0             # the shim's, from the socket's peer credentials
    closing: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    removal: asyncio.Future | None = None  # the one clean-up (see ShimController._remove)


class ShimController:
    """``manager`` is the task manager: its runtime-name resolution, daemon addresses and
    debug flag are the shims'."""

    def __init__(self, root: str, state: str, manager) -> None:
        self.root, self.state, self.manager = root, state, manager
        for d in (root, state):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._shims: dict[tuple[str, str], _Shim] = {}
        self._creating: set[tuple[str, str]] = set()
        manager.sandbox_endpoint = self.endpoint  # a sandbox's containers join its shim

    def endpoint(self, ns: str, id_: str) -> tuple[str, int] | None:
        """(address, shim API version) of the live shim of sandbox ``id_``, None if none."""
        sh = self._shims.get((ns, id_))
        if sh is None or sh.closing or sh.gone.is_set():
            return None
        return sh.address, sh.command.version

    # --- shim lifecycle ---------------------------------------------------------------------

    def _get(self, ns: str, id_: str) -> _Shim:
        sh = self._shims.get((ns, id_))
        if sh is None:
            raise errdefs.NotFound(f"shim {id_}")  # containerd: the shim set's words
        return sh

    async def _call(self, sh: _Shim, method: str, request, response_type,
                    timeout: float | None = shimclient.CALL_TIMEOUT):
        return await sh.client.call(SERVICE, method, request, response_type, timeout=timeout,
                                    metadata={shimclient.NAMESPACE_KEY: sh.bundle.namespace})

    async def _start_shim(self, ns: str, sb: Sandbox) -> _Shim:
        from google.protobuf import any_pb2

        from ctrd.ttrpc.client import Client

        binary = self.manager.binary_for(sb.runtime.name)
        spec = sb.spec.value if sb.spec is not None else b""
        bundle = await asyncio.to_thread(new_bundle, self.root, self.state, ns, sb.id, spec)
        cmd = shimclient.ShimCommand(binary, bundle, self.manager.address,
                                     self.manager.ttrpc_address, self.manager.debug)
        options = None
        if sb.runtime.options is not None:
            options = any_pb2.Any(type_url=sb.runtime.options.type_url,
                                  value=sb.runtime.options.value).SerializeToString()
        shim_log = None
        try:
            shim_log = shimclient.ShimLog(bundle)
            path = await cmd.start(options)
            holder: list[_Shim] = []
            client = await Client.connect(path, on_close=lambda: holder and
                                          self._closed(holder[0]))
        except BaseException:
            if shim_log is not None:
                shim_log.close()
            await self._delete_shim(cmd, 0)
            raise
        sh = _Shim(bundle, cmd, client, "unix://" + path.replace("\0", "@", 1), shim_log,
                   _peer_pid(client))
        holder.append(sh)
        # For a daemon restart (:meth:`load`): where it listens, which API it speaks.
        bundle.write("address", sh.address)
        bundle.write("shim-version", str(cmd.version))
        return sh

    async def load(self) -> None:
        """Daemon start: reconnect to the shims of the bundles under the state dir (a Ping
        must answer); clean up after those that are gone."""
        bundles = await asyncio.to_thread(load_bundles, self.state)
        await asyncio.gather(*(self._load_one(b) for b in bundles))

    async def _load_one(self, bundle: Bundle) -> None:
        from ctrd.ttrpc.client import Client

        cmd = shimclient.ShimCommand(bundle.read("shim-binary-path") or "", bundle,
                                     self.manager.address, self.manager.ttrpc_address,
                                     self.manager.debug)
        version = bundle.read("shim-version") or "2"
        cmd.version = int(version) if version.isdigit() else 2
        address = bundle.read("address") or ""
        client = None
        try:
            holder: list[_Shim] = []
            client = await asyncio.wait_for(
                Client.connect(shimclient._parse_address(address),
                               on_close=lambda: holder and self._closed(holder[0])), 5.0)
            sh = _Shim(bundle, cmd, client, address, None, _peer_pid(client))
            await self._call(sh, "PingSandbox", _pb().PingRequest(sandbox_id=bundle.id),
                             _pb().PingResponse, shimclient.STATE_TIMEOUT)
        except (errdefs.CtrdError, OSError, TimeoutError) as e:
            log.info("shim of sandbox %s/%s is gone (%s): cleaning up", bundle.namespace,
                     bundle.id, e)
            if client is not None:
                await client.close()
            await self._delete_shim(cmd, 0)
            return
        holder.append(sh)
        try:
            sh.log = shimclient.ShimLog(bundle)
        except OSError as e:
            log.debug("shim log of sandbox %s: %s", bundle.id, e)
        self._shims[(bundle.namespace, bundle.id)] = sh

    def _closed(self, sh: _Shim) -> None:
        sh.gone.set()
        if sh.closing:
            return
        log.warning("shim of sandbox %s/%s went away; cleaning up", sh.bundle.namespace,
                    sh.bundle.id)
        asyncio.ensure_future(self._remove(sh))

    async def _remove(self, sh: _Shim) -> None:
        """Make the shim exit and clean up after it: tell it to shut down (the sandbox
        service, then the task service of either version), close the connection, run its
        ``delete``, kill it if it is still there, remove the bundle.

        Runs once per shim: a Shutdown and the shim's connection closing under it (the shim
        exits as it answers) share one clean-up, which returns when it is complete."""
        sh.closing = True
        if sh.removal is None:
            sh.removal = asyncio.ensure_future(self._clean_up(sh))
        await asyncio.shield(sh.removal)

    async def _clean_up(self, sh: _Shim) -> None:
        from google.protobuf import empty_pb2

        key = (sh.bundle.namespace, sh.bundle.id)
        if self._shims.get(key) is sh:
            del self._shims[key]
        if not sh.gone.is_set():
            pb = _pb()
            try:
                await self._call(sh, "ShutdownSandbox",
                                 pb.ShutdownSandboxRequest(sandbox_id=sh.bundle.id),
                                 pb.ShutdownSandboxResponse, 5.0)
            except errdefs.CtrdError as e:
                log.debug("shutdown sandbox %s: %s", sh.bundle.id, e)
            for service in TASK_SERVICES:
                if sh.gone.is_set():
                    break
                try:
                    await sh.client.call(service, "Shutdown",
                                         shimclient._pb().ShutdownRequest(id=sh.bundle.id),
                                         empty_pb2.Empty, timeout=5.0,
                                         metadata={shimclient.NAMESPACE_KEY:
                                                   sh.bundle.namespace})
                except errdefs.CtrdError as e:
                    log.debug("shutdown shim of sandbox %s (%s): %s", sh.bundle.id, service, e)
        await sh.client.close()
        if sh.log is not None:
            sh.log.close()
        await self._delete_shim(sh.command, sh.pid)

    async def _delete_shim(self, cmd: shimclient.ShimCommand, pid: int) -> None:
        """Run the shim's ``delete`` (it removes the OCI runtime's state), make sure its
        process ``pid`` (0: unknown) is gone, remove the bundle."""
        if os.path.exists(cmd.bundle.file("shim-binary-path")):
            try:
                await cmd.delete()
            except errdefs.CtrdError as e:
                log.debug("delete of sandbox shim %s: %s", cmd.bundle.id, e)
        if pid:
            await _reap(pid, cmd.bundle.id)
        try:
            await asyncio.to_thread(cmd.bundle.delete)
        except OSError as e:
            log.error("removing bundle %s: %s", cmd.bundle.path, e)

    # --- the controller ---------------------------------------------------------------------

    async def create(self, ns: str, sb: Sandbox, opts: CreateOptions) -> None:
        from ctrd import identifiers

        identifiers.validate(sb.id)  # before any path is made of it
        key = (ns, sb.id)
        if key in self._shims or key in self._creating:
            raise errdefs.AlreadyExists(f"sandbox {sb.id} already running")
        self._creating.add(key)
        try:
            await self._clean_stale(ns, sb.id)
            try:
                sh = await self._start_shim(ns, sb)
            except errdefs.CtrdError as e:
                raise type(e)(f"failed to start new shim for sandbox {sb.id}: "
                              f"{e.detail or e.kind}") from e
            self._shims[key] = sh
            pb = _pb()
            req = pb.CreateSandboxRequest(sandbox_id=sb.id, bundle_path=sh.bundle.path,
                                          rootfs=opts.rootfs, netns_path=opts.netns_path,
                                          annotations=opts.annotations)
            if opts.options is not None:
                req.options.CopyFrom(opts.options)
            try:
                await self._call(sh, "CreateSandbox", req, pb.CreateSandboxResponse,
                                 shimclient.CREATE_TIMEOUT)
            except BaseException as e:
                await self._remove(sh)
                if isinstance(e, errdefs.CtrdError):
                    raise type(e)(f"failed to create sandbox {sb.id}: "
                                  f"{e.detail or e.kind}") from e
                raise
        finally:
            self._creating.discard(key)

    async def _clean_stale(self, ns: str, id_: str) -> None:
        """A bundle of this id left by an earlier daemon (its shim not reconnected)."""
        path = os.path.join(self.state, ns, id_)
        if os.path.isdir(path):
            b = Bundle(id_, ns, path)
            binary = b.read("shim-binary-path") or ""
            cmd = shimclient.ShimCommand(binary, b, self.manager.address,
                                         self.manager.ttrpc_address)
            await self._delete_shim(cmd, 0)

    async def start(self, ns: str, id_: str) -> Instance:
        try:
            sh = self._get(ns, id_)
        except errdefs.NotFound:
            raise errdefs.NotFound(f"unable to find sandbox {errdefs.quote(id_)}") from None
        pb = _pb()
        try:
            resp = await self._call(sh, "StartSandbox", pb.StartSandboxRequest(sandbox_id=id_),
                                    pb.StartSandboxResponse, shimclient.CREATE_TIMEOUT)
        except errdefs.CtrdError as e:
            await self._remove(sh)
            raise type(e)(f"failed to start sandbox {id_}: {e.detail or e.kind}") from e
        return Instance(sandbox_id=id_, pid=resp.pid, created_at=resp.created_at.ToNanoseconds(),
                        address="ttrpc+" + sh.address, version=sh.command.version,
                        spec=resp.spec if resp.HasField("spec") else None)

    async def platform(self, ns: str, id_: str) -> Platform:
        sh = self._get(ns, id_)
        pb = _pb()
        try:
            resp = await self._call(sh, "Platform", pb.PlatformRequest(sandbox_id=id_),
                                    pb.PlatformResponse)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to get sandbox platform: {e.detail or e.kind}") from e
        p = resp.platform
        return Platform(p.os, p.architecture, p.variant)

    async def stop(self, ns: str, id_: str, timeout: float | None) -> None:
        sh = self._shims.get((ns, id_))
        if sh is None:
            return
        pb = _pb()
        req = pb.StopSandboxRequest(sandbox_id=id_, timeout_secs=int(timeout or 0))
        try:
            await self._call(sh, "StopSandbox", req, pb.StopSandboxResponse,
                             (timeout or 0) + shimclient.CALL_TIMEOUT)
        except (errdefs.NotFound, errdefs.Unavailable):
            pass
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to stop sandbox: {e.detail or e.kind}") from e

    async def wait(self, ns: str, id_: str) -> ExitStatus:
        sh = self._get(ns, id_)
        pb = _pb()
        try:
            resp = await self._call(sh, "WaitSandbox", pb.WaitSandboxRequest(sandbox_id=id_),
                                    pb.WaitSandboxResponse, None)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to wait sandbox {id_}: {e.detail or e.kind}") from e
        return ExitStatus(resp.exit_status, resp.exited_at.ToNanoseconds())

    async def status(self, ns: str, id_: str, verbose: bool) -> Status:
        sh = self._shims.get((ns, id_))
        if sh is None:
            return Status(sandbox_id=id_, exited_at=time.time_ns())
        pb = _pb()
        try:
            resp = await self._call(sh, "SandboxStatus",
                                    pb.SandboxStatusRequest(sandbox_id=id_, verbose=verbose),
                                    pb.SandboxStatusResponse, shimclient.STATE_TIMEOUT)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to query sandbox {id_} status: {e.detail or e.kind}") from e
        return Status(sandbox_id=resp.sandbox_id, pid=resp.pid, state=resp.state,
                      info=dict(resp.info), created_at=resp.created_at.ToNanoseconds(),
                      exited_at=resp.exited_at.ToNanoseconds(),
                      extra=resp.extra if resp.HasField("extra") else None,
                      address="ttrpc+" + sh.address, version=sh.command.version)

    async def shutdown(self, ns: str, id_: str) -> None:
        sh = self._get(ns, id_)
        sh.closing = True  # the shim exits as it answers: that is no shim "going away"
        pb = _pb()
        try:
            await self._call(sh, "ShutdownSandbox", pb.ShutdownSandboxRequest(sandbox_id=id_),
                             pb.ShutdownSandboxResponse)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to shutdown sandbox: {e.detail or e.kind}") from e
        finally:
            # containerd deletes the shim only after a successful shutdown; a shim that
            # cannot shut its sandbox down is removed all the same here (nothing leaks).
            await self._remove(sh)

    async def metrics(self, ns: str, id_: str):
        sh = self._get(ns, id_)
        pb = _pb()
        resp = await self._call(sh, "SandboxMetrics", pb.SandboxMetricsRequest(sandbox_id=id_),
                                pb.SandboxMetricsResponse)
        return resp.metrics

    async def update(self, ns: str, id_: str, sandbox: Sandbox, fields: list[str]) -> None:
        return None  # containerd's shim controller: nothing to do

    async def close(self) -> None:
        """Daemon stop: drop the connections; the shims keep running."""
        for sh in list(self._shims.values()):
            sh.closing = True
            await sh.client.close()
            if sh.log is not None:
                sh.log.close()
        self._shims.clear()


def _peer_pid(client) -> int:
    """The pid at the other end of the client's unix socket (SO_PEERCRED)."""
    import socket
    import struct

    try:
        sock = client._writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except (OSError, AttributeError):
        return 0


async def _reap(pid: int, id_: str) -> None:
    """Wait a little for the shim ``pid`` to exit, then SIGKILL it -- only while it is still
    a shim of sandbox ``id_`` (its command line says ``-id <id>``: pids get reused)."""
    mark = b"\0-id\0" + id_.encode() + b"\0"
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read() + b"\0"
        except OSError:
            return
        if mark not in b"\0" + cmdline:
            return  # gone (a zombie has an empty command line) or someone else's
        await asyncio.sleep(0.02)
    log.warning("shim of sandbox %s (pid %d) did not exit; killing it", id_, pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
