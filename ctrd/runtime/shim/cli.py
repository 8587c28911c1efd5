"""``containerd-shim-ctrd-v2``: the shim v2 command line (containerd's ``runtime/v2/shim``).

``<shim> -namespace NS -address ADDR -publish-binary BIN -id ID [-debug] start``
    (cwd = the bundle, ``TTRPC_ADDRESS`` in the environment, runtime options as a marshalled
    Any on stdin): asks the daemon's shim template (:mod:`.template`, started here when there
    is none) to fork a shim server for the task, prints its address and exits. The template
    binds the shim's socket, writes ``<bundle>/address`` and reuses a live shim of the task's
    group, as containerd's shims do. Should no template come up, ``start`` does the same
    itself (:func:`start_inprocess`: imports the server, forks it).
``<shim> -namespace NS -id ID -bundle DIR delete``
    Cleanup after a dead shim: ``runtime delete --force``, unmount the rootfs, print a
    marshalled DeleteResponse (exit status 137, exited now).
``<shim> -socket NAME [-debug] template``
    Run a shim template on the abstract socket NAME (what ``start`` spawns).
``<shim> -namespace NS -id ID -socket PATH`` (no action)
    Serve in the foreground (debugging).

``start`` is the hot path: the module imports only built-in modules (``_socket``, not
``socket``) and two siblings that do the same (:mod:`.handshake`, :mod:`.paths`), so ``start``
costs an interpreter start and one request to the template.
"""

from __future__ import annotations

import os
import sys
import time

from ctrd.runtime.shim.handshake import encode_request, read_options, start_answer
from ctrd.runtime.shim.paths import (SOCKET_DIR, can_connect, listen, socket_address,
                                     write_address)

RUNTIME_NAME = "io.containerd.ctrd.v2"
VERSION = "0.1.0"
_STRING_FLAGS = {"namespace", "id", "address", "publish-binary", "socket", "bundle"}
_BOOL_FLAGS = {"debug", "v", "info"}


class UsageError(Exception):
    pass


class Args:
    __slots__ = ("namespace", "id", "address", "publish_binary", "socket", "bundle", "debug",
                 "v", "info", "action")

    def __init__(self) -> None:
        self.namespace = self.id = self.address = self.socket = self.bundle = ""
        self.publish_binary = "containerd"
        self.debug = self.v = self.info = False
        self.action = ""


def parse_args(argv: list[str]) -> Args:
    """Go ``flag`` syntax: ``-name value``, ``-name=value``, ``--name``; flags end at the first
    non-flag argument (the action)."""
    a = Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            setattr(a, name, value.lower() not in ("false", "0") if eq else True)
        elif name in _STRING_FLAGS:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(a, name.replace("-", "_"), value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    rest = argv[i:]
    a.action = rest[0] if rest else ""
    return a


# --- start through the template -------------------------------------------------------------

class TemplateUnavailable(Exception):
    pass


TEMPLATE_WAIT = 10.0      # for a spawned template to accept
TEMPLATE_ANSWER = 30.0    # for its answer (its first one waits for its imports)
TITLE_ROOM = 512  # bytes of command line reserved for the template's shims (a padding arg)


def template_socket(daemon_address: str, python: str | None = None,
                    script: str | None = None) -> str:
    """The abstract socket name (without the leading NUL) of ``daemon_address``'s template:
    one per daemon, interpreter and shim script (default: this process's; the daemon names
    the shim's own to reach its template directly)."""
    try:
        from _sha256 import sha256
    except ImportError:  # pragma: no cover
        from hashlib import sha256
    key = "\0".join((daemon_address, os.path.realpath(python or sys.executable),
                      os.path.realpath(script or sys.argv[0]), VERSION))
    return "ctrd-shim-template-" + sha256(key.encode()).hexdigest()[:32]


def _spawn_template(name: str, debug: bool) -> int:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        argv = [sys.executable, os.path.abspath(sys.argv[0]), "-socket", name,
                *(["-debug"] if debug else []), "template", " " * TITLE_ROOM]
        return os.posix_spawn(sys.executable, argv, os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)])
    finally:
        os.close(devnull)


