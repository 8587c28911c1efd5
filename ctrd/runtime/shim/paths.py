"""Where a shim's sockets are: the directory, a task group's socket name, binding it, and the
``<bundle>/address`` file that records it.

Shared by the command line (:mod:`.cli`), the template (:mod:`.template`) and the shim server
(:mod:`.process` puts console sockets here). Imports only built-in modules at module level:
``start``'s hot path imports it.
"""

from __future__ import annotations

import errno
import os

SOCKET_DIR = "/run/ctrd/s"


def socket_address(daemon_address: str, namespace: str, id: str) -> str:
    """``unix://<SOCKET_DIR>/<sha256(address/ns/id)>``: short enough for sun_path whatever
    the lengths of the inputs (containerd's ``shim.SocketAddress``)."""
    try:
        # The builtin module: hashlib would map OpenSSL's libcrypto (~3.8 MB RSS) into
        # every shim for this one hash.
        from _sha256 import sha256
    except ImportError:  # pragma: no cover - other Pythons
        from hashlib import sha256
    d = sha256(os.path.join(daemon_address, namespace, id).encode()).hexdigest()
    return f"unix://{SOCKET_DIR}/{d}"


def can_connect(path: str) -> bool:
    """Whether something accepts connections on the unix socket ``path`` (within 0.1 s)."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.1)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def listen(path: str):
    """A listening socket at ``path`` (mode 0600; a stale socket file is replaced); None when
    a live server already owns it."""
    import socket

    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for attempt in (1, 2):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
        except OSError as e:
            s.close()
            if e.errno != errno.EADDRINUSE or attempt == 2:
                raise
            if can_connect(path):
                return None
            os.unlink(path)  # stale: its shim is gone
            continue
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(64)
        return s
    raise AssertionError("unreachable")


def write_address(bundle: str, address: str) -> None:
    """Record the shim's ``address`` in ``<bundle>/address`` (atomically: a rename)."""
    tmp = os.path.join(bundle, ".address.tmp")
    with open(tmp, "w") as f:
        f.write(address)
    os.rename(tmp, os.path.join(bundle, "address"))
