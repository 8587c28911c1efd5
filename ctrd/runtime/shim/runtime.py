"""Driving an OCI runtime CLI (runc, crun, or any runtime with runc's command line).

Every command runs with the global flags ``--root <root> --log <bundle>/log.json
--log-format json`` and is waited for by its own pid before the call returns (see
:mod:`ctrd.runtime.shim.reaper` for why that matters). A failing command raises
:class:`RuntimeFailure` carrying the runtime's own last error message (read from the part of
the JSON log it wrote), e.g. ``OCI runtime create failed: ... executable file not found``.

Commands that hand stdio to a container (``create``, ``exec``) get the container's fds as
their fds 0-2: the runtime passes them through to the process, so the shim copies nothing
for non-terminal I/O.
"""

from __future__ import annotations

import errno
import json
import os
import signal

from ctrd import errdefs

DEFAULT_BINARY = "runc"
DEFAULT_ROOT = "/run/ctrd/runc"
_SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ)  # Python ignores these; children must not

# The environment of runtime commands: the shim's (os.environ) unless set_environ() handed it
# another one. A shim forked from the template gets its request's environment that way and
# leaves os.environ alone: rebuilding that mapping (every old entry freed, every new one
# allocated) dirtied ~0.3 MiB of the template's shared pages per shim.
_environ = os.environ


def set_environ(env: dict[bytes, bytes]) -> None:
    """Use ``env`` for runtime commands. The binary is looked up on ``env``'s PATH (the C
    library's getenv, which posix_spawnp reads, gets it; os.environ is left alone)."""
    global _environ
    path = env.get(b"PATH")
    if path is None:
        os.unsetenv(b"PATH")
    elif path != os.environb.get(b"PATH"):
        os.putenv(b"PATH", path)
    _environ = env


class RuntimeFailure(errdefs.CtrdError):
    """The OCI runtime refused or failed (UNKNOWN, as containerd reports runtime errors)."""


class Runtime:
    """One OCI runtime binary with its state root (``<root>/<namespace>``) and log file."""

    def __init__(self, binary: str, root: str, log_path: str,
                 systemd_cgroup: bool = False) -> None:
        self.binary = binary or DEFAULT_BINARY
        self.root = root
        self.log_path = log_path
        self.systemd_cgroup = systemd_cgroup

    def _args(self, *args: str) -> list[str]:
        g = [self.binary, "--root", self.root, "--log", self.log_path, "--log-format", "json"]
        if self.systemd_cgroup:
            g.append("--systemd-cgroup")
        return g + list(args)

    def run(self, what: str, *args: str, stdio: tuple[int, int, int] | None = None,
            capture: bool = False) -> bytes:
        """Run ``<binary> <globals> args...``; returns its output when ``capture``."""
        try:
            log_size = os.stat(self.log_path).st_size
        except OSError:
            log_size = 0
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        r = w = -1
        try:
            if capture:
                r, w = os.pipe2(os.O_CLOEXEC)
                fds = (devnull, w, w)
            else:
                fds = stdio or (devnull, devnull, devnull)
            actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)]
            try:
                pid = os.posix_spawnp(self.binary, self._args(*args), _environ,
                                      file_actions=actions, setsigdef=_SIGDEF)
            except OSError as e:
                raise RuntimeFailure(f"{what}: exec {self.binary}: {e.strerror}") from None
        finally:
            os.close(devnull)
            if w >= 0:
                os.close(w)
        out = bytearray()
        if r >= 0:
            try:
                while chunk := os.read(r, 65536):
                    out += chunk
            finally:
                os.close(r)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            msg = self.last_error(log_size) or out.decode(errors="replace").strip() \
                or f"exit status {code}"
            raise RuntimeFailure(f"{what}: {msg}")
        return bytes(out)

    def last_error(self, offset: int = 0) -> str:
        """The message of the last error the runtime logged after ``offset``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(offset, os.fstat(f.fileno()).st_size - (1 << 16)))
                lines = f.read().splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("level") in ("error", "fatal"):
                return str(rec.get("msg", ""))
        return ""

    # -- commands
    def create(self, id: str, bundle: str, pid_file: str, stdio: tuple[int, int, int],
               console_socket: str = "", no_pivot: bool = False,
               no_new_keyring: bool = False) -> None:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        if no_new_keyring:
            args.append("--no-new-keyring")
        self.run("OCI runtime create failed", *args, id, stdio=stdio)

    def start(self, id: str) -> None:
        self.run("OCI runtime start failed", "start", id)

    def exec(self, id: str, process_path: str, pid_file: str, stdio: tuple[int, int, int],
             console_socket: str = "") -> None:
        args = ["exec", "--detach", "--process", process_path, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        self.run("OCI runtime exec failed", *args, id, stdio=stdio)

    def kill(self, id: str, sig: int, all: bool = False) -> None:
        args = ["kill"] + (["--all"] if all else []) + [id, str(sig)]
        try:
            self.run("OCI runtime kill failed", *args)
        except RuntimeFailure as e:
            raise kill_error(e) from None

    def delete(self, id: str, force: bool = False) -> None:
        try:
            self.run("failed to delete task", "delete", *(["--force"] if force else []), id)
        except RuntimeFailure as e:
            # Already gone (e.g. deleted by an earlier attempt): nothing left to do.
            if "does not exist" not in str(e) and "not exist" not in str(e):
                raise

    def pause(self, id: str) -> None:
        self.run("OCI runtime pause failed", "pause", id)

    def resume(self, id: str) -> None:
        self.run("OCI runtime resume failed", "resume", id)

    def update(self, id: str, resources_path: str) -> None:
        self.run("OCI runtime update failed", "update", "--resources", resources_path, id)

    def ps(self, id: str) -> list[int]:
        out = self.run("OCI runtime ps failed", "ps", "--format", "json", id, capture=True)
        try:
            pids = json.loads(out or b"[]")
        except ValueError:
            raise RuntimeFailure(f"OCI runtime ps: unexpected output {out[:200]!r}") from None
        return [int(p) for p in pids or []]

    def state(self, id: str) -> dict:
        out = self.run("OCI runtime state failed", "state", id, capture=True)
        return json.loads(out)


def kill_error(e: RuntimeFailure) -> errdefs.CtrdError:
    """containerd's checkKillError: a process that is already gone is NotFound."""
    s = str(e).lower()
    if any(m in s for m in ("os: process already finished", "container not running",
                            "not running", "no such process")):
        return errdefs.NotFound("process already finished")
    return e


def signal_process(pid: int, sig: int) -> None:
    """kill(2) an exec'd process directly, as containerd's shim does."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise errdefs.NotFound("process already finished") from None
    except OSError as e:
        if e.errno == errno.EPERM:
            raise errdefs.FailedPrecondition(f"kill {pid}: {e.strerror}") from None
        raise
