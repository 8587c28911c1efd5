"""Registry credentials the way the docker CLI finds them: credential helpers first, then
``auths`` in ``config.json``.

For a registry host, :func:`docker_credentials` asks, in docker's order:

1. ``credHelpers[<host>]``: the helper named for that registry;
2. ``credsStore``: the default helper, for every registry;
3. otherwise ``auths`` (:func:`ctrd.remotes.auth.load_docker_config`).

A helper is the program ``docker-credential-<name>`` on ``PATH`` (docker-credential-helpers'
protocol): run as ``docker-credential-<name> get`` with the server address on stdin (the
host, ``https://index.docker.io/v1/`` for Docker Hub), it prints
``{"ServerURL", "Username", "Secret"}``; the username ``<token>`` means ``Secret`` is an
identity token (the OAuth refresh-token flow). "credentials not found" (non-zero exit with
that text) is no credentials, as docker treats it: a configured helper's answer wins over any
``auths`` entry. Any other failure, a missing helper, a helper running longer than
:data:`HELPER_TIMEOUT` or printing more than :data:`MAX_HELPER_OUTPUT` is
:class:`~ctrd.errdefs.FailedPrecondition` naming the helper (a pull with credentials the
user did not get would fail later, and less clearly). Helper names are plain names, never
paths.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from ctrd.errdefs import FailedPrecondition, InvalidArgument
from ctrd.remotes import auth as _auth

HELPER_TIMEOUT = 60.0
MAX_HELPER_OUTPUT = 1 << 20
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
TOKEN_USERNAME = "<token>"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NOT_FOUND = "credentials not found"


def server_address(host: str) -> str:
    """What docker hands a helper for registry ``host``."""
    return DOCKER_HUB_SERVER if _auth.normalize_host(host) == "docker.io" else host


def helper_get(name: str, server: str) -> _auth.Credentials | None:
    """``docker-credential-<name> get`` for ``server`` (None: it has none)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(f"docker credential helper name {name!r} is not a plain name")
    exe = f"docker-credential-{name}"
    try:
        p = subprocess.run([exe, "get"], input=server.encode(), capture_output=True,
                           timeout=HELPER_TIMEOUT, env=os.environ.copy())
    except FileNotFoundError:
        raise FailedPrecondition(f"docker credential helper {exe} is not on PATH "
                                 f"(configured in docker's config.json)") from None
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(f"{exe} get {server}: no answer within "
                                 f"{HELPER_TIMEOUT:g}s") from None
    except OSError as e:
        raise FailedPrecondition(f"{exe}: {e}") from None
    out = p.stdout[:MAX_HELPER_OUTPUT + 1]
    if p.returncode != 0:
        text = (out or p.stderr).decode(errors="replace").strip()
        if _NOT_FOUND in text.lower():
            return None
        raise FailedPrecondition(f"{exe} get {server}: exit status {p.returncode}: "
                                 f"{text[:200]}")
    if len(out) > MAX_HELPER_OUTPUT:
        raise FailedPrecondition(f"{exe} get {server}: answer larger than "
                                 f"{MAX_HELPER_OUTPUT} bytes")
    try:
        doc = json.loads(out)
    except ValueError:
        raise FailedPrecondition(f"{exe} get {server}: answer is not JSON") from None
    if not isinstance(doc, dict):
        raise FailedPrecondition(f"{exe} get {server}: answer is not a JSON object")
    user, secret = doc.get("Username", ""), doc.get("Secret", "")
    if not isinstance(user, str) or not isinstance(secret, str):
        raise FailedPrecondition(f"{exe} get {server}: Username and Secret must be strings")
    if user == TOKEN_USERNAME:
        return _auth.Credentials(identity_token=secret) if secret else None
    return _auth.Credentials(user, secret) if user or secret else None


def configured_helper(doc: dict, host: str, where: str) -> str:
    """The helper ``doc`` (a docker config) names for ``host`` ("" : none)."""
    helpers = doc.get("credHelpers", {})
    if not isinstance(helpers, dict):
        raise InvalidArgument(f"{where}: 'credHelpers' must be an object")
    want = _auth.normalize_host(host)
    for key, name in helpers.items():
        if _auth.normalize_host(key) == want:
            return name
    store = doc.get("credsStore", "")
    if not isinstance(store, str):
        raise InvalidArgument(f"{where}: 'credsStore' must be a string")
    return store


def docker_credentials(host: str, path=None) -> _auth.Credentials | None:
    """The credentials docker would use for registry ``host`` (see the module doc);
    ``path``: the config file (default ``$DOCKER_CONFIG/config.json``, ``~/.docker/...``)."""
    p, doc = _auth.read_docker_config(path)
    name = configured_helper(doc, host, f"docker config {str(p)!r}")
    if name:
        return helper_get(name, server_address(host))
    return _auth.load_docker_config(p).get(_auth.normalize_host(host))