def _ask(name: str, request: bytes, debug: bool) -> bytes | None:
    """One request to the template, starting one if none listens. None when no template
    can be reached (the one started here died, or did not listen in time); b"" when one
    took the request but closed without answering (it was retiring)."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + TEMPLATE_WAIT
        nap, spawned = 0.002, 0
        while True:
            try:
                s.connect("\0" + name)
                break
            except OSError:
                pass
            if not spawned:
                spawned = _spawn_template(name, debug)
            elif os.waitpid(spawned, os.WNOHANG)[0] or time.monotonic() > deadline:
                # It died (broken, or another template won the name: one last look).
                try:
                    s.connect("\0" + name)
                    break
                except OSError:
                    return None
            time.sleep(nap)
            nap = min(nap * 2, 0.05)
        return exchange(s, request, TEMPLATE_ANSWER)
    except OSError:
        return b""
    finally:
        s.close()


def exchange(s, request: bytes, timeout: float) -> bytes:
    """Send a start request on a socket connected to a template and read its whole answer
    (the template answers, then closes). OSError on a timeout or a broken connection."""
    import _socket  # built in: start imports no socket module

    s.settimeout(timeout)
    s.sendall(request)
    s.shutdown(_socket.SHUT_WR)
    out = bytearray()
    while chunk := s.recv(65536):
        out += chunk
    return bytes(out)


def start(a: Args) -> int:
    options = sys.stdin.buffer.read()
    request = encode_request(a.id, a.namespace, a.address, os.getcwd(), a.debug,
                             os.getppid(), options, dict(os.environb))
    name = template_socket(a.address)
    for attempt in range(3):
        reply = _ask(name, request, a.debug)
        if reply is None:
            break  # no template here: do it ourselves
        status, _, text = reply.partition(b"\0")
        if status == b"ok":
            sys.stdout.buffer.write(text)
            return 0
        if status == b"err":
            raise RuntimeError(text.decode(errors="replace"))
        # b"retry" (a template with old code retired) or no answer (it was idling out).
    return start_inprocess(a, options)


def start_inprocess(a: Args, options: bytes) -> int:
    """``start`` without a template: import the server here and fork it."""
    opts = read_options(options)
    # Import the server now: the forked child needs no imports of its own, and an import
    # failure is reported by `start` instead of by a shim that silently never answers.
    from ctrd.runtime.shim.serving import adjust_oom_score, serve
    from ctrd.runtime.shim.template import group_of

    bundle = os.getcwd()
    address = socket_address(a.address, a.namespace, group_of(bundle, a.id))
    path = address.removeprefix("unix://")
    listener = listen(path)
    if listener is None:
        write_address(bundle, address)
        sys.stdout.buffer.write(start_answer(address, options))
        return 0
    try:
        write_address(bundle, address)
        sys.stdout.flush()
        sys.stderr.flush()
        daemon = os.getppid()
        pid = os.fork()
    except BaseException:
        listener.close()
        os.unlink(path)
        raise
    if pid == 0:
        code = 1
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            if null > 2:
                os.close(null)
            adjust_oom_score(daemon)
            serve(a.id, a.namespace, bundle, listener, path,
                  os.environ.get("TTRPC_ADDRESS", ""), opts, a.debug)
            code = 0
        finally:
            os._exit(code)
    listener.close()
    sys.stdout.buffer.write(start_answer(address, options))
    return 0


def delete(a: Args) -> int:
    from ctrd.api.containerd.runtime.v2.task import shim_pb2
    from ctrd.runtime.shim import log, mount
    from ctrd.runtime.shim.process import INIT_PID_FILE
    from ctrd.runtime.shim.service import read_options, runtime_for

    log.setup(2, a.debug, id=a.id)
    bundle = a.bundle or os.getcwd()
    runtime = runtime_for(bundle, a.namespace, read_options(bundle))
    try:
        runtime.delete(a.id, force=True)
    except Exception as e:  # noqa: BLE001 - cleanup goes on
        log.warning("failed to remove runc container", error=str(e))
    try:
        mount.unmount_all(os.path.join(bundle, "rootfs"))
    except OSError as e:
        log.warning("failed to cleanup rootfs mount", error=str(e))
    pid = 0
    try:
        with open(os.path.join(bundle, INIT_PID_FILE)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError) as e:
        log.warning("failed to read init pid file", error=str(e))
    # The dead shim's socket, unless something still answers there.
    try:
        with open(os.path.join(bundle, "address")) as f:
            path = f.read().strip().removeprefix("unix://")
        if path.startswith(SOCKET_DIR + "/") and not can_connect(path):
            os.unlink(path)
    except OSError:
        pass
    resp = shim_pb2.DeleteResponse(pid=pid, exit_status=128 + 9)
    resp.exited_at.seconds, resp.exited_at.nanos = divmod(time.time_ns(), 1_000_000_000)
    sys.stdout.buffer.write(resp.SerializeToString())
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    name = os.path.basename(sys.argv[0]) or "containerd-shim-ctrd-v2"
    try:
        a = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        sys.stderr.write(f"{name}: {e}\n")
        return 2
    if a.v:
        sys.stdout.write(f"{name}:\n  Version:  {VERSION}\n  Runtime:  {RUNTIME_NAME}\n\n")
        return 0
    try:
        if a.action == "template":
            if not a.socket:
                raise UsageError("template needs -socket NAME")
            from ctrd.runtime.shim import template

            return template.main(a.socket)
        if a.info:
            from ctrd.runtime.shim.info import runtime_info

            sys.stdout.buffer.write(runtime_info(sys.stdin.buffer.read(), RUNTIME_NAME,
                                                 VERSION))
            return 0
        if not a.namespace:
            raise UsageError("shim namespace cannot be empty")
        if a.action == "start":
            if not a.id:
                raise UsageError("shim id cannot be empty")
            return start(a)
        if a.action == "delete":
            return delete(a)
        if a.action == "":
            path = a.socket.removeprefix("unix://") or socket_address(
                a.address, a.namespace, a.id).removeprefix("unix://")
            listener = listen(path)
            if listener is None:
                raise UsageError(f"a shim is already serving {path}")
            from ctrd.runtime.shim.serving import serve

            serve(a.id, a.namespace, a.bundle or os.getcwd(), listener, path,
                  os.environ.get("TTRPC_ADDRESS", ""), None, a.debug)
            return 0
        raise UsageError(f"unknown action {a.action!r}")
    except Exception as e:  # noqa: BLE001 - the daemon shows this text as the error
        sys.stderr.write(f"{name}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
