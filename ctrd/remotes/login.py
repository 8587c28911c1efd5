"""``ctrctl login``/``logout``: check credentials against a registry, keep them in docker's
``config.json``.

:func:`verify` asks the registry's ``/v2/`` with the credentials through the same auth
flow a pull uses (:class:`ctrd.remotes.auth.Authorizer`: a Basic challenge is answered with
them, a Bearer challenge by fetching a token with them); 200 means they are good,
:class:`~ctrd.remotes.auth.Unauthorized` that they are not.

:func:`store` and :func:`remove` edit the docker config file the way ``docker login`` does:
``auths.<server>.auth`` = base64(``user:password``), where ``<server>`` is ``host[:port]``
(``https://index.docker.io/v1/`` for Docker Hub). Every other key of the file, and every
other entry of ``auths``, is kept as it was. The file is replaced atomically (a temporary
file in the same directory, fsync, rename) with mode 0600, so a crash leaves the old file or
the new one, and the secret is never readable by others, not even for a moment.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import urllib.parse
from pathlib import Path

from ctrd.errdefs import InvalidArgument
from ctrd.remotes import auth as _auth

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
MAX_CONFIG = 4 << 20


def config_path(path: str | os.PathLike | None = None) -> Path:
    """``path``, or ``$DOCKER_CONFIG/config.json``, or ``~/.docker/config.json``."""
    return _auth.docker_config_path(path)


def server_key(server: str) -> str:
    """The ``auths`` key docker uses for ``server`` (scheme and path dropped, Docker Hub's
    aliases folded into its historical URL)."""
    s = server.strip()
    if not s:
        raise InvalidArgument("registry server must not be empty")
    host = urllib.parse.urlsplit(s).netloc if "://" in s else s.split("/", 1)[0]
    if not host or any(c.isspace() for c in host):
        raise InvalidArgument(f"invalid registry server {server!r}")
    host = host.lower()
    return DOCKER_HUB_KEY if _auth.normalize_host(host) == "docker.io" else host


def registry_host(server: str) -> str:
    """The registry host to talk to for ``server`` (``docker.io`` for Docker Hub)."""
    return _auth.normalize_host(server_key(server))


def verify(server: str, username: str, secret: str, *, plain_http: bool = False,
           hosts_dir: str | None = None) -> None:
    """Raise :class:`~ctrd.remotes.auth.Unauthorized` unless the registry accepts the
    credentials (other errors: the registry could not be asked)."""
    from ctrd.errdefs import Unavailable
    from ctrd.remotes.registry import Registry, _error_text

    host = registry_host(server)
    creds = _auth.Credentials(username, secret)
    registry = Registry(hosts_dir=hosts_dir, plain_http=plain_http,
                        credentials={host: creds}, retries=1)
    eps = registry.endpoints(host, "resolve")
    ep = next((e for e in eps if e.host == host), eps[-1])
    # A 401 is answered once with the credentials (request() raises Unauthorized if that
    # fails too); a registry that does not challenge /v2/ accepts any login, as with docker.
    resp = registry.request(ep, "GET", "/")
    try:
        if resp.status == 200:
            return
        if resp.status in (401, 403):
            raise _auth.Unauthorized(f"{host}: login as {username!r} refused: HTTP "
                                     f"{resp.status}: {_error_text(resp)}")
        raise Unavailable(f"{host}: GET {ep.base_url}/ answered HTTP {resp.status}: "
                          f"{_error_text(resp)}")
    finally:
        resp.close()


def _load(p: Path) -> dict:
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_CONFIG + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise InvalidArgument(f"docker config {str(p)!r}: {e}") from None
    if len(data) > MAX_CONFIG:
        raise InvalidArgument(f"docker config {str(p)!r}: larger than {MAX_CONFIG} bytes")
    if not data.strip():
        return {}
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"docker config {str(p)!r}: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"docker config {str(p)!r}: expected a JSON object")
    if not isinstance(doc.get("auths", {}), dict):
        raise InvalidArgument(f"docker config {str(p)!r}: 'auths' must be an object")
    return doc


def _write(p: Path, doc: dict) -> None:
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=p.parent)  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself survives a crash only once the directory is synced
        dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def store(server: str, username: str, secret: str,
          path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Save the credentials for ``server``; returns (file, auths key)."""
    if ":" in username:
        raise InvalidArgument("username must not contain ':'")
    p = config_path(path)
    key = server_key(server)
    doc = _load(p)
    auths = doc.setdefault("auths", {})
    raw = f"{username}:{secret}".encode()
    auths[key] = {"auth": base64.b64encode(raw).decode()}
    _write(p, doc)
    return p, key


def remove(server: str, path: str | os.PathLike | None = None) -> list[str]:
    """Forget the credentials for ``server`` (every ``auths`` key naming the same registry
    host); returns the keys removed (none: the file is left untouched)."""
    p = config_path(path)
    host = registry_host(server)
    doc = _load(p)
    auths = doc.get("auths", {})
    gone = [k for k in auths if _auth.normalize_host(k) == host]
    if gone:
        for k in gone:
            del auths[k]
        _write(p, doc)
    return gone
